"""FLOPs of one sample through one layer: forward, gradient to the input, per-sample parameter gradient.

One rule per layer type (subclasses match), from the shapes a forward pass saw; a multiply-add
counts 2. The per-sample parameter gradient replaces the batch weight gradient and costs the same
products (gW[n] = Σ_t g[n,t] x[n,t]ᵀ instead of Σ_n Σ_t), so a layer's backward is
input-gradient + parameter-gradient. Elementwise work is counted only for normalisations (whose
parameters need it); activations, pooling, softmax and the loss are left out (the floor is a
lower bound). Indices: t tokens (positions) per sample, i/o features in/out, P output positions.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn


class LayerFlops(NamedTuple):
    forward: float
    input_grad: float
    param_grad: float


FlopRule = Callable[[nn.Module, torch.Tensor, torch.Tensor], LayerFlops]
_RULES: dict[type[nn.Module], FlopRule] = {}


def flop_rule(*layers: type[nn.Module]) -> Callable[[FlopRule], FlopRule]:
    def register(rule: FlopRule) -> FlopRule:
        for layer in layers:
            _RULES[layer] = rule
        return rule

    return register


def rule_for(module: nn.Module) -> FlopRule | None:
    return next((_RULES[base] for base in type(module).__mro__ if base in _RULES), None)


@flop_rule(nn.Linear)
def linear(module: nn.Linear, x: torch.Tensor, out: torch.Tensor) -> LayerFlops:
    i, o = module.in_features, module.out_features
    t = x.numel() // i
    bias = t * o if module.bias is not None else 0
    return LayerFlops(2 * t * i * o + bias, 2 * t * i * o, 2 * t * i * o + bias)


@flop_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(module: nn.modules.conv._ConvNd, x: torch.Tensor, out: torch.Tensor) -> LayerFlops:
    positions = out.numel() // module.out_channels
    products = 2 * positions * module.out_channels * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    bias = positions * module.out_channels if module.bias is not None else 0
    return LayerFlops(products + bias, products, products + bias)


@flop_rule(nn.Embedding)
def embedding(module: nn.Embedding, x: torch.Tensor, out: torch.Tensor) -> LayerFlops:
    # A gather forward; the per-sample gradient scatter-adds one row per token.
    return LayerFlops(0, 0, x.numel() * module.embedding_dim)


@flop_rule(nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.instancenorm._InstanceNorm,
           nn.modules.batchnorm._BatchNorm)
def normalisation(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> LayerFlops:
    # Per element: forward ~7 (mean, variance, normalise, scale, shift), input gradient ~8,
    # per-sample scale gradient 2 (Σ g·x̂) and shift gradient 1 (Σ g).
    n = x.numel()
    weight = getattr(module, "weight", None) is not None
    bias = getattr(module, "bias", None) is not None
    return LayerFlops(7 * n, 8 * n, (2 * n if weight else 0) + (n if bias else 0))


GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@flop_rule(nn.RNNBase)
def recurrent(module: nn.RNNBase, x: torch.Tensor, out: torch.Tensor) -> LayerFlops:
    # Each step of each layer and direction: gates = W_ih x_t + W_hh h_{t-1} (+ biases);
    # the backward needs the same products for dx_t and dh_{t-1}, and again for dW.
    steps = x.shape[1] if module.batch_first else x.shape[0]
    gates, hidden = GATES[module.mode] * module.hidden_size, module.proj_size or module.hidden_size
    directions = 2 if module.bidirectional else 1
    products = bias = 0
    for layer in range(module.num_layers):
        width = module.input_size if layer == 0 else hidden * directions
        products += directions * steps * 2 * gates * (width + hidden)
        bias += directions * steps * 2 * gates if module.bias else 0
    return LayerFlops(products + bias, products, products + bias)
