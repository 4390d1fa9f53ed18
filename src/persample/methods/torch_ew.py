"""`torch-ew`: torch's ExpandedWeights (`torch.nn.utils._per_sample_grad.call_for_per_sample_grads`).

Each trainable parameter is passed to a functional call as an `ExpandedWeight`, a tensor subclass
whose `__torch_function__` routes F.linear, F.conv*, F.embedding and the norms to autograd
functions that write per-sample gradients into `param.grad_sample` during backward.

    >>> import torch, persample, persample.methods.torch_ew
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> grads = persample.per_sample_grads(model, torch.randn(5, 4), torch.randint(3, (5,)), method="torch-ew")
    >>> grads["2.weight"].shape
    torch.Size([5, 3, 8])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .peer_support import Forward, PeerMethod
from ..capabilities import Capabilities

# The function each layer's forward calls; a layer is supported where ExpandedWeights handles all
# of its functions (`HANDLED_FUNCTIONS`, plus the RNN ops it decomposes into F.linear).
FUNCTIONS_OF_LAYER: dict[type[nn.Module], tuple] = {
    nn.Linear: (F.linear,), nn.Bilinear: (F.bilinear,),
    nn.Conv1d: (F.conv1d,), nn.Conv2d: (F.conv2d,), nn.Conv3d: (F.conv3d,),
    nn.ConvTranspose1d: (F.conv_transpose1d,), nn.ConvTranspose2d: (F.conv_transpose2d,),
    nn.ConvTranspose3d: (F.conv_transpose3d,),
    nn.Embedding: (F.embedding,), nn.EmbeddingBag: (F.embedding_bag,),
    nn.LayerNorm: (F.layer_norm,), nn.GroupNorm: (F.group_norm,), nn.RMSNorm: (F.rms_norm,),
    nn.InstanceNorm1d: (F.instance_norm,), nn.InstanceNorm2d: (F.instance_norm,),
    nn.InstanceNorm3d: (F.instance_norm,),
    nn.BatchNorm1d: (F.batch_norm,), nn.BatchNorm2d: (F.batch_norm,), nn.BatchNorm3d: (F.batch_norm,),
    nn.PReLU: (F.prelu,),
    nn.RNN: (torch.rnn_tanh, torch.rnn_relu), nn.LSTM: (torch.lstm,), nn.GRU: (torch.gru,),
}

NOTES = (
    "Run with loss_reduction='sum' on the summed per-sample losses, so grad_sample is the unscaled "
    "per-sample gradient and needs no conversion (with 'mean' torch multiplies grad_sample by the "
    "batch size to undo the 1/B of a mean-reduced loss). Dispatch is by function, so subclasses of "
    "supported layers work if they call the same functional. Its docstring says nn.RNN/LSTM/GRU do "
    "not work, but torch 2.x decomposes them into F.linear, so they are listed when that holds."
)


def expanded_weight_layers() -> tuple[type[nn.Module], ...]:
    """Layer types whose every functional ExpandedWeights handles in this torch."""
    from torch.nn.utils._expanded_weights.expanded_weights_impl import (
        HANDLED_FUNCTIONS,
        expanded_weights_rnn_decomps,
    )

    handled = set(HANDLED_FUNCTIONS) | set(expanded_weights_rnn_decomps)
    return tuple(layer for layer, functions in FUNCTIONS_OF_LAYER.items() if handled.issuperset(functions))


def expanded_weights_forward(module: nn.Module) -> Forward:
    """`module`'s forward through `call_for_per_sample_grads`, sized by the first input."""
    from torch.nn.utils._per_sample_grad import call_for_per_sample_grads

    def forward(*args, **kwargs) -> torch.Tensor:
        from ..batch import CallArgs

        batch = CallArgs(args, kwargs).batch_size
        return call_for_per_sample_grads(module, batch_size=batch, loss_reduction="sum")(*args, **kwargs)

    return forward


class TorchExpandedWeightsMethod(PeerMethod):
    """No conversion: with loss_reduction="sum" and the summed losses, grad_sample is unscaled
    (torch's "mean" would multiply it by B to undo a mean-reduced loss's 1/B)."""

    capabilities = Capabilities(
        name="torch-ew",
        summary="torch's ExpandedWeights: call_for_per_sample_grads fills param.grad_sample",
        layers=expanded_weight_layers(),
        peer=True,
        notes=NOTES,
    )

    def wrap(self, clone: nn.Module) -> Forward:
        """The clone's forward through torch's ExpandedWeights (call_for_per_sample_grads)."""
        return expanded_weights_forward(clone)
