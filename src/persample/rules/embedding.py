"""Embedding. Indices: n batch, t tokens (all dims after batch), v vocabulary row, d features.

gW[n,v,:] = Σ_{t : idx[n,t] = v} g[n,t,:]   (a per-sample scatter-add; the padding row stays 0)
An embedding lookup is a Linear layer on one-hot rows, so this is Goodfellow's (2015) per-example
outer product with a one-hot input, summed over the sample's tokens.
"""
from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from ..layers import LayerInput
from .registry import LayerFlops, register_rule


@register_rule(nn.Embedding)
class EmbeddingRule:
    """y[n, t] = W[idx[n, t]]; the padding row gets no gradient."""

    params = ("weight",)

    @staticmethod
    def grad_sample(module: nn.Embedding, inputs: LayerInput, grad_out: torch.Tensor,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{"weight": (n, num_embeddings, embedding_dim)} when "weight" is in `trainable` (else {}):
        each token's output gradient scatter-added into its row of its sample's gradient."""
        if "weight" not in trainable:
            return {}
        idx = inputs.first
        n, (v, d) = idx.shape[0], module.weight.shape
        rows = (idx.reshape(n, -1) + torch.arange(n, device=idx.device).unsqueeze(1) * v).reshape(-1)
        grad = grad_out.new_zeros(n * v, d).index_add_(0, rows, grad_out.reshape(-1, d))
        grad = grad.view(n, v, d)
        if module.padding_idx is not None:
            grad[:, module.padding_idx] = 0
        return {"weight": grad}

    @staticmethod
    def grad_batch(module: nn.Embedding, inputs: LayerInput, grad_out: torch.Tensor,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`: {"weight": (num_embeddings, embedding_dim)}, one scatter-add of every
        token's output gradient into its row."""
        if "weight" not in trainable:
            return {}
        idx = inputs.first
        d = module.weight.shape[1]
        grad = grad_out.new_zeros(module.weight.shape).index_add_(0, idx.reshape(-1), grad_out.reshape(-1, d))
        if module.padding_idx is not None:
            grad[module.padding_idx] = 0
        return {"weight": grad}

    @staticmethod
    def expanded_forward(module: nn.Embedding, inputs: LayerInput, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output (n, *idx.shape[1:], d): sample n's tokens gathered from weights["weight"][n]
        (n, num_embeddings, d), the padding row held out of the gradient as nn.Embedding does."""
        idx = inputs.first
        weight = weights["weight"]
        if module.padding_idx is not None:
            # nn.Embedding never sends gradient to the padding row; mask it the same way.
            keep = torch.ones(weight.shape[1], 1, dtype=weight.dtype, device=weight.device)
            keep[module.padding_idx] = 0
            weight = weight * keep + (weight * (1 - keep)).detach()
        n = idx.shape[0]
        batch = torch.arange(n, device=idx.device).view(n, *([1] * (idx.dim() - 1)))
        return weight[batch, idx]

    @staticmethod
    def flops(module: nn.Embedding, inputs: LayerInput, output: torch.Tensor, trainable: Collection[str]) -> LayerFlops:
        """A gather forward and no input gradient (0, 0); a trainable weight's per-sample gradient
        adds one row of embedding_dim per token."""
        return LayerFlops(0, 0, inputs.first.numel() * module.embedding_dim * ("weight" in trainable))
