"""One torch.fx graph for the model followed by its loss, with translated layers kept whole.

The model and the loss are wrapped in one module so a single trace records both; layers in the
vocabulary (and every other torch.nn layer, so an error can name it) stay `call_module` nodes.
"""
from __future__ import annotations

import inspect

import torch.fx as fx
from torch import nn

from ..contract import LossFn
from ..errors import Unsupported
from .vocabulary import layer_translator

METHOD = "jax"
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class ModelThenLoss(nn.Module):
    """`forward(*inputs, targets)`: the per-sample losses (or the outputs when no loss is given)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn | None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *args):
        if self.loss_fn is None:
            return self.model(*args)
        return self.loss_fn(self.model(*args[:-1]), args[-1])


class VocabularyTracer(fx.Tracer):
    """Keeps translated layers and torch.nn layers as leaves; traces through everything else."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        if layer_translator(module) is not None:
            return True
        return super().is_leaf_module(module, qualname) and not isinstance(module, CONTAINERS)


def required_inputs(model: nn.Module) -> int:
    """How many positional inputs `model.forward` needs (those without a default), at least 1."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return 1
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return max(1, sum(p.kind in positional and p.default is p.empty for p in parameters))


def trace(model: nn.Module, loss_fn: LossFn | None, n_inputs: int) -> tuple[ModelThenLoss, fx.Graph]:
    """The wrapper module and its graph: `n_inputs` input placeholders, then the targets."""
    root = ModelThenLoss(model, loss_fn)
    placeholders = tuple(fx.PH for _ in range(n_inputs + (loss_fn is not None)))
    try:
        graph = VocabularyTracer().trace(root, concrete_args=placeholders)
    except Unsupported:
        raise
    except Exception as error:
        part = "model's forward" if loss_fn is None else "model's forward or the loss function"
        raise Unsupported(
            f"torch.fx cannot trace the {part} ({type(error).__name__}: {error}). The jax "
            "method compiles one graph, so Python control flow must not depend on tensor values "
            "and every step must be a torch operation; rewrite the data-dependent part with "
            "torch.where, or use a torch method (vmap, loop).",
            method=METHOD,
        ) from error
    return root, graph


def user_name(target: str) -> str:
    """A node target inside the wrapper as the user names it: `model.block.qkv` -> `block.qkv`."""
    for prefix, shown in (("model.", ""), ("loss_fn.", "loss ")):
        if target.startswith(prefix):
            return shown + target[len(prefix):]
    return {"model": "<root>", "loss_fn": "loss"}.get(target, target)


def attribute(root: nn.Module, target: str):
    """The object at a dotted `get_attr`/`call_module` target of the wrapper."""
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value
