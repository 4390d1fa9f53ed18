"""How the kernels are launched: autotuning on GPUs, Triton's CPU interpreter, matmul precision, outputs.

`triton.jit` picks the interpreter when the kernel is decorated, so whether these kernels are
interpreted is decided once, when this package is imported (TRITON_INTERPRET=1 at that moment).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

INTERPRETED: bool = bool(triton.knobs.runtime.interpret)
"""True when the kernels below run in Triton's interpreter (on the CPU, slowly)."""

_FLOAT32_OPERANDS = tl.constexpr(INTERPRETED)


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b accumulated in float32 (tensor cores for half operands on a GPU).

    Triton's interpreter multiplies bfloat16 operands as their uint16 bit patterns, so there the
    operands are upcast first; the exact products are the same, so the result is too.
    """
    if _FLOAT32_OPERANDS:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


def autotuned(gpu: list[triton.Config], interpreted: triton.Config, key: list[str]) -> Callable:
    """`triton.autotune` over `gpu` configs; in the interpreter one config, so nothing is timed."""
    return triton.autotune(configs=[interpreted] if INTERPRETED else gpu, key=key)


def config(num_warps: int = 4, num_stages: int = 2, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


def dot_precision(kind: str, dtype: torch.dtype) -> str:
    """`tl.dot`'s input precision: for float32, "tf32" only where torch allows it for this kind of
    product ("matmul": torch.backends.cuda.matmul.allow_tf32, "conv": torch.backends.cudnn's,
    "exact": never). Half-precision operands ignore it; they get Triton's default.
    """
    if dtype != torch.float32:
        return "tf32"
    allowed = {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "conv": torch.backends.cudnn.allow_tf32,
        "exact": False,
    }[kind]
    return "tf32" if allowed else "ieee"


def check_device(*tensors: torch.Tensor) -> None:
    """Compiled kernels need CUDA tensors; the interpreter takes any."""
    if INTERPRETED:
        return
    for tensor in tensors:
        if tensor.device.type != "cuda":
            raise ValueError(
                f"the Triton kernels run on CUDA tensors, got one on {tensor.device}; "
                "set TRITON_INTERPRET=1 to run the Triton kernels on the CPU (slowly)"
            )


def trainable_outputs(
    module: torch.nn.Module, like: torch.Tensor, n: int, out: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """Per-sample (n, *shape) buffers for the module's trainable "weight" and "bias"."""
    grads = {}
    for local in ("weight", "bias"):
        param = getattr(module, local, None)
        if param is not None and param.requires_grad:
            grads[local] = preallocated(out, local, (n, *param.shape), like, param.dtype)
    return grads


def preallocated(
    out: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """`out[name]` when the caller supplied it (checked), else a fresh uninitialised tensor."""
    if out is None or name not in out:
        return torch.empty(shape, dtype=dtype, device=like.device)
    given = out[name]
    if tuple(given.shape) != tuple(shape) or given.dtype != dtype or not given.is_contiguous():
        raise ValueError(
            f"out[{name!r}] must be a contiguous {dtype} tensor of shape {tuple(shape)}; "
            f"got {given.dtype} {tuple(given.shape)}"
        )
    return given
