"""Per-layer knowledge, written once: one `LayerRule` per layer type (`registry.py`).

A rule knows, for one layer type, (1) the per-sample gradient of its parameters from the layer's
call and the gradient of the loss with respect to its output (Goodfellow 2015's trick), (2) the
layer's forward with a per-sample copy of each weight (the expand trick), (3) its FLOPs (the
roofline floor). Layers whose per-sample gradient is not computed here (RNN/LSTM/GRU) are
registered for their FLOPs only; `rule_for` returns only rules that compute gradients, and only in
a state of the layer where they hold (BatchNorm: eval mode with running statistics), and
`rule_refusal_reason` says why a module gets none. A layer of an optional package (Hugging Face's
Conv1D) is registered by its qualified name, without importing the package.
"""
from __future__ import annotations

from ..layers import LayerInput
from . import attention, conv, embedding, linear, norms, recurrent  # noqa: F401  (register the rules)
from .registry import (
                       LayerFlops,
                       LayerRule,
                       layer_rule,
                       register_rule,
                       rule_for,
                       rule_refusal_reason,
                       rule_types,
                       trainable_locals,
)

__all__ = ["LayerFlops", "LayerInput", "LayerRule", "layer_rule", "register_rule", "rule_for", "rule_refusal_reason",
           "rule_types", "trainable_locals"]
