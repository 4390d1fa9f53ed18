"""The gradient of a scalar with respect to parameters, as `.backward()` would accumulate it.

`torch.autograd.grad` is the clean way (it returns, it accumulates nothing), but some models only
support `.backward()`: activation checkpointing with `use_reentrant=True` raises "checkpoint is
incompatible with .grad()". There the gradient is taken with `.backward()` into fresh `.grad`
slots, and every parameter's own `.grad` is put back afterwards.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

REENTRANT_NODE = "CheckpointFunctionBackward"  # torch.utils.checkpoint's node with use_reentrant=True


def gradients(loss: torch.Tensor, params: Sequence[torch.Tensor], *, retain_graph: bool = False,
              dense: bool = True) -> list[torch.Tensor | None]:
    """∂loss/∂p for each p, dense, in p's dtype: zeros where loss does not depend on p (None with
    `dense=False`)."""
    if needs_backward(loss):
        grads = _by_backward(loss, params, retain_graph)
    else:
        grads = torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=retain_graph)
    return [_dense(g, p) if dense or g is not None else None for g, p in zip(grads, params)]


def needs_backward(loss: torch.Tensor) -> bool:
    """Whether the graph holds reentrant activation checkpointing, which `torch.autograd.grad`
    refuses (found before differentiating: a refused attempt would already have freed the graph)."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == REENTRANT_NODE:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


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
