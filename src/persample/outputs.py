"""Output buffers a prepared step keeps and writes into again (`PreparedStep.reuse_outputs`).

A step returning new per-sample-gradient tensors pays for fresh memory on every call: on a CPU
each new page faults on its first write, which can cost more than writing the bytes (see
docs/benchmarks.md, "The CPU floor"). A step that reuses its outputs writes each large result into
a buffer it kept from the previous call instead, so the tensors a call returns are overwritten by
the next call.

Which results: those the per-layer formulas write through `output_buffer` (the Linear rule's
outer products, `rules.linear.outer_products`), in the order they are requested within one call.
The k-th request of a call gets the k-th buffer when its shape, dtype and device match what that
buffer holds, else a new buffer replaces it (a change of shapes gets fresh memory). Anything else a
step returns (biases, normalisation parameters, a sum over tied layers) stays a new tensor.

    >>> import torch
    >>> buffers = OutputBuffers()
    >>> with writing_into(buffers):
    ...     first = output_buffer((2, 3), torch.zeros(1))
    >>> with writing_into(buffers):
    ...     again = output_buffer((2, 3), torch.zeros(1))
    >>> again.data_ptr() == first.data_ptr()
    True
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch


class OutputBuffers:
    """The buffers of one prepared step, handed out in request order within a call."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []
        self._next = 0

    def take(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """The next buffer of `shape` in `like`'s dtype and device (uninitialised when new)."""
        index, self._next = self._next, self._next + 1
        shape = tuple(shape)
        if index < len(self._buffers):
            kept = self._buffers[index]
            if tuple(kept.shape) == shape and kept.dtype == like.dtype and kept.device == like.device:
                return kept
            self._buffers[index] = like.new_empty(shape)
            return self._buffers[index]
        self._buffers.append(like.new_empty(shape))
        return self._buffers[index]

    def restart(self) -> None:
        """Begin a call: the next request gets the first buffer again."""
        self._next = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers)


_ACTIVE: ContextVar[OutputBuffers | None] = ContextVar("persample_output_buffers", default=None)


@contextmanager
def writing_into(buffers: OutputBuffers) -> Iterator[None]:
    """Within the block (one call of a step), `output_buffer` hands out `buffers`' buffers."""
    buffers.restart()
    token = _ACTIVE.set(buffers)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def output_buffer(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor | None:
    """A kept buffer to write a result of `shape` (in `like`'s dtype and device) into, inside a step
    that reuses its outputs; None elsewhere: the caller allocates as usual. Not for results that
    autograd will differentiate further (a buffer is overwritten by the next call)."""
    buffers = _ACTIVE.get()
    return None if buffers is None else buffers.take(shape, like)
