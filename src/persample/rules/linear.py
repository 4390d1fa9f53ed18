"""Linear. Indices: n batch, t tokens (all dims between batch and features), i in, o out.

gW[n,o,i] = Σ_t g[n,t,o] x[n,t,i];  gb[n,o] = Σ_t g[n,t,o]       (Goodfellow 2015, eq. 2)
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_rule


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """View (n, *leading, f) as (n, t, f)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


@register_rule(nn.Linear)
class LinearRule:
    @staticmethod
    def grad_sample(module: nn.Linear, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        x, g = _tokens(x), _tokens(grad_out)
        # gW[n] = g[n]ᵀ x[n], one batched matrix product over the samples
        grads = {"weight": torch.bmm(g.transpose(1, 2), x)}
        if module.bias is not None:
            grads["bias"] = g.sum(1)
        return grads

    @staticmethod
    def grad_batch(module: nn.Linear, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Σₙ gW[n] = gᵀ x over every (n, t) row: one matrix product, no per-sample tensor."""
        x2, g2 = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        grads = {"weight": g2.t() @ x2}
        if module.bias is not None:
            grads["bias"] = g2.sum(0)
        return grads

    @staticmethod
    def expanded_forward(module: nn.Linear, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.einsum("nti,noi->nto", _tokens(x), weights["weight"])
        if "bias" in weights:
            out = out + weights["bias"].unsqueeze(1)
        return out.reshape(*x.shape[:-1], out.shape[-1])
