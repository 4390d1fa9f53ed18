"""One torch.fx graph for the model followed by its loss, with translated layers kept whole.

The model and the loss are wrapped in one module so a single trace records both; layers in the
vocabulary (and every other torch.nn layer, so an error can name it) stay `call_module` nodes.
"""
from __future__ import annotations

import inspect

import torch
import torch.fx as fx
from torch import nn

from ..batch import CallArgs
from ..contract import LossFn
from ..errors import Unsupported
from .vocabulary import layer_translator

METHOD = "jax"
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class FxTraceFailed(Unsupported):
    """torch.fx could not trace the forward or the loss (Python control flow on tensor values, an
    operation on a proxy that Python needs the value of): the jax method captures it with real
    values instead (`capture`)."""


class ModelThenLoss(nn.Module):
    """`forward(*tensor_inputs, targets)`: the per-sample losses (or the outputs without a loss).

    `call` (a `CallArgs`) says where the tensor inputs go among the model's positional and keyword
    arguments; its non-tensor values are constants of the trace. Without it, every input is positional.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, call: CallArgs | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.call = call

    def forward(self, *args):
        inputs = args if self.loss_fn is None else args[:-1]
        outputs = self.model(*inputs) if self.call is None else fill(self.call, inputs).call(self.model)
        return outputs if self.loss_fn is None else self.loss_fn(outputs, args[-1])


def fill(call: CallArgs, tensors) -> CallArgs:
    """`call` with its tensor arguments replaced, in order (positional, then keywords by name), by
    `tensors`."""
    supply = iter(tensors)
    take = lambda v: next(supply) if isinstance(v, torch.Tensor) else v  # noqa: E731
    args = tuple(take(a) for a in call.args)
    return CallArgs(args, {k: take(call.kwargs[k]) for k in sorted(call.kwargs)})


def tensor_inputs(call: CallArgs) -> tuple[torch.Tensor, ...]:
    """The tensor arguments of `call`, in the order `fill` consumes them (keywords by name, so a
    mapping's order does not matter)."""
    values = [*call.args, *(call.kwargs[k] for k in sorted(call.kwargs))]
    return tuple(v for v in values if isinstance(v, torch.Tensor))


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


def trace(model: nn.Module, loss_fn: LossFn | None, inputs: int | CallArgs) -> tuple[ModelThenLoss, fx.Graph]:
    """The wrapper module and its graph: one placeholder per tensor input (`inputs` positional ones,
    or those of a `CallArgs`), then the targets."""
    call = inputs if isinstance(inputs, CallArgs) else None
    n_inputs = len(tensor_inputs(call)) if call is not None else inputs
    root = ModelThenLoss(model, loss_fn, call)
    placeholders = tuple(fx.PH for _ in range(n_inputs + (loss_fn is not None)))
    try:
        graph = VocabularyTracer().trace(root, concrete_args=placeholders)
    except Unsupported:
        raise
    except Exception as error:
        part = "model's forward" if loss_fn is None else "model's forward or the loss function"
        raise FxTraceFailed(
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
