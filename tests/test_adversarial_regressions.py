"""Models an adversarial tester found methods wrong on: each method gives the float64 loop's per-sample
gradients or raises `Unsupported` naming the layer, and leaves the model as found (the same
Parameter objects under the same names, values, flags)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import persample
from persample.conformance.snapshot import ModelSnapshot
from persample.reference import compare, reference_grads, tolerance_for

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # no CUDA: kernel in Triton's interpreter (conftest)
KERNEL = pytest.param("kernel", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"))
RULE_METHODS = ["hooks", "expand", KERNEL]


def ce(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")


def batch(features: int | tuple[int, ...] = 6, classes: int = 3, size: int = 5):
    generator = torch.Generator().manual_seed(1)
    shape = (size, *features) if isinstance(features, tuple) else (size, features)
    return (torch.randn(shape, generator=generator).to(DEVICE),
            torch.randint(classes, (size,), generator=generator).to(DEVICE))


def assert_right_and_left_as_found(model: nn.Module, method: str, x, y) -> None:
    """`method`'s per-sample gradients within float32's tolerance of the float64 loop's, the model
    unchanged afterwards (and its Parameters still Parameters, usable by the next call)."""
    before = ModelSnapshot.of(model)
    grads = persample.per_sample_grads(model, x, y, loss_fn=ce, method=method)
    assert before.differences(model) == []
    assert all(type(p) is nn.Parameter for p in model.parameters())
    tolerance = tolerance_for(torch.float32)
    result = compare(grads, reference_grads(model, x, y, ce))
    assert result.within(tolerance), f"{method}: {result.describe(tolerance)}"


# A module registered under two names ------------------------------------------------------------


class Counter(nn.Module):
    """Counts its calls in a buffer, in place (a forward that updates state)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls += 1
        return x


class AliasedAttribute(nn.Module):
    """`self.b = self.a`: one block, two names, called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(6, 6), Counter())
        self.b = self.a
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def reused_in_sequential() -> nn.Module:
    layer = nn.Linear(6, 6)
    return nn.Sequential(layer, nn.Tanh(), layer, nn.Tanh(), nn.Linear(6, 3))


@pytest.mark.parametrize("make", [reused_in_sequential, AliasedAttribute], ids=["sequential", "attribute"])
def test_vmap_on_a_module_registered_under_two_names_sums_its_calls_and_keeps_its_parameters(make):
    """Each parameter's gradient sums over the module's calls, as autograd gives it; afterwards
    m[0].weight is still the nn.Parameter it was (not torch.func's tensor), so the next call works."""
    torch.manual_seed(0)
    model = make().to(DEVICE)
    x, y = batch()
    assert_right_and_left_as_found(model, "vmap", x, y)
    assert_right_and_left_as_found(model, "vmap", x, y)  # again: nothing was left behind
    assert_right_and_left_as_found(model, "loop", x, y)


def test_vmap_keeps_weights_tied_across_two_modules():
    """One Parameter held by two different modules (an input and an output embedding): two slots,
    both given the same value, the gradient summed over both uses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6, bias=False), nn.Tanh(), nn.Linear(6, 6))
    model[2].weight = model[0].weight
    model.to(DEVICE)
    x, y = batch(classes=6)
    assert_right_and_left_as_found(model, "vmap", x, y)


# A tensor a rule reads that is not a trainable Parameter ----------------------------------------


def as_buffer(module: nn.Module, name: str) -> nn.Module:
    """`module` with its parameter `name` turned into a buffer of the same value (a frozen or quantised
    weight stored as state)."""
    value = getattr(module, name).detach().clone()
    delattr(module, name)
    module.register_buffer(name, value)
    return module


class AssignedWeight(nn.Module):
    """A parent's forward assigns its child's weight from frozen tensors (hypernetwork style); the
    child's bias is trainable, its `weight` exists only between the assignment and the restore."""

    def __init__(self, child: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.child, self.head = child, head
        self.base = nn.Parameter(child.weight.detach().clone(), requires_grad=False)
        self.gain = nn.Parameter(torch.rand(child.weight.shape[0]) + 0.5, requires_grad=False)
        del child.weight

    def forward(self, x):
        self.child.weight = self.base * self.gain.reshape(-1, *[1] * (self.base.dim() - 1))
        return self.head(torch.tanh(self.child(x)))


def linear_weight_buffer():
    return nn.Sequential(as_buffer(nn.Linear(6, 8), "weight"), nn.Tanh(), nn.Linear(8, 3)), (6,)


def linear_weight_assigned():
    return AssignedWeight(nn.Linear(6, 8), nn.Linear(8, 3)), (6,)


def conv_weight_buffer():
    return nn.Sequential(as_buffer(nn.Conv2d(2, 4, 3, groups=2), "weight"), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 3)), (2, 5, 5)


def conv_weight_assigned():
    return AssignedWeight(nn.Conv2d(2, 4, 3, groups=2), nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 3))), (2, 5, 5)


