"""persample: per-sample gradients, many ways, held to one definition.

    >>> import torch, persample
    >>> model = torch.nn.Linear(4, 3)
    >>> grads = persample.per_sample_grads(model, torch.randn(8, 4), torch.randint(3, (8,)))
    >>> sorted(grads), grads["weight"].shape
    (['bias', 'weight'], torch.Size([8, 3, 4]))
"""
from .api import per_sample_grad_norms, per_sample_grads
from .contract import default_loss
from .errors import LossNotPerSample, StaleStep, Unsupported
from .methods.registry import Capabilities, Method, available_methods, register
from .modelcheck import CheckReport, check

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "CheckReport",
    "LossNotPerSample",
    "StaleStep",
    "Method",
    "Unsupported",
    "available_methods",
    "check",
    "default_loss",
    "per_sample_grad_norms",
    "per_sample_grads",
    "register",
]
