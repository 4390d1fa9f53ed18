"""`loop`: one forward and one `torch.autograd.grad` per sample, each in a batch of one.

This is the definition of a per-sample gradient made executable, so it supports every model and
serves as the reference (run in float64). It is also the slowest method by a factor of ~B.

    >>> import torch, persample
    >>> model = torch.nn.Linear(4, 3)
    >>> grads = persample.per_sample_grads(model, torch.randn(8, 4), torch.randint(3, (8,)), method="loop")
    >>> grads["weight"].shape
    torch.Size([8, 3, 4])
"""
from __future__ import annotations

import torch
from torch import nn

from ..contract import Batch, LossFn, as_tuple, check_loss_shape, trainable_parameters
from .registry import Capabilities, Method, Step, register


@register
class LoopMethod(Method):
    capabilities = Capabilities(
        name="loop",
        summary="one autograd.grad per sample, each in a batch of one (the reference)",
        reference=True,
    )

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> Step:
        params = trainable_parameters(model)
        names, tensors = list(params), list(params.values())

        def step(inputs, targets) -> dict[str, torch.Tensor]:
            inputs = as_tuple(inputs)
            batch = targets.shape[0]
            # Written row by row into the result: the output is held once (stacking a list would
            # hold it twice).
            out = [torch.zeros(batch, *p.shape, dtype=p.dtype, device=p.device) for p in tensors]
            for i in range(batch):
                loss = loss_fn(model(*(x[i : i + 1] for x in inputs)), targets[i : i + 1])
                check_loss_shape(loss, 1)
                grads = torch.autograd.grad(loss[0], tensors, allow_unused=True)
                for rows, grad in zip(out, grads):
                    if grad is not None:  # unused parameters keep their zero row
                        rows[i] = grad
            return dict(zip(names, out))

        return step
