"""`loop`: one forward and one `torch.autograd.grad` per sample, each in a batch of one.

This is the definition of a per-sample gradient made executable, so it supports every model and
serves as the reference (run in float64). It is also the slowest method by a factor of ~B. Each
sample's forward starts from the buffers as found (a forward that updates them, such as a
counter or running statistics, sees the same state for every sample), and each gradient is what
`.backward()` would accumulate (dense, also for `Embedding(sparse=True)`; through `.backward()`
itself where `torch.autograd.grad` is refused, as reentrant activation checkpointing does).

    >>> import torch, persample
    >>> model = torch.nn.Linear(4, 3)
    >>> grads = persample.per_sample_grads(model, torch.randn(8, 4), torch.randint(3, (8,)), method="loop")
    >>> grads["weight"].shape
    torch.Size([8, 3, 4])
"""
from __future__ import annotations

import torch
from torch import nn

from ..batch import CallArgs
from ..checks.loss import check_loss_shape
from ..contract import Batch, LossFn, trainable_parameters
from ..gradients import gradients
from ..state import BufferSnapshot
from ..capabilities import Capabilities
from .base import Method


class LoopMethod(Method):
    """`loop`: one forward and one autograd.grad per sample, each in a batch of one: the definition made
    executable, and (in float64) the reference every method is held to.
    """

    capabilities = Capabilities(
        name="loop",
        summary="one autograd.grad per sample, each in a batch of one (the reference)",
        reference=True,
    )
    takes_call_args = True

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        params = trainable_parameters(model)
        names, tensors = list(params), list(params.values())

        def step(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            batch = targets.shape[0]
            # Written row by row into the result: the output is held once (stacking a list would
            # hold it twice).
            out = [torch.zeros(batch, *p.shape, dtype=p.dtype, device=p.device) for p in tensors]
            found = BufferSnapshot(model)
            for i in range(batch):
                with torch.enable_grad():
                    loss = loss_fn(call.select(i).call(model), targets[i : i + 1])
                    check_loss_shape(loss, 1)
                    grads = gradients(loss[0], tensors)
                found.restore()
                for rows, grad in zip(out, grads):
                    rows[i] = grad
            return dict(zip(names, out))

        return step
