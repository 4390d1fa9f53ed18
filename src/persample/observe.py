"""One instrumented forward of the model and loss: what the methods' assumptions need to know.

`observe(model, loss_fn, call, targets)` runs the forward with gradients enabled and records:
- every call of the modules asked for (`capture`): its arguments (`LayerInput`: positional and
  keyword) and the module's own output (taken before any user forward hook can replace it);
- uses of a trainable parameter, with a result that carries gradient, outside the forward of a
  module that owns it (`F.linear(h, self.embed.weight)`, a pre-hook or parametrization that
  recomputes a weight, a user forward hook adding to a layer's output);
- custom `torch.autograd.Function`s applied (torch.utils.checkpoint with use_reentrant=True is
  one), regions run under `torch.no_grad()`, derivatives taken inside the forward
  (`torch.autograd.grad`, `.backward()`), each with the module where it happened;
- buffers the forward replaced or modified in place, and whether it drew random numbers.
The model's buffers and the random state are restored afterwards; the autograd graph of the
returned losses stays alive for the checks that differentiate it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.function import Function
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from .batch import CallArgs
from .layers import LayerInput
from .rules import layer_rule
from .rules.registry import owned_tensor
from .state import preserved, rng_state, same_rng_state

DIFFERENTIATING = {torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward}
GRAD_MODE_SETTERS = {torch._C._set_grad_enabled, torch.is_grad_enabled}


@dataclass
class LayerCall:
    """One call of a captured module: its arguments (what the layer rules read), its own output
    and the output's version counter when recorded, whether gradients were enabled, and the custom
    autograd Function whose forward made the call (None outside one)."""

    module: nn.Module
    qualname: str
    inputs: LayerInput
    output: Any
    output_version: int | None
    grad_enabled: bool
    in_function: str | None  # the custom autograd Function whose forward made this call
    shared: bool = False  # called on arguments shared by every sample, its output handed on expanded (`broadcast_shared`)

    @property
    def input(self) -> Any:
        """The layer's input: its first argument (`LayerInput.first`), what the layout checks read."""
        return self.inputs.first


def output_version(output: Any) -> int | tuple[int, ...]:
    """The version counter of a layer's output tensor, or those of the tensors of an output tuple: a
    later in-place change of any of them shows as a different value."""
    if isinstance(output, torch.Tensor):
        return output._version
    return tuple(t._version for t in tree_leaves(output) if isinstance(t, torch.Tensor))


def shared_arguments(args: tuple, kwargs: dict, batch: int) -> bool:
    """Whether a layer is called on arguments every sample shares: a batch of more than one sample and
    every tensor argument (with a dim) with one row on dim 0 (GPT-2's and BERT's position embeddings,
    called on position ids of shape (1, T))."""
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() > 0]
    return batch > 1 and bool(tensors) and all(t.shape[0] == 1 for t in tensors)


def is_shared_call(module: nn.Module, args: tuple, kwargs: dict, output: Any, batch: int) -> bool:
    """`shared_arguments`, and an output tensor of one row: what every sample shares. Never for a layer
    whose rule places the batch elsewhere than dim 0 (`LayerRule.batch_first`: a time-major call
    with one time step is not shared)."""
    rule = layer_rule(module)
    return (isinstance(output, torch.Tensor) and output.dim() > 0 and output.shape[0] == 1
            and shared_arguments(args, kwargs, batch) and (rule is None or rule.batch_first is None))


def broadcast_shared(args: tuple, kwargs: dict, output: torch.Tensor, batch: int) -> tuple[LayerInput, torch.Tensor]:
    """A shared call (`is_shared_call`) as if each sample had made it: its arguments and output
    expanded to `batch` rows (stride-0 views, no copy). The model gets the expanded output, so the
    gradient of the loss reaching it is per sample (row i: ∂ℓᵢ/∂output), what a layer rule needs;
    where the model broadcast the one-row output over the batch anyway, it computes the same values
    (the checks compare the losses: `persample.checks.layout`)."""
    return expand_shared(args, kwargs, batch), _expand_rows(output, batch)


