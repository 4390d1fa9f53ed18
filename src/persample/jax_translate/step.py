"""The prepared step: torch tensors in through DLPack, the compiled JAX function, torch out.

The weights are read from the model on every call (current values, zero-copy), so an optimizer
step between calls is seen; the model itself is never written to.
"""
from __future__ import annotations

import jax
import numpy as np
import torch

from ..contract import Inputs, as_tuple
from ..errors import Unsupported
from .compiled import per_sample_gradients
from .translation import Translation


def needs_x64(tensors) -> bool:
    """Whether float64 is involved, so the call must run in JAX's (scoped) x64 mode."""
    return any(t.dtype == torch.float64 for t in tensors)


def matmul_precision(tensors) -> str | None:
    """torch's float32 matmul setting as a JAX precision (TF32 only where torch allows it);
    None (JAX's default) when no float32 is involved, so half precision keeps its fast path."""
    if not any(t.dtype == torch.float32 for t in tensors):
        return None
    return "tensorfloat32" if torch.backends.cuda.matmul.allow_tf32 else "highest"


def jax_backend_problem(device: torch.device) -> str | None:
    """Why JAX cannot compute on `device`, or None."""
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"JAX runs on cpu and cuda here, not {device.type}"
    try:
        gpus = jax.devices("cuda")
    except RuntimeError:
        return "JAX has no CUDA backend in this environment; install it with pip install 'jax[cuda12]'"
    if (device.index or 0) >= len(gpus):
        return f"JAX sees {len(gpus)} CUDA device(s), so it cannot use {device}"
    return None


INT32 = (-(1 << 31), (1 << 31) - 1)


def to_jax(tensor: torch.Tensor, x64: bool) -> jax.Array:
    """Zero-copy view of a torch tensor as a JAX array (int64 narrowed outside x64 mode, refused when
    a value would not survive the narrowing)."""
    tensor = tensor.detach()
    if not x64 and tensor.dtype == torch.int64:
        if tensor.numel() and (tensor.min().item() < INT32[0] or tensor.max().item() > INT32[1]):
            raise ValueError(
                "an int64 input holds values beyond ±2**31, which the jax method narrows to int32 (JAX's default "
                "integer width without x64 mode): use a torch method, or keep indices within int32")
        tensor = tensor.to(torch.int32)
    return jax.dlpack.from_dlpack(tensor.contiguous())  # DLPack import needs compact strides


def to_torch(array: jax.Array, device: torch.device) -> torch.Tensor:
    """`array` as a torch tensor through DLPack (no copy where the devices agree), moved to `device` otherwise."""
    tensor = torch.from_dlpack(array)
    return tensor if tensor.device == device else tensor.to(device)


class PerSampleStep:
    """`step(inputs, targets) -> {name: (B, *param.shape)}` through the compiled JAX function."""

    def __init__(self, translation: Translation, device: torch.device, x64: bool, optimize: bool = True) -> None:
        problem = jax_backend_problem(device)
        if problem:
            raise Unsupported(problem, method="jax")
        self.trainable = translation.trainable
        self.constants = translation.constants
        self.device, self.x64 = device, x64
        self.precision = matmul_precision(self.trainable.values())
        self.gradients = per_sample_gradients(translation, optimize)

    def __call__(self, inputs: Inputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        x64 = self.x64
        with jax.enable_x64(x64), jax.default_matmul_precision(self.precision):
            losses, grads = self.gradients(
                {name: to_jax(p, x64) for name, p in self.trainable.items()},
                {name: to_jax(t, x64) for name, t in self.constants.items()},
                tuple(to_jax(x, x64) for x in as_tuple(inputs)),
                to_jax(targets, x64),
            )
            grads = jax.block_until_ready(grads)
            finite = np.isfinite(np.asarray(losses))
        if not finite.all():
            samples = np.flatnonzero(~finite).tolist()
            raise ValueError(
                f"the jax step computed a non-finite loss for samples {samples[:10]}: JAX does not raise on an "
                "index out of range (a target class or token id beyond its table), it computes NaN there, where "
                "torch raises IndexError; check those samples' indices (or the model's loss is not finite for them)")
        return {name: to_torch(grads[name], self.device) for name in self.trainable}
