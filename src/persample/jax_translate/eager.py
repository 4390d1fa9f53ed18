"""Evaluate a translation without differentiating it and return torch tensors.

For diagnosis: when a model's JAX gradients disagree with torch's, compare the translated
forward's values with the torch forward, module by module, in float64.

    >>> import torch
    >>> from persample.jax_translate.eager import evaluate
    >>> layer = torch.nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect").double()
    >>> x = torch.randn(4, 2, 5, dtype=torch.float64)
    >>> torch.allclose(evaluate(layer, x), layer(x))
    True
"""
from __future__ import annotations

from typing import Any

import jax
import torch
from torch import nn

from ..contract import LossFn
from .compiled import ROUND_LIKE_TORCH
from .step import needs_x64, to_jax
from .translation import translate


def to_torch_tree(value: Any) -> Any:
    """JAX arrays, also inside tuples, lists and named tuples, as torch tensors."""
    if hasattr(value, "shape") and not isinstance(value, torch.Tensor):
        return torch.from_dlpack(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(to_torch_tree(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_torch_tree(v) for v in value)
    return value


def evaluate(model: nn.Module, *inputs: torch.Tensor, loss_fn: LossFn | None = None,
             targets: torch.Tensor | None = None, compiled: bool = False) -> Any:
    """The translated `model(*inputs)`, or `loss_fn(model(*inputs), targets)` given a loss.

    `compiled=True` runs it under `jax.jit`: one compilation instead of one per operation, with
    the compiled step's options (half-precision results rounded wherever torch rounds them).
    Uncompiled, JAX compiles each operation, and each recurrent layer's scan body, with XLA's
    defaults, which may skip a half-precision rounding in a scan body (`compiled.ROUND_LIKE_TORCH`).
    """
    args = inputs + ((targets,) if loss_fn is not None else ())
    translation = translate(model, loss_fn, len(inputs))
    tensors = {**translation.trainable, **translation.constants}
    x64 = needs_x64([*tensors.values(), *args])
    with jax.enable_x64(x64):
        weights = {name: to_jax(t, x64) for name, t in tensors.items()}
        run = translation.program.run
        run = jax.jit(run, compiler_options=ROUND_LIKE_TORCH) if compiled else run
        return to_torch_tree(run(weights, *(to_jax(x, x64) for x in args)))
