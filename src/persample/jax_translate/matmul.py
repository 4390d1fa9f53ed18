"""Matrix products in JAX: matmul and friends, einsum, F.linear / nn.Linear and attention.

Half-precision products accumulate in float32 (`preferred_element_type`) and round once, as
torch's GEMMs do (a linear layer's bias is added before that one rounding, as torch's addmm does);
float32 products follow the precision chosen by the caller's `jax.default_matmul_precision` scope
(on GPUs; XLA:CPU computes float32 products in float32 whatever the precision asks, see
docs/findings/jax-cpu-precision.md).
"""
from __future__ import annotations

import math
import operator
from functools import partial

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Unsupported
from .numerics import accumulator, widened
from .vocabulary import translates, translates_layer


@translates(torch.matmul, operator.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm")
def matmul(x, other):
    """torch.matmul / bmm / mm / the @ operator: half-precision operands accumulate in float32 and round once
    to their result dtype.
    """
    return jnp.matmul(x, other, preferred_element_type=accumulator(x, other)).astype(jnp.result_type(x, other))


@translates(torch.einsum)
def einsum(equation, *operands):
    """torch.einsum (operands given separately or as one list); half-precision operands accumulate in float32
    and round once.
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    result = jnp.einsum(equation, *operands, preferred_element_type=accumulator(*operands))
    return result.astype(jnp.result_type(*operands))


@translates(F.linear)
def linear(x, weight, bias=None):
    """torch's F.linear. With a bias torch calls addmm (2-d or contiguous input), which adds the
    bias to the float32 accumulator of a half-precision product and rounds once; so does this."""
    if bias is None:
        return matmul(x, weight.T)
    y = jnp.matmul(x, weight.T, preferred_element_type=accumulator(x, weight))
    return (y + bias).astype(jnp.result_type(x, weight, bias))


def apply_linear(weights, x):
    """An nn.Linear's forward on `weights` ({'weight', optional 'bias'}): x @ weight.T + bias, shape (*,
    out_features).
    """
    return linear(x, weights["weight"], weights.get("bias"))


@translates_layer(nn.Linear)
def linear_layer(module: nn.Linear):
    """The translation of an nn.Linear: `apply_linear`."""
    return partial(apply_linear)


@translates(F.scaled_dot_product_attention)
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention: softmax(q·kᵀ·scale + mask)·v with scale 1/√d by default (Vaswani et al.
    2017, eq. 1), causal and boolean or additive masks, grouped-query heads; shape (..., L, E_v). Raises
    `Unsupported` for dropout_p > 0.
    """
    if dropout_p > 0:
        raise Unsupported(
            "scaled_dot_product_attention with dropout_p > 0 draws random masks that cannot match "
            "torch's; pass dropout_p=0.0 outside training (e.g. dropout_p=self.p if self.training else 0.0) "
            "and put the model in eval mode", method="jax")
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = jnp.repeat(key, groups, axis=-3), jnp.repeat(value, groups, axis=-3)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = widened(matmul(query, jnp.swapaxes(key, -2, -1))) * scale
    if is_causal:
        causal = jnp.tril(jnp.ones((query.shape[-2], key.shape[-2]), dtype=bool))
        scores = jnp.where(causal, scores, -jnp.inf)
    if attn_mask is not None:
        scores = jnp.where(attn_mask, scores, -jnp.inf) if attn_mask.dtype == jnp.bool_ else scores + attn_mask
    weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    return matmul(weights, value)
