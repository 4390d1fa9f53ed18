"""Embedding. Indices: n batch, t tokens (all dims after batch), v vocabulary row, d features.

gW[n,v,:] = Σ_{t : idx[n,t] = v} g[n,t,:]   (a per-sample scatter-add; the padding row stays 0)
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_rule


@register_rule(nn.Embedding)
class EmbeddingRule:
    params = ("weight",)

    @staticmethod
    def grad_sample(module: nn.Embedding, idx: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        n, (v, d) = idx.shape[0], module.weight.shape
        rows = (idx.reshape(n, -1) + torch.arange(n, device=idx.device).unsqueeze(1) * v).reshape(-1)
        grad = grad_out.new_zeros(n * v, d).index_add_(0, rows, grad_out.reshape(-1, d))
        grad = grad.view(n, v, d)
        if module.padding_idx is not None:
            grad[:, module.padding_idx] = 0
        return {"weight": grad}

    @staticmethod
    def grad_batch(module: nn.Embedding, idx: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Σₙ gW[n]: one scatter-add of every token's output gradient into its row."""
        d = module.weight.shape[1]
        grad = grad_out.new_zeros(module.weight.shape).index_add_(0, idx.reshape(-1), grad_out.reshape(-1, d))
        if module.padding_idx is not None:
            grad[module.padding_idx] = 0
        return {"weight": grad}

    @staticmethod
    def expanded_forward(module: nn.Embedding, idx: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        weight = weights["weight"]
        if module.padding_idx is not None:
            # nn.Embedding never sends gradient to the padding row; mask it the same way.
            keep = torch.ones(weight.shape[1], 1, dtype=weight.dtype, device=weight.device)
            keep[module.padding_idx] = 0
            weight = weight * keep + (weight * (1 - keep)).detach()
        n = idx.shape[0]
        batch = torch.arange(n, device=idx.device).view(n, *([1] * (idx.dim() - 1)))
        return weight[batch, idx]
