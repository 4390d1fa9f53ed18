"""Registry of kernel-backed rules: a Triton `grad_sample` per layer type, and the instances it refuses.

A kernel rule replaces only the shared rule's `grad_sample` (same signature and contract: only the
names in `trainable` are computed); the layer matching (subclasses that keep `forward`),
`expanded_forward`, `grad_batch` and the FLOP count stay the shared rule's, so both methods agree
on coverage.

The kernels take float32, bfloat16 and float16 tensors (`tuning.DATA_DTYPES`) and accumulate in
float32. A layer holding a parameter of another dtype (a float64 head in a float32 model) is placed
on the shared rule, which computes in the layer's own dtype (`placement_of` says why); a call whose
tensors are of another dtype all the same (an RMSNorm promoting its input to float64) is computed
by the shared rule too, never cast down or refused half-way.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..rules import LayerRule, rule_for
from ..rules.registry import GradSample
from .tuning import DATA_DTYPES

Refusal = Callable[[nn.Module], str | None]


def _accepts_all(module: nn.Module) -> str | None:
    return None


@dataclass(frozen=True)
class KernelRule:
    """A Triton `grad_sample` for one layer type; `refuses(module)` says why an instance cannot use it."""

    layer: type[nn.Module]
    grad_sample: GradSample
    refuses: Refusal = _accepts_all


_KERNELS: dict[type[nn.Module], KernelRule] = {}


def register_kernel(*layers: type[nn.Module], refuses: Refusal = _accepts_all) -> Callable[[GradSample], GradSample]:
    """Function decorator: `grad_sample(module, inputs, grad_out, trainable)` becomes the kernel rule
    of `layers` (the shared rule's signature, `persample.rules.registry.GradSample`)."""

    def decorate(grad_sample: GradSample) -> GradSample:
        for layer in layers:
            _KERNELS[layer] = KernelRule(layer, grad_sample, refuses)
        return grad_sample

    return decorate


def _untaken_dtype(module: nn.Module) -> str | None:
    """Why the kernels cannot take `module`'s dtype (a parameter of a dtype not in `DATA_DTYPES`), or None."""
    for local, param in module._parameters.items():
        if param is not None and param.dtype not in DATA_DTYPES:
            dtype = str(param.dtype).removeprefix("torch.")
            return (f"its {local} is {dtype}, which the Triton kernels do not take (float32, bfloat16, float16; they "
                    f"accumulate in float32): the shared rule computes it in {dtype}")
    return None


def placement_of(module: nn.Module) -> tuple[str, str | None]:
    """("triton", None), ("rules", why the kernel does not take it: no kernel for the layer, a parameter
    dtype the kernels do not take, or the kernel's own refusal), or ("torch.func", why) without any rule
    (the per-layer fallback of `persample.rules.functional` computes it)."""
    shared = rule_for(module)
    if shared is None:
        return "torch.func", f"{type(module).__name__} has no per-layer rule: the torch.func fallback computes it"
    kernel = _KERNELS.get(shared.layer)
    if kernel is None:
        return "rules", f"no Triton kernel for {shared.layer.__name__}"
    refusal = _untaken_dtype(module) or kernel.refuses(module)
    return ("rules", refusal) if refusal else ("triton", None)


def _on_taken_dtypes(kernel: GradSample, shared: GradSample) -> GradSample:
    """`kernel` for calls whose input and output gradient the kernels take, else `shared` (same result
    contract: {name: (B, *param.shape)} for the names in `trainable`)."""

    def grad_sample(module, inputs, grad_out, trainable):
        x = inputs.first
        taken = grad_out.dtype in DATA_DTYPES and (not x.is_floating_point() or x.dtype in DATA_DTYPES)
        return (kernel if taken else shared)(module, inputs, grad_out, trainable)

    return grad_sample


def kernel_rule_for(module: nn.Module) -> LayerRule | None:
    """The Triton-backed rule for `module` when a kernel takes it (calls of dtypes the kernels do not
    take still go to the shared rule's formula), else the shared rule (or None)."""
    shared = rule_for(module)
    if shared is None or placement_of(module)[0] != "triton":
        return shared
    return dataclasses.replace(shared, grad_sample=_on_taken_dtypes(_KERNELS[shared.layer].grad_sample, shared.grad_sample))


def kernel_types() -> tuple[type[nn.Module], ...]:
    """Every layer type with a Triton kernel."""
    return tuple(_KERNELS)
