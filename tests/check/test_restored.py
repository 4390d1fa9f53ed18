"""`state.restored_after`: whatever the block does to a model, the model is put back as found."""
import pytest
import torch
from torch import nn

import persample
from persample.conformance.snapshot import ModelSnapshot
from persample.methods.registry import get
from persample.state import restored_after


def test_everything_a_block_can_do_to_a_model_is_undone():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    model[1].running_var[0] = float("nan")  # NaN stays NaN: unchanged
    model[0].weight.grad = torch.ones(4, 3)
    before = ModelSnapshot.of(model)
    weight = model[0].weight
    with restored_after(model):
        with torch.no_grad():
            model[0].weight.mul_(2)  # a value, in place
        model[2].weight = nn.Parameter(torch.zeros(2, 4))  # a parameter replaced
        model[1].running_mean.add_(1)  # a buffer
        model[0].weight.grad = None  # .grad
        model.train()  # modes
        model[0].register_forward_hook(lambda *a: None)  # a hook left behind
        model[2].register_full_backward_hook(lambda *a: None)
        model[1].cached = torch.ones(1)  # an attribute set
        model[0].bias.requires_grad_(False)  # a parameter frozen
    assert before.differences(model) == []
    assert model[0].weight is weight


class _Meddling(persample.Method):
    """A method that, at `phase`, swaps a plain tensor into a parameter's slot, freezes another
    parameter and registers a buffer (what a functional call left half-way does), then fails there
    or, at "step", returns the loop's answer."""

    capabilities = persample.Capabilities(name="meddling", summary="test: changes the model and fails")

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def meddle(self, model: nn.Module) -> None:
        model[0]._parameters["weight"] = model[0].weight.detach() * 2
        model[2].bias.requires_grad_(False)
        model[2].register_buffer("left_behind", torch.ones(1))
        model[2].register_parameter("added", nn.Parameter(torch.ones(1)))
        if self.phase != "step":  # while preparing, also a hook left behind and the mode changed
            model[1].register_forward_hook(lambda *args: None)
            model.eval()

    def _prepare(self, model, loss_fn, example_batch):
        if self.phase == "prepare":
            self.meddle(model)
            raise RuntimeError("failed half-way through preparing")

        def step(inputs, targets):
            self.meddle(model)
            if self.phase == "self-check":
                raise persample.Unsupported("failed half-way through the self-check", method=self.name)
            return get("loop")(model, inputs, targets, loss_fn)

        return step

    def _self_check(self, context, raw) -> None:
        if self.phase == "self-check":
            raw(context.check_call.to_user(), context.check_targets)


@pytest.mark.parametrize("phase", ["prepare", "self-check", "step"])
def test_a_method_that_swaps_tensors_into_the_model_leaves_it_as_found_whatever_it_raises(phase):
    """The same Parameter objects under the same names, requires_grad, no added buffer or parameter
    (and, for prepare, the same hooks and modes), after a method fails while preparing, while
    checking itself, or after each call of its step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3), torch.randint(2, (5,))
    before = ModelSnapshot.of(model)
    objects = [(m, dict(m._parameters), set(m._buffers)) for m in model.modules()]
    try:
        step = _Meddling(phase).prepare(model, None, (x, y))
        assert before.differences(model) == []
        step(x, y)
    except (RuntimeError, persample.Unsupported):
        assert phase != "step"
    assert before.differences(model) == []
    for module, parameters, buffers in objects:
        assert module._parameters.keys() == parameters.keys()
        assert all(module._parameters[k] is p for k, p in parameters.items())
        assert set(module._buffers) == buffers
    assert type(model[0].weight) is nn.Parameter and model[2].bias.requires_grad
