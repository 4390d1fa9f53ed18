"""How the kernels are launched: autotuning on GPUs, Triton's CPU interpreter, operand dtypes and
matmul precision, outputs.

`triton.jit` picks the interpreter when the kernel is decorated, so whether these kernels are
interpreted is decided once, when this package is imported (TRITON_INTERPRET=1 at that moment).
"""
from __future__ import annotations

from collections.abc import Callable, Collection

import torch
import triton
import triton.language as tl

from ..rules.registry import trainable_locals

INTERPRETED: bool = bool(triton.knobs.runtime.interpret)
"""True when the kernels below run in Triton's interpreter (on the CPU, slowly)."""

_FLOAT32_OPERANDS = tl.constexpr(INTERPRETED)


@triton.jit
def mma(a, b, acc, OPERANDS: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b accumulated in float32, both operands cast in registers to OPERANDS (the host's
    `dot_operands`), so tiles loaded in different dtypes meet in one (tensor cores for half ones).

    Triton's interpreter multiplies bfloat16 operands as their uint16 bit patterns, so there the
    operands, rounded to OPERANDS, are upcast: the exact products are the same, so the result is too.
    """
    if _FLOAT32_OPERANDS:
        acc = tl.dot(a.to(OPERANDS).to(tl.float32), b.to(OPERANDS).to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a.to(OPERANDS), b.to(OPERANDS), acc, input_precision=PRECISION)
    return acc


def autotuned(gpu: list[triton.Config], interpreted: triton.Config, key: list[str]) -> Callable:
    """`triton.autotune` over `gpu` configs; in the interpreter one config, so nothing is timed."""
    return triton.autotune(configs=[interpreted] if INTERPRETED else gpu, key=key)


def config(num_warps: int = 4, num_stages: int = 2, **blocks: int) -> triton.Config:
    """A triton.Config with the block sizes `blocks` (e.g. BLOCK_M=64), `num_warps` and `num_stages`."""
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


DATA_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
"""The dtypes of x and grad_out the kernels take, with Triton's names for them."""

FEEDS: tuple[tuple[torch.dtype, torch.dtype, torch.dtype], ...] = (
    *((d, d, d) for d in DATA_DTYPES),
    *(
        feed
        for half in (torch.bfloat16, torch.float16)
        for feed in (
            (torch.float32, half, torch.float32),
            (half, torch.float32, torch.float32),
            (half, half, torch.float32),
        )
    ),
)
"""(x, grad_out, parameter) dtypes a model feeds a kernel. Without autocast all three agree. Under
`torch.autocast(dtype=half)` float32 parameters meet: a Linear/conv whose input is float32 (the
model's input, a float32 layer's output) makes a half output, (float32, half); one whose input is
a half layer's output, (half, half); a LayerNorm/GroupNorm run in float32 on a half input (CUDA
autocast), (half, float32); an Embedding's grad_out is its output's dtype. bfloat16 never meets
float16. The parameter dtype enters only the final store's cast."""


def common_dtype(x: torch.dtype, grad_out: torch.dtype) -> torch.dtype:
    """The dtype in which x and grad_out meet in a kernel: their promotion (half where both are
    the same half type, else float32). Refuses dtypes the kernels do not take and bfloat16 with
    float16, which no model feeds (promotion would silently pick float32)."""
    for role, dtype in (("x", x), ("grad_out", grad_out)):
        if dtype not in DATA_DTYPES:
            raise ValueError(f"the Triton kernels take float32, bfloat16 or float16 tensors; {role} is {dtype}")
    if {x, grad_out} == {torch.bfloat16, torch.float16}:
        raise ValueError(
            f"x is {x} and grad_out is {grad_out}: the kernels do not mix bfloat16 with float16 "
            "(no autocast feeds that pair); cast one of them"
        )
    return torch.promote_types(x, grad_out)


def dot_operands(kind: str, x: torch.dtype, grad_out: torch.dtype) -> dict[str, object]:
    """The constexprs of a product kernel (for `mma`) fed x and grad_out of these dtypes: OPERANDS,
    their `common_dtype` in Triton's terms, and PRECISION: for one dtype its `dot_precision` for
    this kind; for a float32/half pair (autocast) "tf32", on tensor cores. tf32 holds the half
    operand exactly and rounds the float32 one to 10 bits, no coarser than the half one's own (7 or
    10; autocast's own weight gradient rounds it to the half type), so the result stays within the
    half type's precision; Triton's ieee float32 product of such a pair spills registers on sm_90.
    """
    dtype = common_dtype(x, grad_out)
    precision = dot_precision(kind, dtype) if x == grad_out else "tf32"
    return {"OPERANDS": DATA_DTYPES[dtype], "PRECISION": precision}


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
    module: torch.nn.Module, like: torch.Tensor, n: int, out: dict[str, torch.Tensor] | None,
    trainable: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample (n, *param.shape) buffers, in each parameter's dtype, for the names in `trainable`
    among "weight" and "bias" (None: those with requires_grad, `persample.rules.trainable_locals`)."""
    names = trainable_locals(module) if trainable is None else trainable
    grads = {}
    for local in ("weight", "bias"):
        param = getattr(module, local, None)
        if local in names and param is not None:
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