def _expand_rows(value: Any, batch: int) -> Any:
    return value.expand(batch, *value.shape[1:]) if isinstance(value, torch.Tensor) and value.dim() > 0 else value


def expand_shared(args: tuple, kwargs: dict, batch: int) -> LayerInput:
    """The call's arguments with every tensor (with a dim) expanded to `batch` rows (stride-0 views)."""
    args, kwargs = tree_map(lambda t: _expand_rows(t, batch), (tuple(args), dict(kwargs)))
    return LayerInput(args, kwargs)


class SharedExpansionFailed(Exception):
    """The forward failed after a shared call's output was handed on expanded to the batch
    (`broadcast_shared`): the model does not broadcast that output over the batch. `call` is the first
    shared call, `error` what the forward raised."""

    def __init__(self, call: LayerCall, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.call, self.error = call, error


@dataclass
class Observation:
    """What one instrumented forward saw: outputs and per-sample losses (B,), the recorded layer calls,
    parameters used outside their owner, no_grad regions, custom autograd Functions, derivatives taken
    in forward, mutated buffers and whether random numbers were drawn.
    """

    outputs: Any
    losses: torch.Tensor
    calls: list[LayerCall] = field(default_factory=list)
    foreign_uses: dict[str, str] = field(default_factory=dict)
    """parameter name -> where it was used outside its owner ("F.linear in head (Model.forward)")."""
    no_grad_regions: list[str] = field(default_factory=list)
    autograd_functions: dict[str, str] = field(default_factory=dict)
    """custom Function class name -> the module whose forward applied it."""
    differentiation: list[str] = field(default_factory=list)
    mutated_buffers: list[str] = field(default_factory=list)
    draws_random_numbers: bool = False


def describe_function(func: Any) -> str:
    """A readable name of a torch callable: 'F.linear', 'Tensor.add', 'torch.cat', or its qualified name."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None) or ""
    if module.startswith("torch.nn.functional") or getattr(torch.nn.functional, name, None) is func:
        return f"F.{name}"
    if name.startswith(("TensorBase.", "Tensor.")):
        return "Tensor." + name.split(".", 1)[1]
    return f"torch.{name}" if module.startswith("torch") and "." not in name else name


class _Watch(TorchFunctionMode):
    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recorder = self.recorder
        if func in DIFFERENTIATING:
            recorder.note(recorder.differentiation, recorder.where())
        elif not torch.is_grad_enabled() and recorder.function_depth == 0 and func not in GRAD_MODE_SETTERS:
            recorder.note(recorder.no_grad_regions, recorder.where())
        result = func(*args, **kwargs)
        if recorder.parameters and torch.is_grad_enabled():
            used = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and id(t) in recorder.parameters]
            if used and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tree_leaves(result)):
                for tensor in used:
                    recorder.check_use(tensor, func)
        return result


class _Recorder:
    def __init__(self, model: nn.Module, capture: set[nn.Module], batch: int = 0) -> None:
        self.batch = batch
        self.names = {module: name for name, module in model.named_modules(remove_duplicate=False)}
        self.parameters: dict[int, tuple[str, set[nn.Module]]] = {}
        for module in model.modules():
            for local, param in module._parameters.items():
                if param is not None and param.requires_grad:
                    name, owners = self.parameters.setdefault(id(param), (self._qualified(module, local), set()))
                    owners.add(module)
        for module in model.modules():  # a rule claiming a child's parameter: its forward reads it itself
            rule = layer_rule(module)
            for dotted in (n for n in (rule.params if rule is not None else ()) if "." in n):
                param = owned_tensor(module, dotted)
                if param is not None and id(param) in self.parameters:
                    self.parameters[id(param)][1].add(module)
        self.capture = capture
        self.stack: list[nn.Module] = []
        self.calls: list[LayerCall] = []
        self.foreign: dict[str, str] = {}
        self.no_grad_regions: list[str] = []
        self.differentiation: list[str] = []
        self.functions: dict[str, str] = {}
        self.function_stack: list[str] = []

    def _qualified(self, module: nn.Module, local: str) -> str:
        prefix = self.names.get(module, "")
        return f"{prefix}.{local}" if prefix else local

    @property
    def function_depth(self) -> int:
        return len(self.function_stack)

    def where(self) -> str:
        if not self.stack:
            return "the loss function or the model's caller"
        module = self.stack[-1]
        return f"{self.names.get(module) or '<root>'} ({type(module).__name__}.forward)"

    @staticmethod
    def note(found: list[str], where: str) -> None:
        if where not in found:
            found.append(where)

    def check_use(self, tensor: torch.Tensor, func: Any) -> None:
        name, owners = self.parameters[id(tensor)]
        if self.stack and self.stack[-1] in owners:
            return
        self.foreign.setdefault(name, f"{describe_function(func)} in {self.where()}")

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        self.stack.append(module)

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        if module in self.capture:
            shared = is_shared_call(module, args, kwargs, output, self.batch)
            inputs = LayerInput(args, kwargs)
            if shared:
                inputs, output = broadcast_shared(args, kwargs, output, self.batch)
            self.calls.append(LayerCall(
                module, self.names.get(module, ""), inputs, output, output_version(output),
                torch.is_grad_enabled(), self.function_stack[-1] if self.function_stack else None, shared,
            ))
            if shared:
                return output
        return None


@contextmanager
def _function_applications(recorder: _Recorder) -> Iterator[None]:
    """Record each custom autograd Function's application while the block runs."""
    original = Function.__dict__["apply"]

    def apply(cls, *args, **kwargs):
        recorder.functions.setdefault(cls.__name__, recorder.where())
        recorder.function_stack.append(cls.__name__)
        try:
            return original.__func__(cls, *args, **kwargs)
        finally:
            recorder.function_stack.pop()

    Function.apply = classmethod(apply)
    try:
        yield
    finally:
        Function.apply = original


def observe(
    model: nn.Module,
    loss_fn,
    call: CallArgs,
    targets: torch.Tensor,
    *,
    capture: set[nn.Module] = frozenset(),
    watch: bool = True,
) -> Observation:
    """Run `loss_fn(model(call), targets)` once, recording what the module docstring lists.

    `watch=False` records only the captured calls (a cheap repeat for the perturbation probe).
    """
    recorder = _Recorder(model, set(capture), targets.shape[0])
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(recorder.pre_hook))
        handles.append(module.register_forward_hook(recorder.post_hook, prepend=True, always_call=True, with_kwargs=True))
    before = rng_state(model)
    try:
        with preserved(model) as buffers, torch.enable_grad():
            try:
                if watch:
                    with _function_applications(recorder), _Watch(recorder):
                        outputs = call.call(model)
                        losses = loss_fn(outputs, targets)
                else:
                    outputs = call.call(model)
                    losses = loss_fn(outputs, targets)
            except Exception as error:
                shared = next((c for c in recorder.calls if c.shared), None)
                if shared is None:
                    raise
                raise SharedExpansionFailed(shared, error) from error
            mutated = buffers.changed()
            draws = not same_rng_state(before, rng_state(model))
    finally:
        for handle in handles:
            handle.remove()
    return Observation(
        outputs, losses, recorder.calls, recorder.foreign, recorder.no_grad_regions, recorder.functions,
        recorder.differentiation, mutated, draws,
    )


@contextmanager
def module_stack(model: nn.Module) -> Iterator[list[str]]:
    """The modules being called, outermost first; after an exception it still holds the path to
    the module that raised (its forward hook never ran)."""
    names = {module: name for name, module in model.named_modules(remove_duplicate=False)}
    stack: list[str] = []

    def enter(module, args):
        stack.append(f"{names.get(module) or '<root>'} ({type(module).__name__})")

    def leave(module, args, output):
        if stack:
            stack.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()
