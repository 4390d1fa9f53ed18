"""`vmap`: torch.func's vmap over grad of the single-sample loss of a functional call.

Write the loss of one sample as a function of the parameters, differentiate it with `grad`, and
let `vmap` batch that over the samples; `chunk_size` bounds memory by batching chunks at a time.

    >>> import torch, persample
    >>> from persample.methods.vmap import VmapMethod
    >>> model = torch.nn.Linear(4, 3)
    >>> grads = persample.per_sample_grads(model, torch.randn(8, 4), torch.randint(3, (8,)), method=VmapMethod(chunk_size=4))
    >>> grads["bias"].shape
    torch.Size([8, 3])
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..contract import Batch, LossFn, as_tuple, trainable_parameters
from ..errors import Unsupported
from .registry import Capabilities, Method, Step, register

# torch.func has no batching rule for the fused RNN kernels; its generic fallback works only for
# the oneDNN float32 CPU kernel (float64 and bfloat16 fail with a broadcast error, CUDA's cuDNN
# RNN is not batched either). Measured with torch 2.13.
RNN_SUPPORTED = frozenset({("cpu", torch.float32)})


@register
class VmapMethod(Method):
    capabilities = Capabilities(
        name="vmap",
        summary="torch.func: vmap(grad(loss of one sample)) over a functional call",
    )

    def __init__(self, chunk_size: int | None = None) -> None:
        self.chunk_size = chunk_size

    def problem(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> Unsupported | None:
        rnn = next((m for m in model.modules() if isinstance(m, nn.RNNBase)), None)
        if rnn is not None and (device.type, dtype) not in RNN_SUPPORTED:
            kind = type(rnn).__name__
            return Unsupported(
                f"torch.func has no vmap batching rule for {kind}; its fallback only works for "
                f"float32 on the CPU, not {str(dtype).removeprefix('torch.')} on {device.type}",
                method=self.name,
                layer=kind,
            )
        return super().problem(model, device, dtype)

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> Step:
        trainable = trainable_parameters(model)
        names = list(trainable)
        fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        fixed.update(dict(model.named_buffers()))

        def sample_loss(params: dict[str, torch.Tensor], inputs: tuple, target: torch.Tensor):
            batch_of_one = tuple(x.unsqueeze(0) for x in inputs)
            outputs = functional_call(model, (params, fixed), batch_of_one)
            return loss_fn(outputs, target.unsqueeze(0))[0]

        per_sample = vmap(
            grad(sample_loss), in_dims=(None, 0, 0), chunk_size=self.chunk_size, randomness="different"
        )

        def step(inputs, targets) -> dict[str, torch.Tensor]:
            params = {n: trainable[n].detach() for n in names}
            return per_sample(params, as_tuple(inputs), targets)

        return step
