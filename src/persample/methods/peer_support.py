"""What the peer methods share: a parameter-sharing clone for the library to wrap, and one step.

A peer library installs hooks, wraps the model and hangs per-sample gradients on the parameters
(`grad_sample`, `grad_batch`). It gets a deep copy whose parameters alias the user's storage, so the
user's model keeps no trace while every value change (an optimizer step) is seen at once.
"""
from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from ..batch import CallArgs
from ..contract import Batch, LossFn, trainable_parameters
from ..errors import Unsupported
from .base import Method


class SharedClone:
    """A deep copy of `model` whose parameters are new leaves on the same storage as the user's.

    Hooks, wrappers, `.grad` and library attributes land on the copy; buffers and tensors held as
    plain attributes are the user's own tensors (one reassigned changes the cache key, `cache.structure`). `sync()` follows what a training loop changes between steps: parameter storage
    (`p.data = ...`, `model.to(...)`), buffers and train/eval mode.
    """

    def __init__(self, model: nn.Module) -> None:
        memo: dict[int, object] = {id(b): b for b in model.buffers()}
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        for module in model.modules():
            for value in vars(module).values():
                if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                    memo[id(value)] = value.detach()  # a pre-hook's weight (weight_norm): recomputed anyway
                elif isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                    memo[id(value)] = value  # a plain tensor attribute (a mask): shared, so an in-place edit is seen
        self.module = copy.deepcopy(model, memo)
        self.parameter_pairs = [(p, memo[id(p)]) for p in model.parameters()]
        self.module_pairs = list(zip(model.modules(), self.module.modules()))
        self.buffer_slots = [(theirs, mine, name) for theirs, mine in self.module_pairs
                             for name in theirs._buffers]
        self.trainable = {name: memo[id(p)] for name, p in trainable_parameters(model).items()}
        self.names = {id(p): name for name, p in model.named_parameters()}

    def sync(self) -> None:
        """Point the copy at the user's current parameter storage, buffers and modes."""
        for theirs, mine in self.parameter_pairs:
            if mine.requires_grad != theirs.requires_grad:
                raise ValueError(
                    f"requires_grad of parameter {self.names[id(theirs)]!r} changed since prepare(); "
                    "the set of trainable parameters is fixed when a method prepares: prepare again"
                )
            if not mine.is_set_to(theirs):
                mine.data = theirs.detach()
        for theirs, mine in self.module_pairs:
            if mine.training != theirs.training:
                mine.training = theirs.training
        for theirs, mine, name in self.buffer_slots:
            mine._buffers[name] = theirs._buffers[name]

    def take(self, savefield: str, batch: int) -> dict[str, torch.Tensor]:
        """Each trainable parameter's per-sample gradient from `savefield`; zeros where none came
        (the parameter did not reach the loss, as `loop` reports it)."""
        grads = {}
        for name, p in self.trainable.items():
            value = getattr(p, savefield, None)
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"{savefield} of {name!r} is a {type(value).__name__}, not a tensor")
            grads[name] = p.new_zeros(batch, *p.shape) if value is None else value
        return grads

    def clear(self, savefield: str) -> None:
        """Drop this step's `.grad` and per-sample gradients so the next step starts clean."""
        for p in self.trainable.values():
            p.grad = None
            setattr(p, savefield, None)


Forward = Callable[..., torch.Tensor]


class PeerMethod(Method):
    """A peer library run on a `SharedClone`: subclasses wrap the clone and name the attribute
    their library fills; the step backpropagates the summed per-sample losses."""

    savefield = "grad_sample"
    takes_call_args = True

    @abstractmethod
    def wrap(self, clone: nn.Module) -> Forward:
        """The library's forward over `clone`; hooks or wrappers are installed here, once."""

    def backward_context(self) -> AbstractContextManager:
        """The context the backward pass runs in (BackPACK activates its extension here)."""
        return nullcontext()

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        clone = SharedClone(model)
        try:
            forward = self.wrap(clone.module)
        except NotImplementedError as refused:  # the library's own refusal at wrap time
            raise Unsupported(str(refused), method=self.name) from refused
        savefield = self.savefield

        def step(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            clone.sync()
            batch = targets.shape[0]
            try:
                losses = loss_fn(call.call(forward), targets)
                with self.backward_context():
                    losses.sum().backward()
                return clone.take(savefield, batch)
            finally:
                clone.clear(savefield)

        return step
