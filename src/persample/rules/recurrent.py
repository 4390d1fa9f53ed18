"""RNN, LSTM, GRU: FLOPs only (their per-sample gradients are not computed by a rule here).

Each step of each layer and direction computes gates = W_ih x_t + W_hh h_{t-1} (+ biases); the
backward needs the same products for dx_t and dh_{t-1}, and again for dW. Gates per step: LSTM 4,
GRU 3, RNN 1 (times hidden_size).
"""
from __future__ import annotations

from collections.abc import Collection

from torch import nn

from ..layers import LayerInput
from .registry import LayerFlops, register_rule

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@register_rule(nn.RNN, nn.LSTM, nn.GRU)
class RecurrentCost:
    """The recurrent layers' FLOP count (each overrides RNNBase.forward, so each is registered)."""

    @staticmethod
    def flops(module: nn.RNNBase, inputs: LayerInput, output, trainable: Collection[str]) -> LayerFlops:
        """2 FLOPs per product of gates·(width + hidden) per step, layer and direction, in the
        forward, the input gradient and the parameter gradient (all of it when any parameter is
        in `trainable`, else none); one per gate for the biases."""
        x = inputs.first
        steps = x.shape[1] if module.batch_first and x.dim() == 3 else x.shape[0]
        gates, hidden = GATES[module.mode] * module.hidden_size, module.proj_size or module.hidden_size
        directions = 2 if module.bidirectional else 1
        products = bias = 0
        for layer in range(module.num_layers):
            width = module.input_size if layer == 0 else hidden * directions
            products += directions * steps * 2 * gates * (width + hidden)
            bias += directions * steps * 2 * gates if module.bias else 0
        return LayerFlops(products + bias, products, (products + bias) * bool(trainable))
