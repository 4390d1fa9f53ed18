"""The simple layers in JAX: Embedding, activation modules, Softmax, Flatten, Dropout, Identity.

An activation module is its function with the module's settings bound. Embedding rows selected by
`padding_idx` get no gradient, as in torch; dropout is translated only where it is the identity.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import torch.nn.functional as F
from torch import nn

from ..errors import Unsupported
from . import elementwise, reductions, tensors
from .vocabulary import translates, translates_layer


@translates(F.embedding)
def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False):
    """F.embedding: the rows of `weight` indexed by `input`, shape (*input.shape, embedding_dim); a
    `padding_idx` row passes no gradient, an index out of range gives NaN (torch raises). Raises
    `Unsupported` for max_norm or scale_grad_by_freq.
    """
    if max_norm is not None or scale_grad_by_freq:
        raise Unsupported(
            "embedding with max_norm (renormalises the weight in place) or scale_grad_by_freq "
            "(couples the samples) has no per-sample translation; pass max_norm=None and "
            "scale_grad_by_freq=False", method="jax", layer="embedding")
    # An index out of range (negative ones included: JAX would wrap them) gives NaN where torch
    # raises IndexError; the step then reports the samples.
    outside = (input < 0) | (input >= weight.shape[0])
    rows = jnp.where(outside[..., None], jnp.nan, weight.at[input].get(mode="fill", fill_value=jnp.nan))
    if padding_idx is None:
        return rows
    padding = input == padding_idx % weight.shape[0]
    return jnp.where(padding[..., None], jax.lax.stop_gradient(rows), rows)


def apply_embedding(weights, input, *, padding_idx):
    """An nn.Embedding's forward on `weights` ({'weight'}): see `embedding`."""
    return embedding(input, weights["weight"], padding_idx)


@translates_layer(nn.Embedding)
def embedding_layer(module: nn.Embedding):
    """The translation of an nn.Embedding (its padding_idx bound); raises `Unsupported` for max_norm or
    scale_grad_by_freq.
    """
    if module.max_norm is not None or module.scale_grad_by_freq:
        embedding(None, None, max_norm=module.max_norm, scale_grad_by_freq=module.scale_grad_by_freq)
    return partial(apply_embedding, padding_idx=module.padding_idx)


@translates(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
def dropout(x, p=0.5, training=True, inplace=False):
    """F.dropout and its variants, translated only where they are the identity: returns x; raises `Unsupported`
    in training mode with p > 0 (torch's random masks cannot be matched).
    """
    if training and p > 0:
        raise Unsupported(
            f"dropout with p={p} in training mode draws random masks that cannot match torch's; "
            "put the model in eval mode (model.eval()) or use p=0", method="jax", layer="Dropout")
    return x


def apply_function(weights, x, *, function, options):
    """An activation module's forward: `function(x, **options)`; `weights` is unused."""
    return function(x, **dict(options))


ACTIVATIONS = {
    nn.ReLU: (elementwise.relu, ()),
    nn.GELU: (elementwise.gelu, ("approximate",)),
    nn.Tanh: (elementwise.tanh, ()),
    nn.SiLU: (elementwise.silu, ()),
    nn.Sigmoid: (elementwise.sigmoid, ()),
    nn.Softmax: (reductions.softmax, ("dim",)),
    nn.LogSoftmax: (reductions.log_softmax, ("dim",)),
    nn.LeakyReLU: (elementwise.leaky_relu, ("negative_slope",)),
    nn.ELU: (elementwise.elu, ("alpha",)),
    nn.Softplus: (elementwise.softplus, ("beta", "threshold")),
    nn.Flatten: (tensors.flatten, ("start_dim", "end_dim")),
    nn.Unflatten: (tensors.unflatten, ("dim", "unflattened_size")),
}


def hashable(value):
    """`value` with a list made a tuple, so it can be bound into a cached translation."""
    return tuple(value) if isinstance(value, list) else value


@translates_layer(*ACTIVATIONS)
def function_layer(module: nn.Module):
    """The translation of an activation, Softmax, Flatten or Unflatten module: its function with the module's
    settings bound.
    """
    function, names = next(entry for kind, entry in ACTIVATIONS.items() if isinstance(module, kind))
    sizes = {"unflattened_size": "sizes"}
    options = tuple((sizes.get(name, name), hashable(getattr(module, name))) for name in names)
    return partial(apply_function, function=function, options=options)


def apply_identity(weights, x, *args, **kwargs):
    """Returns x unchanged (nn.Identity, dropout in eval mode)."""
    return x


@translates_layer(nn.Identity)
def identity_layer(module: nn.Identity):
    """The translation of an nn.Identity: `apply_identity`."""
    return partial(apply_identity)


@translates_layer(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
def dropout_layer(module: nn.modules.dropout._DropoutNd):
    """The translation of a dropout module: the identity; raises `Unsupported` while translating a module in
    training mode with p > 0.
    """
    dropout(None, module.p, module.training)  # refuses while translating, not at compile time
    return partial(apply_identity)
