"""The gradient of a scalar with respect to parameters, as `.backward()` would accumulate it.

`torch.autograd.grad` is the clean way (it returns, it accumulates nothing), but some models only
support `.backward()`: activation checkpointing with `use_reentrant=True` raises "checkpoint is
incompatible with .grad()". There the gradient is taken with `.backward()` into fresh `.grad`
slots, and every parameter's own `.grad` is put back afterwards.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

REENTRANT_MARKER = "incompatible with .grad()"


def gradients(loss: torch.Tensor, params: Sequence[torch.Tensor], *, retain_graph: bool = False) -> list[torch.Tensor]:
    """∂loss/∂p for each p (zeros where loss does not depend on p), dense, in p's dtype."""
    try:
        grads = torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=retain_graph)
    except RuntimeError as error:
        if REENTRANT_MARKER not in str(error):
            raise
        grads = _by_backward(loss, params, retain_graph)
    return [_dense(g, p) for g, p in zip(grads, params)]


def _by_backward(loss: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool) -> list[torch.Tensor | None]:
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        loss.backward(retain_graph=retain_graph)
        return [p.grad for p in params]
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad


def _dense(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor:
    if grad is None:
        return torch.zeros_like(param)
    if grad.layout != torch.strided:  # Embedding(sparse=True) returns a sparse gradient
        grad = grad.to_dense()
    return grad
