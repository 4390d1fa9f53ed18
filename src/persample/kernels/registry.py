"""Registry of kernel-backed rules: a Triton `grad_sample` per layer type, and the instances it refuses.

A kernel rule replaces only the shared rule's `grad_sample`; the layer matching (subclasses that
keep `forward`) and `expanded_forward` stay the shared rule's, so both methods agree on coverage.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..rules import LayerRule, rule_for
from ..rules.registry import GradSample

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
    """Function decorator: `grad_sample(module, x, grad_out)` becomes the kernel rule of `layers`."""

    def decorate(grad_sample: GradSample) -> GradSample:
        for layer in layers:
            _KERNELS[layer] = KernelRule(layer, grad_sample, refuses)
        return grad_sample

    return decorate


def placement_of(module: nn.Module) -> tuple[str, str | None]:
    """("triton", None), ("rules", why the kernel does not take it), or ("none", why) without any rule."""
    shared = rule_for(module)
    if shared is None:
        return "none", f"{type(module).__name__} has no per-layer rule"
    kernel = _KERNELS.get(shared.layer)
    if kernel is None:
        return "rules", f"no Triton kernel for {shared.layer.__name__}"
    refusal = kernel.refuses(module)
    return ("rules", refusal) if refusal else ("triton", None)


def kernel_rule_for(module: nn.Module) -> LayerRule | None:
    """The Triton-backed rule for `module` when a kernel takes it, else the shared rule (or None)."""
    shared = rule_for(module)
    if shared is None or placement_of(module)[0] != "triton":
        return shared
    return LayerRule(shared.layer, _KERNELS[shared.layer].grad_sample, shared.expanded_forward, shared.params,
                     shared.grad_batch)


def kernel_types() -> tuple[type[nn.Module], ...]:
    """Every layer type with a Triton kernel."""
    return tuple(_KERNELS)
