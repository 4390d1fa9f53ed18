"""Per-layer per-sample-gradient formulas, written once and shared by hooks, expand and kernel.

Each rule knows, for one layer type, (1) the per-sample gradient of its parameters from the
layer's input and the gradient of the loss with respect to its output (Goodfellow's trick), and
(2) the layer's forward with a per-sample copy of each weight (the expand trick).
"""
from __future__ import annotations

from .registry import LayerRule, register_rule, rule_for, rule_types
from . import conv, embedding, linear, norms  # noqa: F401,E402  (register the rules)

__all__ = ["LayerRule", "register_rule", "rule_for", "rule_types"]
