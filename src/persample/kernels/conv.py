"""Conv1d/2d/3d, any stride, padding (numbers, "same", "valid", any mode), dilation and groups.

Indices: n batch, g group, o output channels per group, c input channels per group, k kernel
offsets (kd, kh, kw flattened), l output positions (od, oh, ow flattened). 1-d and 2-d convolutions
are 3-d ones with unit leading dims.
gW[n,g,o,(c,k)] = Σ_l g[n,g,o,l] · x[n,g,c, l·stride − pad + k·dilation];   gb[n,o] = Σ_l g[n,o,l]

Implicit im2col: grid n × groups × o-blocks × ck-blocks (flat); a program gathers its BLOCK_L × BLOCK_CK
window of the input straight from x (out-of-range positions read as the zero padding), multiplies
it with the BLOCK_O × BLOCK_L tile of g in float32 and writes its gW tile once. The unfolded
input never exists in memory. Padding modes other than zeros pad x first (one copy of x).
x and g may differ in dtype (autocast): `mma` casts both tiles in registers to their common dtype.
"""
from __future__ import annotations

from collections.abc import Collection

import torch
import triton
import triton.language as tl
from torch import nn

from ..layers import LayerInput, padding_amounts
from ..rules.conv import padded
from .registry import register_kernel
from .tuning import autotuned, check_device, config, dot_operands, mma, trainable_outputs

GPU_CONFIGS = [  # none spills registers in an sm_90 build, for any feed (python -m persample.kernels.aot)
    config(BLOCK_O=64, BLOCK_CK=64, BLOCK_L=32, num_warps=8, num_stages=2),
    config(BLOCK_O=64, BLOCK_CK=64, BLOCK_L=64, num_warps=8, num_stages=3),
    config(BLOCK_O=128, BLOCK_CK=64, BLOCK_L=32, num_warps=8, num_stages=3),
    config(BLOCK_O=32, BLOCK_CK=128, BLOCK_L=32, num_warps=8, num_stages=2),
    config(BLOCK_O=16, BLOCK_CK=32, BLOCK_L=64, num_warps=4, num_stages=2),
]