def layernorm_weight_buffer():
    return nn.Sequential(nn.Linear(6, 6), as_buffer(nn.LayerNorm(6), "weight"), nn.Linear(6, 3)), (6,)


def layernorm_bias_buffer():
    norm = as_buffer(nn.LayerNorm(6), "bias")
    with torch.no_grad():
        norm.bias.uniform_(-1, 1)  # a shift the expanded forward must not drop
    return nn.Sequential(nn.Linear(6, 6), norm, nn.Linear(6, 3)), (6,)


def groupnorm_weight_assigned():
    return AssignedWeight(nn.GroupNorm(2, 4), nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 3))), (4, 3, 3)


def linear_bias_buffer_weight_frozen():
    layer = as_buffer(nn.Linear(6, 8), "bias")
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    layer.weight.requires_grad_(False)
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), layer, nn.Tanh(), nn.Linear(8, 3)), (6,)


NOT_PARAMETERS = [linear_weight_buffer, linear_weight_assigned, conv_weight_buffer, conv_weight_assigned,
                  layernorm_weight_buffer, layernorm_bias_buffer, groupnorm_weight_assigned,
                  linear_bias_buffer_weight_frozen]


@pytest.mark.parametrize("method", [*RULE_METHODS, "vmap", "loop"])
@pytest.mark.parametrize("make", NOT_PARAMETERS, ids=lambda make: make.__name__)
def test_a_tensor_a_rule_reads_that_is_not_a_trainable_parameter_is_read_as_the_call_used_it(make, method):
    """A layer's weight or bias held as a buffer, a frozen Parameter or a tensor its parent's forward
    assigns, beside a trainable one: the expanded forward computes with the module's own tensor (as
    the layer does), the kernels take their dtypes from the call, so every method gives the loop's
    gradients of the trainable parameters."""
    torch.manual_seed(0)
    model, features = make()
    model.to(DEVICE)
    x, y = batch(features)
    assert_right_and_left_as_found(model, method, x, y)


class TrainableHypernetwork(nn.Module):
    """The child's weight is computed from the parent's trainable `gain`: a parameter that reaches the
    loss through another layer's call, which a per-layer rule cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.child, self.head = nn.Linear(6, 6), nn.Linear(6, 3)
        self.base = nn.Parameter(self.child.weight.detach().clone(), requires_grad=False)
        self.gain = nn.Parameter(torch.rand(6) + 0.5)
        del self.child.weight

    def forward(self, x):
        self.child.weight = self.base * self.gain[:, None]
        return self.head(torch.tanh(self.child(x)))


@pytest.mark.parametrize("method", [*RULE_METHODS, "vmap", "loop"])
def test_an_assigned_weight_computed_from_a_trainable_parameter_is_right(method):
    """The parent owning `gain` has no rule: the rule methods compute it on the per-layer torch.func
    fallback, which reruns the parent's forward (and so the assignment) per sample."""
    torch.manual_seed(0)
    model = TrainableHypernetwork().to(DEVICE)
    x, y = batch()
    assert_right_and_left_as_found(model, method, x, y)


def test_expand_names_the_layer_whose_batched_form_computes_another_output(monkeypatch):
    """When the expanded forward's losses are not the model's, the refusal names the layer whose rule's
    batched form gives another output than its forward (here a LayerNorm rule off by 5%)."""
    import dataclasses

    from persample.rules import registry

    rule = registry._RULES[nn.LayerNorm]
    off = dataclasses.replace(rule, expanded_forward=lambda module, inputs, weights: 1.05 * rule.expanded_forward(module, inputs, weights))
    monkeypatch.setitem(registry._RULES, nn.LayerNorm, off)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3)).to(DEVICE)
    x, y = batch()
    before = ModelSnapshot.of(model)
    with pytest.raises(persample.Unsupported, match=r"layer 1 \(LayerNorm\) computes other losses") as refused:
        persample.per_sample_grads(model, x, y, loss_fn=ce, method="expand")
    assert refused.value.layer == "LayerNorm"
    assert before.differences(model) == []
