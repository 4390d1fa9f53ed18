"""Recurrent layers in JAX: nn.LSTM, nn.GRU and nn.RNN as `lax.scan` over time.

Every layer and direction projects the whole sequence's inputs in one product, then scans the
recurrent cell (torch's gate order: LSTM i, f, g, o; GRU r, z, n). Layers stack, directions
concatenate, and the final states come back in torch's (layers x directions, N, H) order.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from torch import nn

from ..errors import Unsupported
from .matmul import matmul
from .vocabulary import translates_layer


def lstm_cell(carry, projected, w_hh, b_hh, w_hr):
    h, c = carry
    i, f, g, o = jnp.split(projected + matmul(h, w_hh.T) + b_hh, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    h = h if w_hr is None else matmul(h, w_hr.T)
    return (h, c), h


def gru_cell(carry, projected, w_hh, b_hh, w_hr):
    (h,) = carry
    x_r, x_z, x_n = jnp.split(projected, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(matmul(h, w_hh.T) + b_hh, 3, axis=-1)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1 - z) * n + z * h
    return (h,), h


def rnn_cell(carry, projected, w_hh, b_hh, w_hr, *, activation):
    (h,) = carry
    h = activation(projected + matmul(h, w_hh.T) + b_hh)
    return (h,), h


CELLS = {"LSTM": lstm_cell, "GRU": gru_cell, "RNN_TANH": partial(rnn_cell, activation=jnp.tanh),
         "RNN_RELU": partial(rnn_cell, activation=jax.nn.relu)}


def apply_recurrent(weights, x, hx=None, *, mode, num_layers, directions, batch_first, state_sizes):
    unbatched = x.ndim == 2
    x = x[:, None] if unbatched else (jnp.swapaxes(x, 0, 1) if batch_first else x)  # (L, N, F)
    batch = x.shape[1]
    initial = initial_states(hx, unbatched, num_layers * directions, batch, state_sizes, x.dtype)
    cell, finals = CELLS[mode], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"l{layer}" + ("_reverse" if direction else "")
            w = {name: weights.get(f"{name}_{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
            zero = jnp.zeros((), x.dtype)
            projected = matmul(x, w["weight_ih"].T) + (zero if w["bias_ih"] is None else w["bias_ih"])
            step = partial(cell, w_hh=w["weight_hh"], b_hh=zero if w["bias_hh"] is None else w["bias_hh"], w_hr=w["weight_hr"])
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
