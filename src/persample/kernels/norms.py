"""Affine normalisations: LayerNorm, RMSNorm (row kind), GroupNorm, InstanceNorm1d/2d/3d (channel kind).

Indices: n batch, r rows (dims before the normalised ones), f normalised features, c channels,
s spatial positions. x̂ is recomputed in float32 from the saved input:
row kind      x̂[n,r,f] = (x − μ[n,r]) · rstd[n,r]   gγ[n,f] = Σ_r g ⊙ x̂,  gβ[n,f] = Σ_r g
channel kind  x̂[n,c,s] = (x − μ[n,c∈group]) · rstd  gγ[n,c] = Σ_s g ⊙ x̂,  gβ[n,c] = Σ_s g
(RMSNorm: μ = 0 and rstd = 1/√(mean x² + ε).) Moments are combined across blocks with Chan's
parallel formula, so no one-pass Σx² − (Σx)² cancellation. Every load is cast to float32, so x and
g may differ in dtype (autocast runs these layers in float32 on half inputs).
"""
from __future__ import annotations

import math
from collections.abc import Collection

import torch
import triton
import triton.language as tl
from torch import nn

from ..layers import LayerInput, uses_running_stats
from .registry import register_kernel
from .tuning import check_device, common_dtype, trainable_outputs

MAX_ROW_BLOCK = 4096
"""Rows up to this many features are normalised inside the gradient kernel (one read of x)."""
TILE = 4096
"""Elements per program tile."""


@triton.jit
def _segment_moments_kernel(x_ptr, stats_ptr, M, eps, CENTER: tl.constexpr, BLOCK: tl.constexpr):
    """stats[s] = (μ, rstd) of the contiguous segment x[s·M : (s+1)·M]."""
    base = x_ptr + tl.program_id(0).to(tl.int64) * M
    count = tl.zeros((), dtype=tl.float32)
    mean = tl.zeros((), dtype=tl.float32)
    m2 = tl.zeros((), dtype=tl.float32)
    for m0 in range(0, M, BLOCK):
        offsets = m0 + tl.arange(0, BLOCK)
        live = offsets < M
        x = tl.load(base + offsets, mask=live, other=0.0).to(tl.float32)
        if CENTER:  # Chan et al.: merge this block's (count, mean, M2) into the running ones
            block_count = tl.minimum(M - m0, BLOCK).to(tl.float32)
            block_mean = tl.sum(x) / block_count
            block_m2 = tl.sum(tl.where(live, (x - block_mean) * (x - block_mean), 0.0))
            total = count + block_count
            delta = block_mean - mean
            mean += delta * block_count / total
            m2 += block_m2 + delta * delta * count * block_count / total
            count = total
        else:
            m2 += tl.sum(x * x)
    tl.store(stats_ptr + tl.program_id(0) * 2, mean)
    tl.store(stats_ptr + tl.program_id(0) * 2 + 1, 1.0 / tl.sqrt(m2 / M + eps))


