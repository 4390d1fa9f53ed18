"""Recurrent layers in JAX: nn.LSTM, nn.GRU and nn.RNN as `lax.scan` over time.

Every layer and direction projects the whole sequence's inputs in one product, then scans the
recurrent cell (torch's gate order: LSTM i, f, g, o; GRU r, z, n). Layers stack, directions
concatenate, and the final states come back in torch's (layers x directions, N, H) order.

In half precision the cells round where torch's CPU cells (aten/src/ATen/native/RNN.cpp) round:
once per torch op, each op computed in float32. So the recurrent product and its bias are one
rounding (addmm), the input projection is added after it, and sigmoid/tanh are evaluated in
float32 and rounded once (`jax.nn.sigmoid` on bfloat16 would round after each of its neg, exp,
add and divide: up to 4 roundings per gate). torch's oneDNN RNN kernel, which torch picks for
bfloat16 on CPUs with AVX-512 (`ideep::has_bf16_type_support`), rounds differently again (float32
gates, rounded states); the translation follows the ATen cells, the same on every CPU.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from torch import nn

from ..errors import Unsupported
from .elementwise import sigmoid, tanh
from .matmul import linear, matmul
from .vocabulary import translates_layer


def recurrent_gates(h, projected, w_hh, b_hh):
    """torch's `linear_hh(h).add_(projected)`: the recurrent product with its bias, then the input."""
    return linear(h, w_hh, b_hh) + projected


def lstm_cell(carry, projected, w_hh, b_hh, w_hr):
    """One LSTM step (Hochreiter & Schmidhuber 1997; torch's gate order i, f, g, o): c' = σ(f)·c +
    σ(i)·tanh(g), h' = σ(o)·tanh(c'), projected by `w_hr` when given; returns ((h', c'), h').
    """
    h, c = carry
    i, f, g, o = jnp.split(recurrent_gates(h, projected, w_hh, b_hh), 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h = sigmoid(o) * tanh(c)
    h = h if w_hr is None else matmul(h, w_hr.T)
    return (h, c), h


def gru_cell(carry, projected, w_hh, b_hh, w_hr):
    """One GRU step (Cho et al. 2014, as torch: r, z, n): n = tanh(x_n + r·(W_hn h + b_hn)), h' = (1 - z)·n +
    z·h; returns ((h',), h').
    """
    (h,) = carry
    x_r, x_z, x_n = jnp.split(projected, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(linear(h, w_hh, b_hh), 3, axis=-1)
    r, z = sigmoid(h_r + x_r), sigmoid(h_z + x_z)
    n = tanh(x_n + h_n * r)
    h = (h - n) * z + n  # torch's order of the same update, (1 - z) * n + z * h
    return (h,), h


def rnn_cell(carry, projected, w_hh, b_hh, w_hr, *, activation):
    """One Elman RNN step: h' = activation(W_hh h + b_hh + projected input); returns ((h',), h')."""
    (h,) = carry
    h = activation(recurrent_gates(h, projected, w_hh, b_hh))
    return (h,), h


CELLS = {"LSTM": lstm_cell, "GRU": gru_cell, "RNN_TANH": partial(rnn_cell, activation=tanh),
         "RNN_RELU": partial(rnn_cell, activation=jax.nn.relu)}


def input_projection(x, w_ih, b_ih, *, transposed):
    """torch's `linear_ih` of the whole (L, N, F) sequence. at::linear adds the bias inside addmm
    (one rounding) for contiguous input, but after the product (two roundings) for the transposed
    view that a batch_first (N, L, F) input becomes."""
    if transposed and b_ih is not None:
        return matmul(x, w_ih.T) + b_ih
    return linear(x, w_ih, b_ih)


def apply_recurrent(weights, x, hx=None, *, mode, num_layers, directions, batch_first, state_sizes):
    """An nn.LSTM/GRU/RNN's forward on `weights` (torch's names, e.g. weight_ih_l0_reverse): returns (output
    (N, L, D·H) or (L, N, D·H) as batch_first says, h_n (layers·D, N, H), with c_n for an LSTM as (h_n,
    c_n)); an unbatched (L, F) input gives unbatched results.
    """
    unbatched = x.ndim == 2
    x = x[:, None] if unbatched else (jnp.swapaxes(x, 0, 1) if batch_first else x)  # (L, N, F)
    batch = x.shape[1]
    transposed = batch_first and not unbatched and x.shape[0] > 1 and batch > 1  # torch's view is not contiguous
    initial = initial_states(hx, unbatched, num_layers * directions, batch, state_sizes, x.dtype)
    cell, finals = CELLS[mode], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"l{layer}" + ("_reverse" if direction else "")
            w = {name: weights.get(f"{name}_{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
            projected = input_projection(x, w["weight_ih"], w["bias_ih"], transposed=layer == 0 and transposed)
            step = partial(cell, w_hh=w["weight_hh"], b_hh=w["bias_hh"], w_hr=w["weight_hr"])
            carry = tuple(state[layer * directions + direction] for state in initial)
            final, ys = jax.lax.scan(step, carry, projected, reverse=bool(direction))
            outputs.append(ys)
            finals.append(final)
        x = outputs[0] if directions == 1 else jnp.concatenate(outputs, axis=-1)
    states = tuple(jnp.stack([f[i] for f in finals]) for i in range(len(state_sizes)))
    if unbatched:
        x, states = x[:, 0], tuple(s[:, 0] for s in states)
    elif batch_first:
        x = jnp.swapaxes(x, 0, 1)
    return x, (states if mode == "LSTM" else states[0])


def initial_states(hx, unbatched, count, batch, state_sizes, dtype):
    """The given (h0[, c0]) as a tuple of (layers x directions, N, size), zeros when absent."""
    if hx is None:
        return tuple(jnp.zeros((count, batch, size), dtype) for size in state_sizes)
    given = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
    return tuple(s[:, None] if unbatched else s for s in given)


@translates_layer(nn.LSTM, nn.GRU, nn.RNN)
def recurrent_layer(module: nn.RNNBase):
    """The translation of an nn.LSTM, nn.GRU or nn.RNN: `apply_recurrent` with its mode, layers, directions and
    state sizes bound. Raises `Unsupported` for dropout between layers in training mode.
    """
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise Unsupported(
            f"{type(module).__name__} with dropout={module.dropout} between layers in training mode "
            "draws random masks that cannot match torch's; use eval mode or dropout=0",
            method="jax", layer=type(module).__name__)
    output_size = module.proj_size or module.hidden_size
    state_sizes = (output_size, module.hidden_size) if module.mode == "LSTM" else (module.hidden_size,)
    return partial(apply_recurrent, mode=module.mode, num_layers=module.num_layers,
                   directions=2 if module.bidirectional else 1, batch_first=module.batch_first,
                   state_sizes=state_sizes)
