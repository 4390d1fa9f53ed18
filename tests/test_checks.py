"""What a method checks on the example batch before computing: each check refuses the model kind it
exists for, catches a 5% discrepancy, leaves the model and the random state as found, and says
what it cost."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import persample
from persample import LossNotPerSample, Unsupported
from persample.methods.hooks import HooksMethod
from persample.methods.registry import Capabilities, get
from persample.rules import LayerRule, rule_for
from persample.state import BufferSnapshot


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


def batch(size: int = 8):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(size, 5, generator=generator), torch.randint(3, (size,), generator=generator)


class SlightlyWrong(HooksMethod):
    """hooks with one layer's weight gradient scaled by (1 + error): the bug the checks must catch."""

    def __init__(self, error: float, layer: type[nn.Module] = nn.Linear, samples: slice = slice(None)) -> None:
        super().__init__()
        self.error, self.layer, self.samples = error, layer, samples
        self.capabilities = Capabilities(name=f"wrong-{error}", summary="deliberately wrong",
                                         relies_on=HooksMethod.capabilities.relies_on,
                                         refusals=HooksMethod.capabilities.refusals)

    def rule_lookup(self):
        def lookup(module: nn.Module) -> LayerRule | None:
            rule = rule_for(module)
            if rule is None or not isinstance(module, self.layer):
                return rule

            def grad_sample(module, inputs, grad_out, trainable):
                grads = rule.grad_sample(module, inputs, grad_out, trainable)
                grads["weight"][self.samples] *= 1 + self.error
                return grads

            return LayerRule(rule.layer, grad_sample, rule.expanded_forward, rule.params)

        return lookup


@pytest.mark.parametrize("samples", [slice(None), slice(0, 1), slice(3, 4)], ids=["every sample", "first", "fourth"])
def test_a_five_percent_discrepancy_is_refused_even_in_one_sample(samples):
    x, y = batch()
    with pytest.raises(Unsupported, match="disagree with autograd") as refused:
        SlightlyWrong(0.05, samples=samples).prepare(mlp(), None, (x, y))
    assert refused.value.assumption == "matches-definition"


def test_rounding_is_not_refused():
    x, y = batch()
    SlightlyWrong(1e-7).prepare(mlp(), None, (x, y))


@pytest.mark.parametrize("method", ["hooks", "expand", "vmap", "jax", "loop", "auto"])
def test_preparing_leaves_buffers_and_the_random_state_as_found(method):
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))
            self.lin, self.drop = nn.Linear(5, 3), nn.Dropout(0.5)

        def forward(self, x):
            self.calls += 1
            return self.lin(self.drop(x))

    model, (x, y) = Counting(), batch()
    model.eval()
    state = torch.get_rng_state()
    step = get(method).prepare(model, None, (x, y))
    step(x, y)
    assert model.calls.item() == 0
    assert torch.equal(torch.get_rng_state(), state)


def test_a_loss_divided_by_the_batch_size_is_refused_by_every_method_with_the_fix():
    x, y = batch()
    loss = lambda o, t: F.cross_entropy(o, t, reduction="none") / o.shape[0]  # noqa: E731
    for method in ("loop", "hooks", "vmap", "jax", "torch-ew", "auto"):
        with pytest.raises(LossNotPerSample, match=r"depends on the batch.*normalise each sample by its own size"):
            get(method).prepare(mlp(), loss, (x, y))


def test_a_batch_of_one_cannot_reveal_batch_scaling_and_needs_not_to():
    x, y = batch(1)
    loss = lambda o, t: F.cross_entropy(o, t, reduction="none") / o.shape[0]  # noqa: E731
    grads = persample.per_sample_grads(mlp(), x, y, loss_fn=loss, method="hooks")
    model = mlp()
    plain = torch.autograd.grad(loss(model(x), y)[0], list(model.parameters()))
    torch.testing.assert_close(grads["0.weight"][0], plain[0])


def test_the_checks_report_what_they_ran_and_cost():
    x, y = batch()
    step = get("hooks").prepare(mlp(), None, (x, y))
    assert {"loss per sample", "batch on dim 0", "sample independence", "weighted sum", "alone in the batch",
            "whole-batch output gradients", "whole-batch weighted sum"} <= set(step.checks.ran)
    assert 0 < step.checks.seconds < 5


def test_a_half_precision_model_is_checked_in_float32_on_a_copy():
    model, (x, y) = mlp().to(torch.bfloat16), batch()
    step = get("hooks").prepare(model, None, (x.to(torch.bfloat16), y))
    assert "weighted sum" in step.checks.ran and next(model.parameters()).dtype == torch.bfloat16


def test_gradients_have_their_parameters_dtype_under_autocast():
    model, (x, y) = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3)), batch()
    for method in ("hooks", "expand", "loop"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grads = persample.per_sample_grads(model, x, y, method=method)
        assert {g.dtype for g in grads.values()} == {torch.float32}, method


def test_vmap_refuses_what_torch_func_cannot_batch_under_autocast_naming_it():
    model, (x, y) = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3)), batch()
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(Unsupported, match="torch.func cannot batch this model under autocast"):
        persample.per_sample_grads(model, x, y, method="vmap")


def test_a_buffer_snapshot_restores_replaced_and_modified_buffers():
    model = nn.BatchNorm1d(3)
    snapshot = BufferSnapshot(model)
    model.running_mean.add_(1)
    model.num_batches_tracked = model.num_batches_tracked + 5
    assert sorted(snapshot.changed()) == ["num_batches_tracked", "running_mean"]
    snapshot.restore()
    assert snapshot.changed() == [] and model.running_mean.abs().sum() == 0 and model.num_batches_tracked == 0
