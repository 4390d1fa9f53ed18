"""Matching a user's model to the nearest zoo workload: same layer types first, then similar size.

A signature is the set of parameter-owning module types (marked when frozen) plus the total
parameter count. Distance = Jaccard distance of the type sets + 0.1 per decade of parameter-count
ratio, so sharing the layer vocabulary outweighs a size that is off by several orders of magnitude.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import torch
from torch import nn

from ..contract import trainable_owners

DECADE_WEIGHT = 0.1
K = TypeVar("K")


@dataclass(frozen=True)
class Signature:
    layers: frozenset[str]
    parameters: int

    def distance(self, other: "Signature") -> float:
        union = self.layers | other.layers
        jaccard = 1.0 - len(self.layers & other.layers) / len(union) if union else 0.0
        decades = abs(math.log10(max(self.parameters, 1)) - math.log10(max(other.parameters, 1)))
        return jaccard + DECADE_WEIGHT * decades

    def to_json(self) -> dict:
        return {"layers": sorted(self.layers), "parameters": self.parameters}

    @classmethod
    def from_json(cls, payload: dict) -> "Signature":
        return cls(frozenset(payload["layers"]), int(payload["parameters"]))


def signature_of(model: nn.Module) -> Signature:
    """The model's layer types ("Conv2d", or "Conv2d (frozen)" when all its parameters are frozen)
    and its total parameter count."""
    trainable = {id(module) for _, module in trainable_owners(model)}
    layers = frozenset(
        type(module).__name__ + ("" if id(module) in trainable else " (frozen)")
        for module in model.modules()
        if next(module.parameters(recurse=False), None) is not None
    )
    return Signature(layers, sum(p.numel() for p in model.parameters()))


@lru_cache(maxsize=None)
def workload_signature(name: str, size: str) -> Signature | None:
    """The zoo workload's signature (its model built once per process), or None if unknown."""
    from ..workloads import get_workload

    try:
        with torch.random.fork_rng(devices=[]):  # building initialises weights: draws random numbers
            model = get_workload(name).make_model(size or "full")
    except (ValueError, KeyError):
        return None
    return signature_of(model)


def nearest(signature: Signature, candidates: dict[K, Signature]) -> K | None:
    """The candidate key nearest to `signature` (ties: the first in sorted key order)."""
    if not candidates:
        return None
    return min(sorted(candidates), key=lambda name: signature.distance(candidates[name]))
