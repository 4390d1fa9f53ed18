"""Per-sample losses (shape (B,)) for the workload zoo; each reduces all but the batch dim."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of each sample: logits (B, C), class indices (B,)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence: logits (B, T, V), tokens (B, T)."""
    losses = F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none")
    return losses.view(targets.shape).mean(1)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample, averaged over its output dimensions."""
    return F.mse_loss(outputs, targets, reduction="none").flatten(1).mean(1)
