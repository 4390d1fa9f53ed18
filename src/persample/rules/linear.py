"""Linear, and Hugging Face's Conv1D (a Linear with its weight transposed: (nx, nf), y = x W + b).
Indices: n batch, t tokens (all dims between batch and features), i in, o out.

gW[n,o,i] = Σ_t g[n,t,o] x[n,t,i];  gb[n,o] = Σ_t g[n,t,o]
(Goodfellow 2015, "Efficient Per-Example Gradient Computations", eq. for Z = XW: the per-example
weight gradient is the outer product of the layer's input and the gradient at its output; over
tokens the products sum, as in Li et al. 2022.)
Conv1D (`transformers.pytorch_utils.Conv1D`, GPT-2's projections), weight W[i,o]:
gW[n,i,o] = Σ_t x[n,t,i] g[n,t,o];  gb[n,o] = Σ_t g[n,t,o]   (the same outer product, transposed)
registered by qualified name: transformers is not imported by persample.
"""
from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from ..layers import LayerInput
from ..outputs import output_buffer
from .registry import LayerFlops, register_rule


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """View (n, *leading, f) as (n, t, f)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def outer_products(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_t g[n, t]ᵀ x[n, t], (n, o, i), from g (n, t, o) and x (n, t, i).

    One token (t = 1, an MLP's layers): a broadcast product (n, o, 1) · (n, 1, i), which writes the
    result at the memory's speed; a batched matrix product with an inner dimension of 1 did not
    (256 × 1024 × 1024 float32 on a 2-vCPU AMD EPYC: `bmm` 137 ms against `mul` 69 ms into memory
    already touched, 90 against 61 into new huge-page memory; see docs/benchmarks.md, "The CPU floor").
    More tokens: one batched matrix product over the samples. Inside a step that reuses its outputs
    (`persample.outputs`), written into the step's kept buffer. Not differentiable (its inputs are
    detached: per-sample gradients are data, and the result keeps no graph alive)."""
    g, x = g.detach(), x.detach()
    out = output_buffer((g.shape[0], g.shape[2], x.shape[2]), g) if g.dtype == x.dtype else None
    if g.shape[1] == 1:
        return torch.mul(g.transpose(1, 2), x, out=out)
    return torch.bmm(g.transpose(1, 2), x, out=out)


