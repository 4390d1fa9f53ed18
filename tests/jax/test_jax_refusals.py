"""What the jax method cannot translate is refused with the reason and the methods that can; the
check that lists it traces only, it never compiles."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from persample import LossNotPerSample, Unsupported
from persample.jax_translate.compiled import trace_count
from persample.methods.jax import JaxMethod
from persample.methods.registry import get
from persample.workloads import all_workloads


def batch(features: int = 5, size: int = 6, classes: int = 3):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(size, features, generator=generator), torch.randint(classes, (size,), generator=generator)


class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return torch.cumsum(self.fc(x), 1)


class ValueShaped(nn.Module):
    """A branch on values (fx cannot trace it; the real-value capture can) around an op whose output
    shape depends on the values (nothing JAX can compile)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = self.fc(x)
        if torch.isfinite(h).all():
            return h.index_fill(1, torch.nonzero(h[0] > 0).flatten(), 0.0)
        return h


class InPlaceOnView(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = self.fc(x)
        h.view(-1).relu_()
        return h


def hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 3))
    model[0].register_forward_hook(lambda module, args, output: output * 2)
    return model


REFUSALS = {
    "layer": (lambda: nn.Sequential(nn.Linear(5, 5), nn.PReLU(), nn.Linear(5, 3)),
              r"layer 1 \(PReLU\) is outside the jax method's translation vocabulary \(.*LSTM.*\).*methods that can: .*\bloop\b"),
    "function": (Cumulative, r"torch.cumsum \(called in <root> \(Cumulative.forward\)\) has no JAX translation.*methods that can: .*\bloop\b"),
    "value-dependent-shape": (ValueShaped, r"nonzero.*shape depends on the values"),
    "training-dropout": (lambda: nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5)), r"dropout with p=0.5 in training mode.*model.eval\(\)"),
    "forward-hook": (hooked, r"module 0 \(Linear\) has forward hooks, which the JAX translation would not run"),
    "in-place-on-view": (InPlaceOnView, r"modifies in place a tensor that shares memory with a view.*out-of-place"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_what_cannot_be_translated_is_refused_with_the_reason(case):
    make_model, message = REFUSALS[case]
    x, y = batch()
    with pytest.raises(Unsupported, match=message) as refused:
        get("jax").prepare(make_model(), None, (x, y))
    assert refused.value.method == "jax"


def test_a_loss_that_reduces_the_batch_is_rejected():
    x, y = batch()
    with pytest.raises(LossNotPerSample, match="reduction='none'"):
        JaxMethod(optimize=False)(nn.Linear(5, 3), x, y, F.cross_entropy)


def test_the_check_accepts_every_zoo_model_but_the_refused_one_without_compiling():
    before = trace_count()
    method = get("jax")
    for workload in all_workloads(without_tags=frozenset({"adversarial"})):
        problem = workload.build("small", 2)
        found = method.problem(problem.model, torch.device("cpu"), torch.float32)
        assert (found is not None) == ("refused" in workload.tags), f"{workload.name}: {found}"
    assert trace_count() == before
