"""The per-sample gradient function `jax.jit(jax.vmap(jax.grad(loss of one sample)))`, cached.

Cached by the translation's key (program, weight names, shapes and dtypes), so a second prepare
of the same structure reuses the jitted function; `jax.jit` itself keeps one compilation per
input shape, dtype, x64 mode and matmul precision. `trace_count()` counts JAX traces.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import jax

from ..errors import LossNotPerSample
from .program import Program
from .translation import Translation

CACHE_SIZE = 64
ROUND_LIKE_TORCH = {"xla_allow_excess_precision": False}
"""XLA options for every compile of the step. With excess precision allowed (XLA's default), XLA may
feed a consumer the float32 value of a bfloat16/float16 result instead of its rounding: in a
bfloat16 LSTM, tanh(c) read c before c was rounded, so 17 of 60 outputs differed from torch by an
ulp. torch rounds every op's result to its dtype, so the translation must too. The option is
per compilation (`jax.jit(compiler_options=...)`), not process-wide, and changes nothing in
float32/float64 programs (they hold no half-precision values to round)."""
QUICK_COMPILE = {**ROUND_LIKE_TORCH, "xla_backend_optimization_level": 0}
"""XLA options for `optimize=False`: about half the compile time, slower code (conv nets ~2x)."""
_COMPILED: OrderedDict[str, Callable] = OrderedDict()
_TRACES = [0]


def trace_count() -> int:
    """How many times JAX has traced a single-sample loss (each trace precedes a compile)."""
    return _TRACES[0]


def single_sample_loss(program: Program, trainable: dict, constants: dict, inputs: tuple, target):
    """The loss of one sample, run as a batch of one so shapes match the torch forward."""
    _TRACES[0] += 1
    losses = program.run({**constants, **trainable}, *(x[None] for x in inputs), target[None])
    if getattr(losses, "shape", None) != (1,):
        shape = getattr(losses, "shape", type(losses).__name__)
        raise LossNotPerSample(
            f"loss_fn must return one loss per sample; for a batch of one it returned {shape}, "
            "not (1,). Use reduction='none' and reduce the other dimensions inside the loss."
        )
    return losses[0]


def per_sample_gradients(translation: Translation, optimize: bool = True) -> Callable:
    """`f(trainable, constants, inputs, targets) -> (losses (B,), {name: (B, *shape)})`, jitted and
    cached. The losses come with the gradients (one pass) so that a step can see a non-finite one:
    JAX computes NaN where torch raises on an index out of range."""
    key = f"optimize={optimize}\n{translation.key()}"
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    grad = jax.value_and_grad(partial(single_sample_loss, translation.program))
    options = ROUND_LIKE_TORCH if optimize else QUICK_COMPILE
    compiled = jax.jit(jax.vmap(grad, in_axes=(None, None, 0, 0)), compiler_options=options)
    _COMPILED[key] = compiled
    while len(_COMPILED) > CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return compiled
