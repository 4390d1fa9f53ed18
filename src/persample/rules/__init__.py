"""Per-layer knowledge, written once: one `LayerRule` per layer type (`registry.py`).

A rule knows, for one layer type, (1) the per-sample gradient of its parameters from the layer's
call and the gradient of the loss with respect to its output (Goodfellow 2015's trick), (2) the
layer's forward with a per-sample copy of each weight (the expand trick), (3) its FLOPs (the
roofline floor). Layers whose per-sample gradient is not computed here (BatchNorm, RNN/LSTM/GRU)
are registered for their FLOPs only; `rule_for` returns only rules that compute gradients.
"""
from __future__ import annotations

from ..layers import LayerInput
from .registry import LayerFlops, LayerRule, layer_rule, register_rule, rule_for, rule_types, trainable_locals
from . import conv, embedding, linear, norms, recurrent  # noqa: F401,E402  (register the rules)

__all__ = ["LayerFlops", "LayerInput", "LayerRule", "layer_rule", "register_rule", "rule_for", "rule_types",
           "trainable_locals"]
