"""`per_sample_grads` keeps its prepared step per model: the checks and `auto`'s choice are paid
once, an optimizer's in-place update is seen, a change of structure, requires_grad or mode is not
missed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import persample
from persample import cache
from persample.methods.auto import AutoMethod
from persample.methods.base import Method
from persample.methods.registry import get


def problem():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), torch.randn(6, 4), torch.randint(3, (6,))


def count_prepares(monkeypatch) -> list[str]:
    """The names of the methods prepared from now on (auto prepares through its own `prepare`)."""
    calls: list[str] = []
    for cls in (Method, AutoMethod):
        original = cls.__dict__["prepare"]

        def counting(self, model, loss_fn, example_batch, original=original):
            calls.append(self.name)
            return original(self, model, loss_fn, example_batch)

        monkeypatch.setattr(cls, "prepare", counting)
    return calls


def test_a_training_loop_prepares_once_and_sees_each_optimizer_step(monkeypatch):
    model, x, y = problem()
    calls = count_prepares(monkeypatch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        grads = persample.per_sample_grads(model, x, y, method="hooks")
        expected = persample.per_sample_grads(model, x, y, method="loop")
        torch.testing.assert_close(grads["0.weight"], expected["0.weight"])
        for name, p in model.named_parameters():
            p.grad = grads[name].mean(0)
        optimizer.step()
    assert calls.count("hooks") == 1


def test_auto_chooses_once_per_model_and_shapes(monkeypatch):
    model, x, y = problem()
    calls = count_prepares(monkeypatch)
    for _ in range(3):
        persample.per_sample_grads(model, x, y)
    assert calls.count("auto") == 1
    persample.per_sample_grads(model, x[:3], y[:3])
    assert calls.count("auto") == 2, "another batch size prepares (and checks) again"


def test_a_change_of_requires_grad_mode_or_structure_prepares_again(monkeypatch):
    model, x, y = problem()
    calls = count_prepares(monkeypatch)
    persample.per_sample_grads(model, x, y, method="hooks")
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in persample.per_sample_grads(model, x, y, method="hooks")
    model.eval()
    persample.per_sample_grads(model, x, y, method="hooks")
    model[2] = nn.Linear(5, 3)
    assert persample.per_sample_grads(model, x, y, method="hooks")["2.weight"].shape == (6, 3, 5)
    model[2].weight = nn.Parameter(torch.zeros(3, 5))
    assert persample.per_sample_grads(model, x, y, method="hooks")["2.weight"].abs().sum() > 0
    assert calls.count("hooks") == 5


def test_a_new_loss_function_object_prepares_again_and_the_same_one_does_not(monkeypatch):
    model, x, y = problem()
    calls = count_prepares(monkeypatch)
    loss = nn.CrossEntropyLoss(reduction="none")
    persample.per_sample_grads(model, x, y, loss_fn=loss, method="vmap")
    persample.per_sample_grads(model, x, y, loss_fn=loss, method="vmap")
    persample.per_sample_grads(model, x, y, loss_fn=nn.CrossEntropyLoss(reduction="none"), method="vmap")
    assert calls.count("vmap") == 2


def test_steps_are_forgotten_with_their_model():
    model, x, y = problem()
    persample.per_sample_grads(model, x, y, method="hooks")
    assert model in cache._STEPS
    cache.clear(model)
    assert model not in cache._STEPS


class Masked(nn.Module):
    """A plain tensor attribute (neither parameter nor buffer) that the forward reads."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
        self.mask = torch.ones(8)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) * self.mask)


@pytest.mark.parametrize("method", ["jax", "torch-ew", "opacus-ew"])
@pytest.mark.parametrize("change", ["reassigned", "edited in place"])
def test_a_plain_tensor_attribute_changed_between_calls_is_seen(method, change):
    """A step that holds the tensor object it saw (a JAX trace, a peer's copy of the model) would
    answer for the old mask: reassigning the attribute prepares again, an in-place edit is read."""
    reason = get(method).unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    torch.manual_seed(0)
    model, x, y = Masked(), torch.randn(5, 6), torch.randint(3, (5,))
    persample.per_sample_grads(model, x, y, method=method)
    if change == "reassigned":
        model.mask = torch.full((8,), 2.0)
    else:
        model.mask.mul_(2.0)
    grads = persample.per_sample_grads(model, x, y, method=method)
    expected = persample.per_sample_grads(model, x, y, method="loop")
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-4, atol=1e-6)
