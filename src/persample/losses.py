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


def _mean_over_labelled(losses: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per-row mean of `losses` (B, T) over the positions whose label is not `ignore_index`; 0 for a
    row with none (the count is floored at 1, so no 0/0)."""
    kept = (labels != ignore_index).to(losses.dtype)
    return (losses * kept).sum(1) / kept.sum(1).clamp_min(1)


def shifted_token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence, as a causal language model is trained: logits
    (B, T, V), labels (B, T) (the input ids, `ignore_index` on padding); position t's logits predict
    label t + 1 (logits[:, :-1] against labels[:, 1:]). Returns (B,): the mean over each sample's
    labelled positions, 0 for a sample with none."""
    logits, labels = outputs[:, :-1], targets[:, 1:]
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=ignore_index, reduction="none")
    return _mean_over_labelled(losses.view(labels.shape), labels, ignore_index)


def seq2seq_token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy of each target sequence of an encoder-decoder: decoder logits
    (B, T, V), labels (B, T) (`ignore_index` on padding), unshifted (the decoder's inputs are
    already the labels shifted right). Returns (B,): the mean over each sample's labelled positions,
    0 for a sample with none."""
    losses = F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="none")
    return _mean_over_labelled(losses.view(targets.shape), targets, ignore_index)
