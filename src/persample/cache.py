"""Prepared steps kept per model, so a training loop pays the checks and `auto`'s choice once.

A step is reused while the call looks the same: the same method and loss function, inputs and
targets of the same shapes, dtypes and devices, the same autocast and TF32 settings, and a model
of the same structure (its modules and their types, train/eval modes and hooks, their attributes
such as a flag or an Enum that switches a branch, or a config object, and each tensor held as a
plain attribute, by object and storage; each parameter and buffer
object with its shape, dtype, device, storage, `requires_grad` and gradient hooks), and a loss
function with the same attributes (`CrossEntropyLoss.label_smoothing`, `reduction`). Parameter *values* are not part of the key: steps
read the parameters when called, so an optimizer's in-place update is seen; new storage
(`p.data = ...`, `model.to(...)`) prepares again.
"""
from __future__ import annotations

import enum

import weakref
from collections import OrderedDict

import torch
from torch import nn

from .batch import CallArgs
from .state import INTERNAL

PER_MODEL = 4
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_STEPS: weakref.WeakKeyDictionary[nn.Module, OrderedDict] = weakref.WeakKeyDictionary()


def structure(model: nn.Module) -> tuple:
    """What a prepared step depends on besides values (see the module docstring)."""
    memo: dict[int, object] = {}
    modules = tuple(
        (name, type(m), m.training, sum(len(getattr(m, d)) for d in HOOK_DICTS), _plain_attributes(m, memo),
         _tensor_attributes(m))
        for name, m in model.named_modules(remove_duplicate=False)
    )
    params = tuple(
        (name, id(p), p.data_ptr(), tuple(p.shape), p.dtype, p.device, p.requires_grad, len(p._backward_hooks or {}))
        for name, p in model.named_parameters(remove_duplicate=False)
    )
    buffers = tuple(
        (name, id(b), b.data_ptr(), tuple(b.shape), b.dtype, b.device) for name, b in model.named_buffers(remove_duplicate=False)
    )
    return modules, params, buffers


def _plain_attributes(module: object, memo: dict[int, object] | None = None) -> tuple:
    """The attributes a forward may branch on: every value but tensors, modules and callables, by
    value (`_fingerprint`: flags, sizes, Enums, and configs by their contents)."""
    memo = {} if memo is None else memo
    return tuple((key, _fingerprint(value, memo)) for key, value in vars(module).items()
                 if key not in INTERNAL and not isinstance(value, (torch.Tensor, nn.Module)) and not callable(value))


PRIMITIVE = (bool, int, float, complex, str, bytes, type(None), enum.Enum, torch.dtype, torch.device)


def _fingerprint(value: object, memo: dict[int, object], depth: int = 0) -> object:
    """A hashable stand-in for `value` that changes when its contents do: primitives themselves;
    containers and objects with a `__dict__` (a Hugging Face config) by their items, recursively
    (each object once per `structure` call, through `memo`); anything else by its hash, else its
    `repr`. Cheaper than `repr` of a config (transformers serialises it to JSON: 0.75 ms each)."""
    if isinstance(value, PRIMITIVE):
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = ("<cycle>", type(value).__qualname__)
    if depth > 8:
        found: object = repr(value)
    elif isinstance(value, (tuple, list)):
        found = (type(value).__name__, tuple(_fingerprint(v, memo, depth + 1) for v in value))
    elif isinstance(value, dict):
        found = ("dict", tuple((repr(k), _fingerprint(v, memo, depth + 1)) for k, v in value.items()))
    elif isinstance(value, (torch.Tensor, nn.Module)) or callable(value):
        found = (type(value).__qualname__, key)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        found = (type(value).__qualname__, tuple((k, _fingerprint(v, memo, depth + 1)) for k, v in vars(value).items()))
    else:
        try:
            hash(value)
            found = value
        except TypeError:
            found = repr(value)
    memo[key] = found
    return found


def _tensor_attributes(module: nn.Module) -> tuple:
    """Tensors held as plain attributes (neither parameter nor buffer: a mask, a constant), by object
    and storage: a prepared step may hold the object it saw (a JAX trace, a peer's copy), so one
    reassigned prepares again. Tensors computed from parameters (weight_norm's `weight`, recomputed
    by its pre-hook on every forward) are left out: no step keeps them."""
    found = []
    for key, value in vars(module).items():
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.grad_fn is None:
            try:
                storage = value.data_ptr()
            except RuntimeError:  # a tensor without storage (a functorch wrapper)
                storage = None
            found.append((key, id(value), storage, tuple(value.shape), value.dtype, value.device))
    return tuple(found)


def settings() -> tuple:
    """Global settings a step's preparation reads: autocast per device type, TF32."""
    autocast = tuple(
        (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
    )
    return autocast, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def key_of(method_key: object, loss_fn, call: CallArgs, targets: torch.Tensor, model: nn.Module) -> tuple:
    """The cache key of a prepared step: the method's key, the loss function (identity and settings), the
    inputs' and targets' shapes, dtypes and devices, the global settings (autocast, TF32) and the
    model's structure; values (weights, batch contents) are not part of it.
    """
    target = (tuple(targets.shape), targets.dtype, targets.device)
    loss = structure(loss_fn) if isinstance(loss_fn, nn.Module) else _plain_attributes(loss_fn) if hasattr(loss_fn, "__dict__") else ()
    return method_key, id(loss_fn), loss, call.signature(), target, settings(), structure(model)


def cached_step(model: nn.Module, key: tuple, loss_fn, build):
    """The step kept for `key`, or `build()`'s, kept (at most `PER_MODEL` per model)."""
    steps = _STEPS.setdefault(model, OrderedDict())
    entry = steps.get(key)
    if entry is not None and entry[0] is loss_fn:  # the loss function itself, not a reused id
        steps.move_to_end(key)
        return entry[1]
    step = build()
    steps[key] = (loss_fn, step)
    while len(steps) > PER_MODEL:
        steps.popitem(last=False)
    return step


def forget(model: nn.Module, key: tuple) -> None:
    """Drop one kept step (its model took another path than when it was prepared)."""
    _STEPS.get(model, {}).pop(key, None)


def clear(model: nn.Module | None = None) -> None:
    """Forget the prepared steps of `model` (of every model if None)."""
    if model is None:
        _STEPS.clear()
    else:
        _STEPS.pop(model, None)