class SharedWeightLinear(torch.autograd.Function):
    """out[n] = x[n] W[n]ᵀ for a (n, o, i) weight whose samples share one memory (a stride-0
    expansion, as expand makes), so the forward is one matrix product over all n·t rows instead of
    n small ones; the backward gives x's gradient g W and the per-sample weight gradient
    `outer_products(g, x)`, (n, o, i), the same values the einsum's autograd gives. Under
    create_graph (a forward that differentiates itself, then is differentiated again) the backward
    is the einsum's own, per-sample and differentiable. x: (n, t, i); returns (n, t, o)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.matmul(x, weight[0].t())

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable in each sample's own weight
            grad_x = torch.einsum("nto,noi->nti", grad_out, weight) if ctx.needs_input_grad[0] else None
            grad_weight = torch.einsum("nto,nti->noi", grad_out, x) if ctx.needs_input_grad[1] else None
            return grad_x, grad_weight
        grad_x = torch.matmul(grad_out, weight[0]) if ctx.needs_input_grad[0] else None
        grad_weight = outer_products(grad_out, x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


@register_rule(nn.Linear)
class LinearRule:
    """y = x Wᵀ + b on inputs (n, *, i)."""

    @staticmethod
    def grad_sample(module: nn.Linear, inputs: LayerInput, grad_out: torch.Tensor,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{"weight": (n, o, i), "bias": (n, o)}, each only when named in `trainable`: gW[n] = g[n]ᵀ x[n]
        (`outer_products`), gb[n] = Σ_t g[n, t] (Goodfellow 2015). Raises nothing beyond torch's
        shape errors."""
        x, g = _tokens(inputs.first), _tokens(grad_out)
        grads = {}
        if "weight" in trainable:
            grads["weight"] = outer_products(g, x)
        if "bias" in trainable:
            grads["bias"] = g.sum(1)
        return grads

    @staticmethod
    def grad_batch(module: nn.Linear, inputs: LayerInput, grad_out: torch.Tensor,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`: {"weight": (o, i), "bias": (o,)} for the names in `trainable`, as
        gᵀ x over every (n, t) row: one matrix product, no per-sample tensor."""
        x = inputs.first
        x2, g2 = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        grads = {}
        if "weight" in trainable:
            grads["weight"] = g2.t() @ x2
        if "bias" in trainable:
            grads["bias"] = g2.sum(0)
        return grads

    @staticmethod
    def expanded_forward(module: nn.Linear, inputs: LayerInput, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output (n, *, o) with sample n's weights[name][n]: out[n] = x[n] W[n]ᵀ + b[n] (the expand
        trick: Rochette et al. 2019, "Efficient Per-Example Gradient Computations in Convolutional
        Neural Networks"; Opacus, Yousefpour et al. 2021). `weights` holds (n, o, i) and, with a
        bias, (n, o)."""
        x = inputs.first
        weight = weights["weight"]
        if weight.stride(0) == 0 and not torch.is_autocast_enabled(x.device.type):
            out = SharedWeightLinear.apply(_tokens(x), weight)
        else:
            out = torch.einsum("nti,noi->nto", _tokens(x), weight)
        if "bias" in weights:
            out = out + weights["bias"].unsqueeze(1)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def flops(module: nn.Linear, inputs: LayerInput, output: torch.Tensor, trainable: Collection[str]) -> LayerFlops:
        """2·t·i·o products (+ t·o for the bias) in the forward, 2·t·i·o for the input gradient, and
        in the per-sample gradient 2·t·i·o for a trainable weight + t·o for a trainable bias; t the
        tokens of the call."""
        i, o = module.in_features, module.out_features
        t = inputs.first.numel() // i
        products, bias = 2 * t * i * o, t * o if module.bias is not None else 0
        per_sample = products * ("weight" in trainable) + bias * ("bias" in trainable)
        return LayerFlops(products + bias, products, per_sample)


HF_CONV1D = "transformers.pytorch_utils.Conv1D"
"""Hugging Face's Conv1D, by qualified name: `register_rule` matches it without importing transformers."""


@register_rule(HF_CONV1D)
class HFConv1DRule:
    """y = x W + b on inputs (n, *, nx), W (nx, nf), b (nf,) (transformers' `Conv1D.forward`:
    `torch.addmm(bias, x.view(-1, nx), weight)`): a Linear whose weight is stored transposed."""

    @staticmethod
    def grad_sample(module: nn.Module, inputs: LayerInput, grad_out: torch.Tensor,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{"weight": (n, nx, nf), "bias": (n, nf)}, each only when named in `trainable`: gW[n] = x[n]ᵀ g[n]
        (`outer_products` with the roles of g and x swapped), gb[n] = Σ_t g[n, t] (Goodfellow 2015).
        Not differentiable, as the Linear rule's."""
        x, g = _tokens(inputs.first.detach()), _tokens(grad_out.detach())
        grads = {}
        if "weight" in trainable:
            grads["weight"] = outer_products(x, g)
        if "bias" in trainable:
            grads["bias"] = g.sum(1)
        return grads

    @staticmethod
    def grad_batch(module: nn.Module, inputs: LayerInput, grad_out: torch.Tensor,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`: {"weight": (nx, nf), "bias": (nf,)} for the names in `trainable`, as xᵀ g
        over every (n, t) row: one matrix product, no per-sample tensor."""
        x, grad_out = inputs.first.detach(), grad_out.detach()
        x2, g2 = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        grads = {}
        if "weight" in trainable:
            grads["weight"] = x2.t() @ g2
        if "bias" in trainable:
            grads["bias"] = g2.sum(0)
        return grads

    @staticmethod
    def expanded_forward(module: nn.Module, inputs: LayerInput, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output (n, *, nf) with sample n's weights[name][n]: out[n] = x[n] W[n] + b[n], `weights`
        holding (n, nx, nf) and (n, nf): the Linear rule's batched form on W[n]ᵀ (a view)."""
        transposed = dict(weights, weight=weights["weight"].transpose(1, 2))
        return LinearRule.expanded_forward(module, inputs, transposed)

    @staticmethod
    def flops(module: nn.Module, inputs: LayerInput, output: torch.Tensor, trainable: Collection[str]) -> LayerFlops:
        """As a Linear's: 2·t·nx·nf products (+ t·nf for the bias) in the forward, 2·t·nx·nf for the
        input gradient, and in the per-sample gradient 2·t·nx·nf for a trainable weight + t·nf for a
        trainable bias; t the tokens of the call."""
        i, o = module.nx, module.nf
        t = inputs.first.numel() // i
        products, bias = 2 * t * i * o, t * o if module.bias is not None else 0
        per_sample = products * ("weight" in trainable) + bias * ("bias" in trainable)
        return LayerFlops(products + bias, products, per_sample)