@autotuned(GPU_CONFIGS, config(BLOCK_O=16, BLOCK_CK=32, BLOCK_L=32), key=["O_GROUP", "CK", "L"])
@triton.jit
def _conv_grads_kernel(
    x_ptr, g_ptr, gw_ptr, gb_ptr,
    C_GROUP, O_GROUP, CK, L, GROUPS,
    D, H, W, OH, OW, KH, KW,
    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    K: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    OPERANDS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_CK: tl.constexpr, BLOCK_L: tl.constexpr,
):
    blocks_ck = tl.cdiv(CK, BLOCK_CK) if HAS_WEIGHT else 1
    blocks = tl.cdiv(O_GROUP, BLOCK_O) * blocks_ck
    sample_group, block = tl.program_id(0) // blocks, tl.program_id(0) % blocks
    n, group = sample_group // GROUPS, sample_group % GROUPS
    block_o, block_ck = block // blocks_ck, block % blocks_ck
    o = block_o * BLOCK_O + tl.arange(0, BLOCK_O)
    ck = block_ck * BLOCK_CK + tl.arange(0, BLOCK_CK)
    c, k = ck // K, ck % K
    kd, kh, kw = k // (KH * KW), (k // KW) % KH, k % KW
    out_channels = O_GROUP * GROUPS
    g_rows = g_ptr + (n.to(tl.int64) * out_channels + group * O_GROUP + o[:, None]) * L
    x_group = x_ptr + (n.to(tl.int64) * C_GROUP * GROUPS + group * C_GROUP) * D * H * W
    # the address of x[c, od·s − p + kd·dil, ...] splits into a part per position and one per (c, k)
    x_shift = c * D * H * W + (kd * dil_d * H + kh * dil_h) * W + kw * dil_w
    weight = tl.zeros((BLOCK_O, BLOCK_CK), dtype=tl.float32)
    bias = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)
        g = tl.load(g_rows + l[None, :], mask=(o[:, None] < O_GROUP) & (l[None, :] < L), other=0.0)
        if HAS_WEIGHT:
            corner_d = (l // (OH * OW)) * stride_d - pad_d
            corner_h = ((l // OW) % OH) * stride_h - pad_h
            corner_w = (l % OW) * stride_w - pad_w
            id = corner_d[:, None] + kd[None, :] * dil_d
            ih = corner_h[:, None] + kh[None, :] * dil_h
            iw = corner_w[:, None] + kw[None, :] * dil_w
            inside = (id >= 0) & (id < D) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            live = inside & (l[:, None] < L) & (ck[None, :] < CK)
            corner = (corner_d * H + corner_h) * W + corner_w
            cols = tl.load(x_group + corner[:, None] + x_shift[None, :], mask=live, other=0.0)
            weight = mma(g, cols, weight, OPERANDS, PRECISION)
        if HAS_BIAS:
            bias += tl.sum(g.to(tl.float32), axis=1)
    rows = n.to(tl.int64) * out_channels + group * O_GROUP + o
    if HAS_WEIGHT:
        out = gw_ptr + rows[:, None] * CK + ck[None, :]
        tl.store(out, weight.to(gw_ptr.dtype.element_ty), mask=(o[:, None] < O_GROUP) & (ck[None, :] < CK))
    if HAS_BIAS:
        if block_ck == 0:
            tl.store(gb_ptr + rows, bias.to(gb_ptr.dtype.element_ty), mask=o < O_GROUP)


def _left_padding(module: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    """Zeros the kernel reads before each spatial dim (`persample.layers.padding_amounts`); none for
    other padding modes, whose input is padded explicitly first. The amounts after each dim need
    no argument: positions past the input read as zeros."""
    if module.padding_mode != "zeros":
        return (0,) * len(module.kernel_size)
    return tuple(before for before, _ in padding_amounts(module))


def _as_3d(values: tuple[int, ...], fill: int) -> tuple[int, int, int]:
    return (fill,) * (3 - len(values)) + tuple(values)


def conv_grads(
    module: nn.modules.conv._ConvNd,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    out: dict[str, torch.Tensor] | None = None,
    trainable: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample gW (n, *weight.shape) and gb (n, out_channels) of a convolution module, for the
    names in `trainable` (None: the parameters with requires_grad), into `out`'s buffers when given."""
    check_device(x, grad_out)
    dot, n = dot_operands("conv", x.dtype, grad_out.dtype), x.shape[0]
    grads = trainable_outputs(module, x, n, out, trainable)
    if n == 0 or not grads:
        return grads
    if module.padding_mode != "zeros":  # reflect/replicate/circular: pad explicitly, then pad 0
        x = padded(module, x)
    x, grad_out = x.contiguous(), grad_out.contiguous()
    groups, out_channels, c_group = module.groups, module.out_channels, module.in_channels // module.groups
    kernel = _as_3d(module.kernel_size, 1)
    ck, positions = c_group * kernel[0] * kernel[1] * kernel[2], grad_out[0, 0].numel()
    has_weight = "weight" in grads

    def grid(meta):
        blocks_ck = triton.cdiv(ck, meta["BLOCK_CK"]) if has_weight else 1
        return (n * groups * triton.cdiv(out_channels // groups, meta["BLOCK_O"]) * blocks_ck,)

    _conv_grads_kernel[grid](
        x, grad_out, grads.get("weight", x), grads.get("bias", x),
        c_group, out_channels // groups, ck, positions, groups,
        *_as_3d(x.shape[2:], 1), *_as_3d(grad_out.shape[2:], 1)[1:], *kernel[1:],
        *_as_3d(module.stride, 1), *_as_3d(_left_padding(module), 0), *_as_3d(module.dilation, 1),
        K=kernel[0] * kernel[1] * kernel[2], HAS_WEIGHT=has_weight, HAS_BIAS="bias" in grads, **dot,
    )
    return grads


@register_kernel(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_grad_sample(module: nn.modules.conv._ConvNd, inputs: LayerInput, grad_out: torch.Tensor,
                     trainable: Collection[str]) -> dict[str, torch.Tensor]:
    """The ConvNd rule's `grad_sample`, on Triton: the names in `trainable` only."""
    return conv_grads(module, inputs.first, grad_out, trainable=trainable)
