"""The assumptions methods rely on, each with the id a refusal carries and the fix it suggests.

A method declares the assumptions it relies on (`Capabilities.relies_on`); its preparation checks
them on the example batch and refuses with `Unsupported(assumption=...)` when one fails. An
adversarial workload declares the assumptions it breaks; the conformance suite's expected-outcome
table is written in these ids.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Assumption:
    """One assumption a method's answer can rest on: its `id` (what refusals and `relies_on` name), the
    `statement` that must hold, and the `fix` a refusal suggests when it does not.
    """

    id: str
    statement: str
    fix: str


_ALL: dict[str, Assumption] = {}


def _define(id: str, statement: str, fix: str) -> Assumption:
    _ALL[id] = Assumption(id, statement, fix)
    return _ALL[id]


SAMPLES_INDEPENDENT = _define(
    "samples-independent",
    "no layer couples the samples of a batch (sample i's output depends on sample i alone)",
    "compute every statistic per sample: GroupNorm or LayerNorm instead of BatchNorm (or BatchNorm in eval "
    "mode with running statistics), and no reduction, normalisation or attention over the batch dimension",
)
LOSS_PER_SAMPLE = _define(
    "loss-per-sample",
    "the loss returns one loss per sample, and sample i's loss does not depend on the rest of the batch",
    "use reduction='none' and normalise each sample by its own size (raised as LossNotPerSample)",
)
LAYER_RULES = _define(
    "layer-rules",
    "every module that owns a trainable parameter has a per-layer rule, and its forward is the "
    "one the rule describes",
    "use a method that differentiates any module (vmap, jax, loop)",
)
BATCH_FIRST = _define(
    "batch-first-layers",
    "each layer with a rule is called with its input and output carrying the batch on dim 0, row i "
    "computed from sample i alone, as sample i alone would compute it (not from the batch's size or other "
    "samples), and reaching only sample i's loss (no coupling in the backward pass either)",
    "call the layer batch first (e.g. batch_first=True, or transpose around it) and compute nothing in forward "
    "from the batch's size or across samples, or use vmap, jax or loop",
)
OWN_LAYER = _define(
    "parameters-through-own-layer",
    "each trainable parameter reaches the loss only through the calls of the layer that owns it "
    "(not through F.linear(h, other.weight), a pre-hook or parametrization that recomputes it, a "
    "derivative taken inside forward, or a call whose output carries no gradient)",
    "call the layer itself wherever its parameter is used (e.g. tie weights by sharing the "
    "Parameter between two layers), or use vmap, jax or loop",
)
INTACT_OUTPUTS = _define(
    "layer-outputs-intact",
    "no layer's output is modified in place by a later operation (ReLU(inplace=True) after a layer "
    "destroys the output gradient the rules need)",
    "use the out-of-place operation (inplace=False)",
)
OUTPUT_GRADIENTS = _define(
    "output-gradients",
    "the loss can be differentiated with respect to each layer's output (torch.autograd.grad), which "
    "activation checkpointing with use_reentrant=True forbids",
    "use torch.utils.checkpoint(..., use_reentrant=False), or expand or loop",
)
GRAD_MODE = _define(
    "grad-mode",
    "the forward runs with gradients enabled throughout (no torch.no_grad() region)",
    "use a torch method (loop, hooks, vmap), which follow torch's grad mode",
)
AUTOGRAD_FUNCTIONS = _define(
    "autograd-functions",
    "the forward uses no custom torch.autograd.Function (its hand-written backward cannot be "
    "translated or batched)",
    "use a method that runs torch's autograd (loop, hooks, expand)",
)
PLAIN_FORWARD = _define(
    "plain-forward",
    "the forward does not differentiate (no torch.autograd.grad or backward inside forward)",
    "use expand or loop",
)
BATCHING_RULES = _define(
    "batching-rules",
    "torch.func can batch every operation of the model on this device and dtype",
    "use another method (loop runs every model)",
)
TRANSLATABLE = _define(
    "translatable",
    "the model and loss translate to JAX faithfully (traceable, every operation in the vocabulary)",
    "use a torch method (vmap, hooks, loop)",
)
MATCHES_DEFINITION = _define(
    "matches-definition",
    "the method's per-sample gradients on the example batch agree with autograd (Σᵢ wᵢ gᵢ equals "
    "the gradient of Σᵢ wᵢ ℓᵢ, and a sample's gradient equals its gradient alone)",
    "use loop, the reference, and report the model to persample",
)
SETTING = _define(
    "device-and-dtype",
    "the method runs on this device, in this dtype, with its packages installed",
    "use another method, dtype or device",
)


def get_assumption(id: str) -> Assumption:
    """The assumption registered under `id`. Raises `ValueError` naming the known ids for another."""
    if id not in _ALL:
        raise ValueError(f"unknown assumption {id!r}; known: {', '.join(_ALL)}")
    return _ALL[id]


def all_assumptions() -> list[Assumption]:
    """Every assumption, in the order they are defined."""
    return list(_ALL.values())