@triton.jit
def _row_affine_grads_kernel(
    x_ptr, g_ptr, stats_ptr, gw_ptr, gb_ptr, R, F, eps,
    CENTER: tl.constexpr, INLINE_STATS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr,
):
    blocks = tl.cdiv(F, BLOCK_F)
    n = (tl.program_id(0) // blocks).to(tl.int64)
    f = (tl.program_id(0) % blocks) * BLOCK_F + tl.arange(0, BLOCK_F)
    x_sample, g_sample = x_ptr + n * R * F, g_ptr + n * R * F
    weight = tl.zeros((BLOCK_F,), dtype=tl.float32)
    bias = tl.zeros((BLOCK_F,), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        live = (r[:, None] < R) & (f[None, :] < F)
        offsets = r[:, None] * F + f[None, :]  # within the sample: 32-bit
        g = tl.load(g_sample + offsets, mask=live, other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            x = tl.load(x_sample + offsets, mask=live, other=0.0).to(tl.float32)
            if INLINE_STATS:  # the tile holds whole rows: two-pass moments in registers
                mean = tl.sum(x, axis=1) / F if CENTER else tl.zeros((BLOCK_R,), dtype=tl.float32)
                centred = tl.where(live, x - mean[:, None], 0.0)
                rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / F + eps)
            else:
                mean = tl.load(stats_ptr + (n * R + r) * 2, mask=r < R, other=0.0)
                rstd = tl.load(stats_ptr + (n * R + r) * 2 + 1, mask=r < R, other=0.0)
                centred = x - mean[:, None]
            weight += tl.sum(g * centred * rstd[:, None], axis=0)
        if HAS_BIAS:
            bias += tl.sum(g, axis=0)
    if HAS_WEIGHT:
        tl.store(gw_ptr + n * F + f, weight.to(gw_ptr.dtype.element_ty), mask=f < F)
    if HAS_BIAS:
        tl.store(gb_ptr + n * F + f, bias.to(gb_ptr.dtype.element_ty), mask=f < F)


@triton.jit
def _channel_affine_grads_kernel(
    x_ptr, g_ptr, stats_ptr, gw_ptr, gb_ptr, C, S, channels_per_group, stats_stride_n,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    blocks = tl.cdiv(C, BLOCK_C)
    n = (tl.program_id(0) // blocks).to(tl.int64)
    c = (tl.program_id(0) % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    if HAS_WEIGHT:
        segment = n * stats_stride_n + c // channels_per_group
        mean = tl.load(stats_ptr + segment * 2, mask=c < C, other=0.0)
        rstd = tl.load(stats_ptr + segment * 2 + 1, mask=c < C, other=0.0)
    weight = tl.zeros((BLOCK_C,), dtype=tl.float32)
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        live = (c[:, None] < C) & (s[None, :] < S)
        offsets = n * C * S + c[:, None] * S + s[None, :]
        g = tl.load(g_ptr + offsets, mask=live, other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            x = tl.load(x_ptr + offsets, mask=live, other=0.0).to(tl.float32)
            weight += tl.sum(tl.where(live, g * (x - mean[:, None]), 0.0), axis=1) * rstd
        if HAS_BIAS:
            bias += tl.sum(g, axis=1)
    if HAS_WEIGHT:
        tl.store(gw_ptr + n * C + c, weight.to(gw_ptr.dtype.element_ty), mask=c < C)
    if HAS_BIAS:
        tl.store(gb_ptr + n * C + c, bias.to(gb_ptr.dtype.element_ty), mask=c < C)


def _segment_moments(x: torch.Tensor, segments: int, length: int, eps: float, center: bool) -> torch.Tensor:
    stats = torch.empty(segments, 2, dtype=torch.float32, device=x.device)
    block = min(triton.next_power_of_2(length), TILE)
    _segment_moments_kernel[(segments,)](x, stats, length, eps, CENTER=center, BLOCK=block, num_warps=8)
    return stats


def row_norm_grads(
    module: nn.LayerNorm | nn.RMSNorm,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    out: dict[str, torch.Tensor] | None = None,
    max_row_block: int = MAX_ROW_BLOCK,
    trainable: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample gγ, gβ (n, *normalized_shape) of LayerNorm/RMSNorm for the names in `trainable`
    (None: those with requires_grad); rows longer than `max_row_block` get a separate moments pass."""
    check_device(x, grad_out)
    common_dtype(x.dtype, grad_out.dtype)  # refuses a pair no model feeds
    x, grad_out, n = x.contiguous(), grad_out.contiguous(), x.shape[0]
    features = math.prod(module.normalized_shape)
    rows = x.numel() // max(n * features, 1)
    center = isinstance(module, nn.LayerNorm)
    eps = module.eps if module.eps is not None else torch.finfo(torch.float32).eps
    grads = trainable_outputs(module, x, n, out, trainable)
    if n == 0 or not grads:
        return grads
    inline = features <= max_row_block
    block_f = triton.next_power_of_2(features) if inline else min(max_row_block, 1024)
    block_r = max(1, min(triton.next_power_of_2(rows), TILE // block_f))
    stats = x if inline or "weight" not in grads else _segment_moments(x, n * rows, features, eps, center)
    _row_affine_grads_kernel[(n * triton.cdiv(features, block_f),)](
        x, grad_out, stats, grads.get("weight", x), grads.get("bias", x), rows, features, eps,
        CENTER=center, INLINE_STATS=inline, HAS_WEIGHT="weight" in grads, HAS_BIAS="bias" in grads,
        BLOCK_R=block_r, BLOCK_F=block_f, num_warps=8 if block_r * block_f >= 2048 else 4,
    )
    return grads


def channel_norm_grads(
    module: nn.GroupNorm | nn.modules.instancenorm._InstanceNorm,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    out: dict[str, torch.Tensor] | None = None,
    trainable: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample gγ, gβ (n, channels) of GroupNorm/InstanceNorm (per-instance statistics, or the
    running ones where `persample.layers.uses_running_stats`) for the names in `trainable` (None:
    those with requires_grad)."""
    check_device(x, grad_out)
    common_dtype(x.dtype, grad_out.dtype)  # refuses a pair no model feeds
    x, grad_out, (n, channels) = x.contiguous(), grad_out.contiguous(), x.shape[:2]
    spatial = math.prod(x.shape[2:])
    groups = module.num_groups if isinstance(module, nn.GroupNorm) else channels
    grads = trainable_outputs(module, x, n, out, trainable)
    if n == 0 or not grads:
        return grads
    stats, stats_stride_n = x, groups
    if "weight" in grads:
        if uses_running_stats(module):  # InstanceNorm in eval mode normalises with the running statistics
            rstd = (module.running_var.float() + module.eps).rsqrt()
            stats = torch.stack([module.running_mean.float(), rstd], 1)
            stats_stride_n = 0
        else:
            stats = _segment_moments(x, n * groups, x[0].numel() // groups, module.eps, True)
    block_s = min(triton.next_power_of_2(spatial), 512)
    block_c = max(1, min(triton.next_power_of_2(channels), TILE // block_s))
    _channel_affine_grads_kernel[(n * triton.cdiv(channels, block_c),)](
        x, grad_out, stats, grads.get("weight", x), grads.get("bias", x),
        channels, spatial, channels // groups, stats_stride_n,
        HAS_WEIGHT="weight" in grads, HAS_BIAS="bias" in grads, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=8 if block_c * block_s >= 2048 else 4,
    )
    return grads


@register_kernel(nn.LayerNorm, nn.RMSNorm)
def row_norm_grad_sample(module: nn.Module, inputs: LayerInput, grad_out: torch.Tensor,
                         trainable: Collection[str]) -> dict[str, torch.Tensor]:
    """The LayerNorm/RMSNorm rule's `grad_sample`, on Triton: the names in `trainable` only."""
    return row_norm_grads(module, inputs.first, grad_out, trainable=trainable)


@register_kernel(nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def channel_norm_grad_sample(module: nn.Module, inputs: LayerInput, grad_out: torch.Tensor,
                             trainable: Collection[str]) -> dict[str, torch.Tensor]:
    """The GroupNorm/InstanceNorm rule's `grad_sample`, on Triton: the names in `trainable` only."""
    return channel_norm_grads(module, inputs.first, grad_out, trainable=trainable)
