"""Embedding. Indices: n batch, t tokens (all dims after batch), v vocabulary row, d features.

gW[n,v,:] = Σ_{t : idx[n,t] = v} g[n,t,:]   (per-sample scatter-add; the padding row stays 0)

Each sample's tokens are sorted once (torch.sort, B×T integers). Grid n × v-blocks × d-blocks
(flat): a program owns rows [v0, v0 + BLOCK_V) × one d-block of sample n, binary-searches the
sorted tokens for the run that falls in its rows, sums their g rows in float32 with a one-hot
(BLOCK_V × BLOCK_T) product, and writes its whole tile once: zeros where no token lands. No
atomics (deterministic), no zero-fill pass, nothing dense besides the output.
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
    config(BLOCK_V=32, BLOCK_D=128, BLOCK_T=16, num_warps=4),
    config(BLOCK_V=64, BLOCK_D=128, BLOCK_T=16, num_warps=8),
    config(BLOCK_V=32, BLOCK_D=256, BLOCK_T=16, num_warps=8),
    config(BLOCK_V=16, BLOCK_D=64, BLOCK_T=16, num_warps=2),
]


@triton.jit
def _lower_bound(row_ptr, length, target, STEPS: tl.constexpr):
    """First position in the sorted row whose value is >= target (length when none is)."""
    lo = length * 0
    hi = length + 0
    for _ in tl.static_range(STEPS):
        mid = (lo + hi) // 2
        inside = mid < hi
        value = tl.load(row_ptr + mid, mask=inside, other=0)
        right = inside & (value < target)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(right, hi, mid)  # when lo == hi, mid == hi already
    return lo


@autotuned(GPU_CONFIGS, config(BLOCK_V=16, BLOCK_D=16, BLOCK_T=16), key=["T", "V", "D"])
@triton.jit
def _embedding_grads_kernel(
    sorted_ptr, order_ptr, g_ptr, out_ptr,
    T, V, D, padding_idx,
    stride_gn, stride_gt, stride_gd,
    SEARCH_STEPS: tl.constexpr, OPERANDS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    blocks_d = tl.cdiv(D, BLOCK_D)
    blocks = tl.cdiv(V, BLOCK_V) * blocks_d
    n, block = (tl.program_id(0) // blocks).to(tl.int64), tl.program_id(0) % blocks
    v0 = (block // blocks_d) * BLOCK_V
    v = v0 + tl.arange(0, BLOCK_V)
    d = (block % blocks_d) * BLOCK_D + tl.arange(0, BLOCK_D)
    tokens = sorted_ptr + n * T
    first = _lower_bound(tokens, T, v0, SEARCH_STEPS)
    last = _lower_bound(tokens, T, v0 + BLOCK_V, SEARCH_STEPS)
    rows = tl.zeros((BLOCK_V, BLOCK_D), dtype=tl.float32)
    for k0 in range(first, last, BLOCK_T):
        k = k0 + tl.arange(0, BLOCK_T)
        live = k < last
        token = tl.load(tokens + k, mask=live, other=-1)
        position = tl.load(order_ptr + n * T + k, mask=live, other=0)
        g = tl.load(
            g_ptr + n * stride_gn + position[:, None] * stride_gt + d[None, :] * stride_gd,
            mask=live[:, None] & (d[None, :] < D), other=0.0,
        )
        hits = (v[:, None] == token[None, :]) & (token[None, :] != padding_idx)
        rows = mma(tl.where(hits, 1.0, 0.0), g, rows, OPERANDS, PRECISION)
    out = out_ptr + n * V * D + v[:, None] * D + d[None, :]
    tl.store(out, rows.to(out_ptr.dtype.element_ty), mask=(v[:, None] < V) & (d[None, :] < D))


def embedding_grads(
    idx: torch.Tensor,
    grad_out: torch.Tensor,
    num_embeddings: int,
    *,
    padding_idx: int | None = None,
    dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample gW (n, num_embeddings, d) from indices (n, *) and grad_out (n, *, d)."""
    check_device(idx, grad_out)
    dot = dot_operands("exact", grad_out.dtype, grad_out.dtype)  # the one-hot operand is exact in any dtype
    n, d = idx.shape[0], grad_out.shape[-1]
    dtype = dtype or grad_out.dtype
    grad = preallocated(None if out is None else {"weight": out}, "weight", (n, num_embeddings, d), grad_out, dtype)
    if n == 0:
        return grad
    tokens, order = idx.reshape(n, -1).sort(dim=1)
    g3 = grad_out.reshape(n, -1, d)
    t = tokens.shape[1]
    if padding_idx is not None and padding_idx < 0:
        padding_idx += num_embeddings

    def grid(meta):
        return (n * triton.cdiv(num_embeddings, meta["BLOCK_V"]) * triton.cdiv(d, meta["BLOCK_D"]),)

    _embedding_grads_kernel[grid](
        tokens, order, g3, grad, t, num_embeddings, d, -1 if padding_idx is None else padding_idx,
        *g3.stride(), SEARCH_STEPS=max(t, 1).bit_length(), **dot,
    )
    return grad


@register_kernel(nn.Embedding)
def embedding_grad_sample(module: nn.Embedding, inputs: LayerInput, grad_out: torch.Tensor,
                          trainable: Collection[str]) -> dict[str, torch.Tensor]:
    """The Embedding rule's `grad_sample`, on Triton: {"weight": (n, num_embeddings, d)}, or {}
    when the weight is not in `trainable`."""
    if "weight" not in trainable:
        return {}
    rows = module.num_embeddings
    return {"weight": embedding_grads(inputs.first, grad_out, rows, padding_idx=module.padding_idx,
                                      dtype=module.weight.dtype)}
