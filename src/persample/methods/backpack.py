"""`backpack`: BackPACK's BatchGrad extension, which fills `param.grad_batch` during backward.

BackPACK's hooks store each layer's input and output in the forward pass; inside
`with backpack(BatchGrad())` its backward hooks apply each layer's transposed parameter Jacobian to
the output gradient without summing over the batch, which is exactly the per-sample gradient.

    >>> import torch, persample, persample.methods.backpack
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> grads = persample.per_sample_grads(model, torch.randn(5, 4), torch.randint(3, (5,)), method="backpack")
    >>> grads["2.bias"].shape
    torch.Size([5, 3])
"""
from __future__ import annotations

from contextlib import AbstractContextManager

from torch import nn

from ..assumptions import LAYER_RULES
from ..capabilities import Capabilities, Finding, Refusal
from ..contract import trainable_owners
from .peer_support import Forward, PeerMethod

# The keys of BatchGrad's module map (backpack/extensions/firstorder/batch_grad/__init__.py,
# backpack-for-pytorch 1.7.1); BackPACK looks a module up by its exact class.
BATCH_GRAD_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.RNN, nn.LSTM, nn.Embedding,
)

NOTES = (
    "Backpropagates the summed per-sample losses, on which BatchGrad returns the unscaled per-sample "
    "gradients, so no conversion is needed (on a mean-reduced loss it returns gᵢ/B). BackPACK looks "
    "layers up by exact class and has per-layer restrictions (Embedding without padding_idx; "
    "RNN/LSTM single-layer, batch_first, unidirectional), refused up front. Only leaf modules are "
    "extended: extend() would also hook custom containers, on which BatchGrad warns every backward."
)


class BackpackMethod(PeerMethod):
    """No conversion: BatchGrad of the summed losses is unscaled (of a mean-reduced loss it is gᵢ/B),
    so the step backpropagates `losses.sum()`."""

    capabilities = Capabilities(
        name="backpack",
        summary="BackPACK: BatchGrad extension fills param.grad_batch in backward",
        layers=BATCH_GRAD_LAYERS,
        requires=(("backpack", "backpack-for-pytorch"),),
        refusals=(Refusal(LAYER_RULES.id, "layers outside BatchGrad's module map (exact classes), and those "
                          "BackPACK's own parameter checks refuse", lambda model, device, dtype: unextended_layer(model)),),
        peer=True,
        notes=NOTES,
    )
    savefield = "grad_batch"

    def wrap(self, clone: nn.Module) -> Forward:
        """The clone with BackPACK's `extend` applied to every leaf module; returns the clone as the forward."""
        from backpack import extend

        for module in clone.modules():
            if next(module.children(), None) is None:  # a leaf: BatchGrad needs only these hooked
                extend(module)
        return clone

    def backward_context(self) -> AbstractContextManager:
        """BackPACK's BatchGrad extension, active during the backward pass."""
        from backpack import backpack
        from backpack.extensions import BatchGrad

        return backpack(BatchGrad())


def unextended_layer(model: nn.Module) -> Finding | None:
    """The first trainable layer BackPACK's BatchGrad does not handle, by its exact class or its
    own parameter checks."""
    names = ", ".join(sorted(t.__name__ for t in BATCH_GRAD_LAYERS))
    for qualname, module in trainable_owners(model):
        if type(module) not in BATCH_GRAD_LAYERS:
            return Finding(f"has no BatchGrad extension; BackPACK keys on the exact class ({names})", qualname, module)
        refused = backpack_refusal(module)
        if refused:
            return Finding(f"is refused by BackPACK: {refused}", qualname, module)
    return None


def backpack_refusal(module: nn.Module) -> str | None:
    """BackPACK's own parameter check for this layer (its derivatives' `_check_parameters`), or None."""
    from backpack.core.derivatives.batchnorm_nd import BatchNormNdDerivatives
    from backpack.core.derivatives.embedding import EmbeddingDerivatives
    from backpack.core.derivatives.lstm import LSTMDerivatives
    from backpack.core.derivatives.rnn import RNNDerivatives

    checks = {
        nn.Embedding: EmbeddingDerivatives, nn.LSTM: LSTMDerivatives, nn.RNN: RNNDerivatives,
        nn.BatchNorm1d: BatchNormNdDerivatives, nn.BatchNorm2d: BatchNormNdDerivatives,
        nn.BatchNorm3d: BatchNormNdDerivatives,
    }
    derivatives = checks.get(type(module))
    if derivatives is None:
        return None
    try:
        derivatives()._check_parameters(module)
    except NotImplementedError as refused:
        return str(refused)
    return None
