"""What `inputs` may be: a Tensor, a tuple or list (positional), a mapping (keyword), batch first;
anything else is a `ValueError` naming the fix. An empty batch gives empty gradients, alike for
every method."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import persample
from persample.batch import CallArgs

OURS = ["loop", "hooks", "expand", "vmap", "kernel", "jax", "auto"]


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.a(x) * scale + self.b(t)


def two_inputs(batch: int = 5):
    torch.manual_seed(0)
    return TwoInputs(), torch.randn(batch, 4), torch.randn(batch, 2), torch.randint(3, (batch,))


@pytest.mark.parametrize("method", OURS)
def test_a_list_behaves_like_a_tuple_and_a_mapping_is_passed_as_keywords(method):
    model, x, t, y = two_inputs()
    expected = persample.per_sample_grads(model, (x, t), y, method="loop")
    for inputs in ([x, t], {"x": x, "t": t}, {"t": t, "x": x}):
        got = persample.per_sample_grads(model, inputs, y, method=method)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


def test_values_that_are_not_tensors_are_passed_to_every_call_unchanged():
    model, x, t, y = two_inputs()
    halved = persample.per_sample_grads(model, {"x": x, "t": t, "scale": 0.5}, y, method="hooks")
    alone = persample.per_sample_grads(model, {"x": x[:1], "t": t[:1], "scale": 0.5}, y[:1], method="loop")
    torch.testing.assert_close(halved["a.weight"][:1], alone["a.weight"])


@pytest.mark.parametrize("inputs, message", [
    ({1: torch.zeros(2, 4)}, "str keys"),
    ("text", "inputs of type str"),
    (torch.zeros(()), "0-dimensional"),
    ((torch.zeros(3, 4), torch.zeros(2, 2)), "disagree on the batch size"),
    ((1.0, "flag"), "hold no tensor"),
])
def test_other_inputs_are_a_value_error_naming_the_fix(inputs, message):
    with pytest.raises(ValueError, match=message):
        persample.per_sample_grads(nn.Linear(4, 3), inputs, torch.zeros(3, dtype=torch.long), method="hooks")


@pytest.mark.parametrize("method", OURS)
def test_an_empty_batch_gives_empty_gradients_of_every_parameter(method):
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    grads = persample.per_sample_grads(model, torch.randn(0, 4), torch.zeros(0, dtype=torch.long), method=method)
    assert {k: tuple(v.shape) for k, v in grads.items()} == {k: (0, *p.shape) for k, p in model.named_parameters()}


def test_a_step_prepared_on_an_empty_batch_checks_and_computes_on_the_first_batch_with_samples():
    model = nn.Linear(4, 3)
    step = persample.methods.get("hooks").prepare(model, None, (torch.randn(0, 4), torch.zeros(0, dtype=torch.long)))
    x, y = torch.randn(6, 4), torch.randint(3, (6,))
    torch.testing.assert_close(step(x, y)["weight"], persample.per_sample_grads(model, x, y, method="loop")["weight"])
    assert step.checks is not None and "weighted sum" in step.checks.ran


def test_call_args_select_keeps_a_batch_dimension_and_the_users_form():
    call = CallArgs.of([torch.arange(6).view(3, 2), torch.ones(3)])
    assert call.select(1).args[0].tolist() == [[2, 3]]
    assert isinstance(call.to_user(), tuple) and isinstance(CallArgs.of(torch.ones(2)).to_user(), torch.Tensor)
