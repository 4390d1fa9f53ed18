"""Linear. Indices: n batch, t tokens (all dims between batch and features), i in, o out.

gW[n,o,i] = Σ_t g[n,t,o] x[n,t,i]   (one GEMM per sample whose reduction axis is the tokens)
gb[n,o]   = Σ_t g[n,t,o]            (fused: summed from the g tiles the GEMM already loads)

Grid n × o-blocks × i-blocks (flat, sample-major): each program owns a BLOCK_O × BLOCK_I tile of
one sample's gW, accumulates it in float32 over token blocks with `tl.dot` (tensor cores for half
inputs), and writes it once in the parameter dtype. The first i-block also writes the bias rows.
x and g may differ in dtype (autocast): `mma` casts both tiles in registers to their common dtype.
"""
from __future__ import annotations

from collections.abc import Collection

import torch
import triton
import triton.language as tl
from torch import nn

from ..layers import LayerInput
from .registry import register_kernel
from .tuning import autotuned, check_device, config, dot_operands, mma, preallocated

GPU_CONFIGS = [  # none spills registers in an sm_90 build, for any feed (python -m persample.kernels.aot)
    config(BLOCK_O=128, BLOCK_I=128, BLOCK_T=32, num_warps=8, num_stages=2),
    config(BLOCK_O=64, BLOCK_I=128, BLOCK_T=32, num_warps=4, num_stages=3),
    config(BLOCK_O=64, BLOCK_I=64, BLOCK_T=64, num_warps=8, num_stages=3),
    config(BLOCK_O=32, BLOCK_I=128, BLOCK_T=16, num_warps=4, num_stages=3),
]


@autotuned(GPU_CONFIGS, config(BLOCK_O=16, BLOCK_I=16, BLOCK_T=16), key=["T", "I", "O"])
@triton.jit
def _linear_grads_kernel(
    x_ptr, g_ptr, gw_ptr, gb_ptr,
    T, I, O,
    stride_xn, stride_xt, stride_xi,
    stride_gn, stride_gt, stride_go,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, OPERANDS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
):
    blocks_i = tl.cdiv(I, BLOCK_I) if HAS_WEIGHT else 1
    blocks = tl.cdiv(O, BLOCK_O) * blocks_i
    n, block = (tl.program_id(0) // blocks).to(tl.int64), tl.program_id(0) % blocks
    block_o, block_i = block // blocks_i, block % blocks_i
    o = block_o * BLOCK_O + tl.arange(0, BLOCK_O)
    i = block_i * BLOCK_I + tl.arange(0, BLOCK_I)
    x_rows = x_ptr + n * stride_xn + i[None, :] * stride_xi
    g_cols = g_ptr + n * stride_gn + o[:, None] * stride_go
    weight = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    bias = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        g = tl.load(g_cols + t[None, :] * stride_gt, mask=(o[:, None] < O) & (t[None, :] < T), other=0.0)
        if HAS_WEIGHT:
            x = tl.load(x_rows + t[:, None] * stride_xt, mask=(t[:, None] < T) & (i[None, :] < I), other=0.0)
            weight = mma(g, x, weight, OPERANDS, PRECISION)
        if HAS_BIAS:
            bias += tl.sum(g.to(tl.float32), axis=1)
    if HAS_WEIGHT:
        out = gw_ptr + n * O * I + o[:, None] * I + i[None, :]
        tl.store(out, weight.to(gw_ptr.dtype.element_ty), mask=(o[:, None] < O) & (i[None, :] < I))
    if HAS_BIAS:
        if block_i == 0:
            tl.store(gb_ptr + n * O + o, bias.to(gb_ptr.dtype.element_ty), mask=o < O)


def linear_grads(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    weight: bool = True,
    bias: bool = True,
    dtype: torch.dtype | None = None,
    out: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample gW (n, o, i) and gb (n, o) from x (n, *, i) and grad_out (n, *, o).

    `dtype` is the output dtype (default x's); `out` may hold preallocated "weight"/"bias" tensors.
    """
    check_device(x, grad_out)
    dot = dot_operands("matmul", x.dtype, grad_out.dtype)
    n, i, o = x.shape[0], x.shape[-1], grad_out.shape[-1]
    dtype = dtype or x.dtype
    grads = {}
    if weight:
        grads["weight"] = preallocated(out, "weight", (n, o, i), x, dtype)
    if bias:
        grads["bias"] = preallocated(out, "bias", (n, o), x, dtype)
    if not grads or n == 0:
        return grads
    x3, g3 = x.reshape(n, -1, i), grad_out.reshape(n, -1, o)
    t = x3.shape[1]

    def grid(meta):
        blocks_i = triton.cdiv(i, meta["BLOCK_I"]) if weight else 1
        return (n * triton.cdiv(o, meta["BLOCK_O"]) * blocks_i,)

    _linear_grads_kernel[grid](
        x3, g3, grads.get("weight", g3), grads.get("bias", g3),
        t, i, o, *x3.stride(), *g3.stride(),
        HAS_WEIGHT=weight, HAS_BIAS=bias, **dot,
    )
    return grads


@register_kernel(nn.Linear)
def linear_grad_sample(module: nn.Linear, inputs: LayerInput, grad_out: torch.Tensor,
                       trainable: Collection[str]) -> dict[str, torch.Tensor]:
    """The Linear rule's `grad_sample`, on Triton: the names in `trainable` only, in their parameters'
    dtype. Reads no other attribute of the module: a weight that is not a trainable parameter (a
    buffer, or a tensor a parent's forward assigns) need not be there when the backward runs."""
    own = module._parameters
    dtype = next((own[name].dtype for name in ("weight", "bias") if name in trainable), inputs.first.dtype)
    return linear_grads(inputs.first, grad_out, weight="weight" in trainable, bias="bias" in trainable,
                        dtype=dtype)
