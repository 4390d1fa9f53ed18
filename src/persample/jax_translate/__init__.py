"""Translate a torch model and its per-sample loss into a JAX function of the weights.

`vocabulary` (torch only, no JAX import) declares what is translated; the other modules import
JAX and register the translations. Entry points: `translation.translate` (torch.fx graph -> JAX
program), `step.PerSampleStep` (the compiled per-sample gradient step), `eager.evaluate`; for
forwards torch.fx cannot trace, `capture.capture` (one sample's ATen graph, recorded with real
values), `aten` (the ATen vocabulary) and `guarded.GuardedStep` (one program per path, guarded).
"""
from __future__ import annotations

from .vocabulary import LAYER_TYPES

__all__ = ["LAYER_TYPES"]
