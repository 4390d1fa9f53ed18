"""The `kernel` method: zoo workloads against the float64 reference, placement, capabilities."""
import importlib.util

import pytest
import torch
from torch import nn

from .kernel_checks import DEVICE, assert_method_matches_reference
from persample import Unsupported
from persample.kernels import registry
from persample.methods import kernel as kernel_module
from persample.methods.kernel import CPU_HINT, KernelMethod
from persample.methods.registry import registered
from persample.reference import compare, reference_grads, tolerance_for
from persample.workloads import get_workload

ZOO = ["mlp", "text_classifier", "transformer_block", "lm_tied", "resblock", "speech_conv1d", "frozen_backbone"]


def run_workload(name: str, dtype: torch.dtype):
    problem = get_workload(name).build(size="small", batch_size=4, device=DEVICE, dtype=dtype)
    step = KernelMethod().prepare(problem.model, problem.loss_fn, (problem.inputs, problem.targets))
    grads = step(problem.inputs, problem.targets)
    reference = reference_grads(problem.model, problem.inputs, problem.targets, problem.loss_fn)
    return step, compare(grads, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ZOO)
def test_zoo_workload_matches_reference(name, dtype):
    step, result = run_workload(name, dtype)
    tolerance = tolerance_for(dtype)
    assert result.within(tolerance), f"kernel-{name}-{dtype}: {result.describe(tolerance)}"
    assert set(step.placement.values()) == {"triton"}, step.placement


def test_cifar_cnn_float32_matches_reference():
    """Conv2d + GroupNorm on 4-d inputs through pooling; float32 only (the interpreter is slow)."""
    _, result = run_workload("cifar_cnn", torch.float32)
    assert result.within(tolerance_for(torch.float32)), result.describe(tolerance_for(torch.float32))


def test_placement_names_every_trainable_owner():
    model = nn.Sequential(nn.Embedding(9, 4), nn.LayerNorm(4), nn.Linear(4, 3), nn.Linear(3, 2))
    model[3].requires_grad_(False)
    assert KernelMethod().placement(model) == {"0": "triton", "1": "triton", "2": "triton"}


def test_layer_without_kernel_runs_on_the_rules_and_says_so(monkeypatch):
    monkeypatch.delitem(registry._KERNELS, nn.Linear)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.LayerNorm(4)).to(DEVICE)
    x, y = torch.randn(3, 5, device=DEVICE), torch.randn(3, 4, device=DEVICE)
    assert assert_method_matches_reference(model, x, y) == {"0": "rules", "2": "triton"}
    assert KernelMethod().placement_reasons(model)["0"] == ("rules", "no Triton kernel for Linear")


def test_refused_instance_runs_on_the_rules_with_the_reason(monkeypatch):
    refusing = registry.KernelRule(nn.Conv1d, registry._KERNELS[nn.Conv1d].grad_sample, lambda m: "refused for the test")
    monkeypatch.setitem(registry._KERNELS, nn.Conv1d, refusing)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2)).to(DEVICE)
    x, y = torch.randn(2, 2, 6, device=DEVICE), torch.randn(2, 2, device=DEVICE)
    assert assert_method_matches_reference(model, x, y) == {"0": "rules", "2": "triton"}
    assert KernelMethod().placement_reasons(model)["0"] == ("rules", "refused for the test")


class Float64Head(nn.Module):
    """A float32 body and a float64 head, the forward casting between them."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.norm, self.head = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3).double()

    def forward(self, x):
        return self.head(self.norm(torch.tanh(self.body(x))).double()).float()


def test_a_layer_of_a_dtype_the_kernels_do_not_take_runs_on_the_rules_in_its_dtype():
    """A float64 layer in a float32 model falls back to the shared rule, which computes in float64;
    the placement names the layer and the dtype."""
    model = Float64Head().to(DEVICE)
    x, y = torch.randn(5, 6, device=DEVICE), torch.randn(5, 3, device=DEVICE)
    assert assert_method_matches_reference(model, x, y) == {"body": "triton", "norm": "triton", "head": "rules"}
    where, why = KernelMethod().placement_reasons(model)["head"]
    assert where == "rules" and "float64" in why and "shared rule" in why


class PromotingNorm(nn.Module):
    """A float32 Linear, then an RMSNorm with float32 parameters fed float64 (it promotes)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.norm = nn.Linear(6, 8), nn.RMSNorm(8)

    def forward(self, x):
        return self.norm(torch.tanh(self.body(x)).double())


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_a_call_of_a_dtype_the_kernels_do_not_take_is_computed_by_the_shared_rule():
    """The RMSNorm's call reaches its kernel rule in float64 although its parameters are float32: the
    shared rule's formula computes it (not cast down, not a raw launcher error)."""
    x, y = torch.randn(5, 6, device=DEVICE), torch.randn(5, 8, device=DEVICE, dtype=torch.float64)
    assert assert_method_matches_reference(PromotingNorm().to(DEVICE), x, y) == {"body": "triton", "norm": "triton"}


def test_subclasses_keep_the_kernel_unless_they_change_forward():
    """A subclass that changes forward is not the Linear the kernel computes: it runs on the per-layer
    torch.func fallback, which differentiates its own forward, and the placement says so."""
    class Renamed(nn.Linear):
        pass

    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    assert KernelMethod().placement(nn.Sequential(Renamed(3, 2))) == {"0": "triton"}
    model = nn.Sequential(Doubled(3, 2)).to(DEVICE)
    assert KernelMethod().placement(model) == {"0": "torch.func"}
    x, y = torch.randn(5, 3, device=DEVICE), torch.randn(5, 2, device=DEVICE)
    assert assert_method_matches_reference(model, x, y) == {"0": "torch.func"}


def test_registered_under_kernel():
    assert isinstance(registered()["kernel"], KernelMethod)


def test_float64_is_refused_with_a_reason():
    model = nn.Linear(3, 2).to(DEVICE, torch.float64)
    with pytest.raises(Unsupported, match="accumulate in float32"):
        KernelMethod().check(model, torch.device(DEVICE), torch.float64)


def test_cpu_without_the_interpreter_is_refused_with_the_hint(monkeypatch):
    monkeypatch.setattr(kernel_module, "interpreting", lambda: False)
    with pytest.raises(Unsupported, match="set TRITON_INTERPRET=1"):
        KernelMethod().check(nn.Linear(3, 2), torch.device("cpu"), torch.float32)
    if not torch.cuda.is_available():
        assert KernelMethod().unavailable_reason().endswith(CPU_HINT)


def test_missing_triton_is_named(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a))
    reason = KernelMethod().unavailable_reason()
    assert "triton" in reason and "pip install triton" in reason
