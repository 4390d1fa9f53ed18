"""`method="auto"`: the fastest method that is conformant for this model on this device.

Without measured data the choice follows a documented rule (README, "Which method does auto
pick?"): on CUDA prefer `kernel`, then `vmap`; on the CPU prefer `hooks`, then `vmap`; `loop` is
the last resort because it supports everything. Measured data, when present, takes precedence.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import Unsupported
from .methods.registry import Method, registered

FALLBACK_ORDER = {
    "cuda": ("kernel", "vmap", "hooks", "expand", "loop"),
    "cpu": ("hooks", "vmap", "expand", "loop"),
}


def choose_method(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Method:
    """The method `auto` resolves to for `model` on `device` in `dtype`."""
    methods = registered()
    order = FALLBACK_ORDER.get(device.type, FALLBACK_ORDER["cpu"])
    reasons = []
    for name in order:
        method = methods.get(name)
        if method is None:
            continue
        try:
            method.check(model, device, dtype)
        except Unsupported as problem:
            reasons.append(str(problem))
            continue
        return method
    raise Unsupported("no method can handle this model: " + "; ".join(reasons), method="auto")
