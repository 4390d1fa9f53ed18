"""Losses in JAX with torch's semantics: cross-entropy (indices or probabilities, class weights,
ignore_index, label smoothing), NLL, MSE, L1 and BCE-with-logits, as functions and as modules.

Losses are computed in float32 for half-precision inputs and returned in the input's dtype.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import torch.nn.functional as F
from torch import nn
from torch.nn import _reduction

from .numerics import widened
from .vocabulary import translates, translates_layer


def reduction_of(size_average, reduce, reduction: str) -> str:
    """torch's legacy `size_average`/`reduce` flags win over `reduction` when given."""
    if size_average is not None or reduce is not None:
        return _reduction.legacy_get_string(size_average, reduce, emit_warning=False)
    return reduction


def reduced(losses, reduction: str, denominator=None):
    """`losses` reduced as torch's `reduction` says: 'none' as they are, 'sum', or 'mean' (the sum over
    `denominator`, default the number of elements).
    """
    if reduction == "none":
        return losses
    if reduction == "sum":
        return jnp.sum(losses)
    return jnp.sum(losses) / (losses.size if denominator is None else denominator)


def class_axis(x) -> int:
    """The class dim of logits `x`: 0 for one unbatched sample (C,), else 1 (N, C, ...)."""
    return 0 if x.ndim == 1 else 1


def negative_log_likelihood(logp, target, weight, ignore_index, reduction, label_smoothing):
    """torch's NLL of log-probabilities `logp` (N, C, ...) for class indices or class probabilities `target`,
    with class weights, ignore_index and label smoothing; reduced as `reduction` says (a weighted mean
    divides by the targets' total weight, as torch).
    """
    axis = class_axis(logp)
    classes = logp.shape[axis]
    class_weights = jnp.ones((classes,), logp.dtype) if weight is None else widened(weight)
    broadcast = class_weights.reshape((-1,) + (1,) * (logp.ndim - axis - 1))
    if jnp.issubdtype(target.dtype, jnp.floating):  # class probabilities
        target = widened(target) * (1 - label_smoothing) + label_smoothing / classes
        losses = -jnp.sum(target * logp * broadcast, axis=axis)
        return reduced(losses, reduction, losses.size)
    valid = target != ignore_index
    safe = jnp.where(valid, target, 0)
    # A class out of range (negative ones included: JAX would wrap them) gives NaN where torch
    # raises: the step reports the samples.
    outside = valid & ((target < 0) | (target >= classes))
    picked = jnp.take_along_axis(logp, jnp.expand_dims(safe, axis), axis=axis, mode="fill",
                                 fill_value=jnp.nan).squeeze(axis)
    picked = jnp.where(outside, jnp.nan, picked)
    target_weights = class_weights.at[safe].get(mode="fill", fill_value=jnp.nan) * valid
    losses = -picked * target_weights
    if label_smoothing > 0:
        smooth = -jnp.sum(logp * broadcast, axis=axis) * valid
        losses = (1 - label_smoothing) * losses + label_smoothing / classes * smooth
    return reduced(losses, reduction, jnp.sum(target_weights))


@translates(F.cross_entropy)
def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """F.cross_entropy: log_softmax over the class dim, then `negative_log_likelihood`; computed in at least
    float32, returned in the input's dtype.
    """
    logp = jax.nn.log_softmax(widened(input), axis=class_axis(input))
    losses = negative_log_likelihood(logp, target, weight, ignore_index,
                                     reduction_of(size_average, reduce, reduction), label_smoothing)
    return losses.astype(input.dtype)


@translates(F.nll_loss)
def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """F.nll_loss on log-probabilities; computed in at least float32, returned in the input's dtype."""
    losses = negative_log_likelihood(widened(input), target, weight, ignore_index,
                                     reduction_of(size_average, reduce, reduction), 0.0)
    return losses.astype(input.dtype)


def pointwise(distance):
    """A torch loss of the signature of F.mse_loss built from `distance` of (input - target), optionally
    weighted, then reduced; computed in at least float32, returned in the input's dtype.
    """
    def loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
        losses = distance(widened(input) - widened(target))
        losses = losses if weight is None else losses * widened(weight)
        return reduced(losses, reduction_of(size_average, reduce, reduction)).astype(input.dtype)
    loss.__qualname__ = loss.__name__ = f"pointwise_{distance.__name__}"
    loss.__doc__ = (f"The loss {distance.__name__}(input - target), optionally weighted, reduced as `reduction` "
                    "says; computed in at least float32, returned in the input's dtype.")
    return loss


mse_loss = translates(F.mse_loss)(pointwise(jnp.square))
l1_loss = translates(F.l1_loss)(pointwise(jnp.abs))


@translates(F.binary_cross_entropy_with_logits)
def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """F.binary_cross_entropy_with_logits: (1 - y)·x + w_pos·log(1 + exp(-x)), written to stay finite for large
    |x|, optionally weighted, then reduced; returned in the input's dtype.
    """
    x, y = widened(input), widened(target)
    log_weight = 1.0 if pos_weight is None else (widened(pos_weight) - 1) * y + 1
    # log(1 + exp(-x)) written to stay finite for large |x|
    losses = (1 - y) * x + log_weight * (jnp.log1p(jnp.exp(-jnp.abs(x))) + jnp.maximum(-x, 0))
    losses = losses if weight is None else losses * widened(weight)
    return reduced(losses, reduction_of(size_average, reduce, reduction)).astype(input.dtype)


def apply_loss(weights, input, target, *, loss, options):
    """A loss module's forward: `loss(input, target)` with the module's options and its weights (e.g. class
    `weight`).
    """
    return loss(input, target, **{**dict(options), **weights})


LOSS_MODULES = {
    nn.CrossEntropyLoss: (cross_entropy, ("ignore_index", "reduction", "label_smoothing")),
    nn.NLLLoss: (nll_loss, ("ignore_index", "reduction")),
    nn.MSELoss: (mse_loss, ("reduction",)),
    nn.L1Loss: (l1_loss, ("reduction",)),
    nn.BCEWithLogitsLoss: (binary_cross_entropy_with_logits, ("reduction",)),
}


@translates_layer(*LOSS_MODULES)
def loss_layer(module: nn.Module):
    """The translation of a loss module (CrossEntropyLoss, NLLLoss, MSELoss, L1Loss, BCEWithLogitsLoss): its
    function with the module's options bound.
    """
    loss, names = next(entry for kind, entry in LOSS_MODULES.items() if isinstance(module, kind))
    return partial(apply_loss, loss=loss, options=tuple((name, getattr(module, name)) for name in names))
