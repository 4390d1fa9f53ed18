"""Leaving the model as it was found: the parameter and buffer objects each name holds (a functional
call swaps tensors in), buffers and attributes a forward updates, `requires_grad`, `.grad`, the
global random state; and the model widened to float32 for the checks, in place.

A forward may update buffers (a call counter, running statistics, spectral norm's power
iteration), plain attributes (a Python counter, `self.last = x`) and draw random numbers
(dropout); a loss that reads a parameter through a closure may make a peer's `.backward()` write
its `.grad`. Per-sample gradients are defined for the model as found, so every method computes
them from the found state and everything is restored afterwards.
"""
from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


SMALL_BUFFER = 1 << 20  # elements: buffers up to this size (4 MiB in float32) are saved before every step


def buffer_slots(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(owning module, local name, qualified name) of every buffer, shared ones once per owner."""
    slots = []
    for qualname, module in model.named_modules(remove_duplicate=False):
        for name, value in module._buffers.items():
            if value is not None:
                slots.append((module, name, f"{qualname}.{name}" if qualname else name))
    return slots


class BufferSnapshot:
    """The buffers' objects and versions, and the values of those that may change in place.

    `copy`: qualified names of the buffers whose values to save whatever their size (None: all).
    A prepared step saves those its preparation saw the forward modify, and every small one (a
    counter or statistics a forward might update on a path the example batch did not take), so a
    large constant buffer (a causal mask) costs nothing per step.
    """

    def __init__(self, model: nn.Module, copy: frozenset[str] | None = None) -> None:
        self.slots = buffer_slots(model)
        self.objects = [module._buffers[name] for module, name, _ in self.slots]
        self.versions = [t._version for t in self.objects]
        self.values = [
            t.detach().clone() if copy is None or qualname in copy or t.numel() <= SMALL_BUFFER else None
            for (_, _, qualname), t in zip(self.slots, self.objects)
        ]

    def changed(self) -> list[str]:
        """Qualified names of buffers replaced or modified in place since the snapshot."""
        return [
            qualname
            for (module, name, qualname), obj, version in zip(self.slots, self.objects, self.versions)
            if module._buffers.get(name) is not obj or obj._version != version
        ]

    def restore(self) -> None:
        """Put every buffer back: the original object, with its original values."""
        for index, ((module, name, qualname), obj, version, value) in enumerate(
            zip(self.slots, self.objects, self.versions, self.values)
        ):
            if module._buffers.get(name) is not obj:
                module._buffers[name] = obj
            if obj._version != version:
                if value is None:
                    raise RuntimeError(
                        f"the forward modified buffer {qualname} in place on this batch but not on the "
                        "example batch the method was prepared with, so its value was not saved and "
                        "cannot be restored; prepare the method with a batch that takes this path"
                    )
                with torch.no_grad():
                    obj.copy_(value)
                self.versions[index] = obj._version  # restored: the baseline for the next look


def _rng_devices(model: nn.Module) -> list[int]:
    if not torch.cuda.is_available() or torch.cuda.is_current_stream_capturing():
        return []
    return sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})


INTERNAL = frozenset({"_parameters", "_buffers", "_modules", "training"}) | {
    key for key in vars(nn.Module()) if key.endswith("hooks") or key.startswith("_")
}


CONTAINERS = (list, dict, set)


class StateSnapshot:
    """Each module's parameter objects (which Parameter each name holds: a block that swaps a
    tensor in, as `torch.func.functional_call` does, must not leave it there), each parameter's
    `requires_grad` and `.grad`, each module's attributes (by reference; the contents of lists,
    dicts and sets too, one level deep), the names of its buffers, and the Python and NumPy random
    states."""

    def __init__(self, model: nn.Module) -> None:
        modules = list(model.modules())  # one traversal serves every list below
        self.parameters = [(module, dict(module._parameters)) for module in modules]
        self.buffer_names = [(module, tuple(module._buffers)) for module in modules]
        unique = {id(p): p for _, slot in self.parameters for p in slot.values() if p is not None}
        self.grads = [(p, p.grad, p.requires_grad) for p in unique.values()]
        self.attributes = [
            (module, {k: v for k, v in vars(module).items() if k not in INTERNAL}) for module in modules
        ]
        self.contents = [
            (value, copy.copy(value)) for _, attributes in self.attributes for value in attributes.values()
            if type(value) in CONTAINERS
        ]
        self.python_random = random.getstate()
        self.numpy_random = np.random.get_state()

    def restore(self) -> None:
        """Put back each module's parameter objects (removing ones the block added), each parameter's
        requires_grad and .grad, each module's attributes (removing ones the forward added) and
        container contents, and the Python and NumPy random states; remove buffers the block added
        (`BufferSnapshot` puts back the found ones).
        """
        for module, saved in self.parameters:
            current = module._parameters
            if len(current) != len(saved) or any(current.get(k, _MISSING) is not v for k, v in saved.items()):
                current.clear()
                current.update(saved)
        for module, names in self.buffer_names:
            if tuple(module._buffers) != names:
                for name in [n for n in module._buffers if n not in names]:
                    del module._buffers[name]
        for param, grad, flag in self.grads:
            if param.requires_grad != flag:
                param.requires_grad_(flag)
            if param.grad is not grad:
                param.grad = grad
        for module, attributes in self.attributes:
            found = vars(module)
            for key, value in attributes.items():
                if found.get(key, _MISSING) is not value:
                    found[key] = value
            for key in [k for k in found if k not in attributes and k not in INTERNAL]:
                del found[key]  # set by the forward (a cache, `self.last = x`): not there before
        for container, saved in self.contents:
            if not _same_contents(container, saved):
                container.clear()
                if isinstance(container, list):
                    container.extend(saved)
                else:
                    container.update(saved)
        random.setstate(self.python_random)
        np.random.set_state(self.numpy_random)


_MISSING = object()


def _same_contents(container, saved) -> bool:
    """Element by element, by identity (tensors compare elementwise with ==)."""
    if len(container) != len(saved):
        return False
    if isinstance(container, dict):
        return all(k in saved and saved[k] is v for k, v in container.items())
    if isinstance(container, set):
        return all(x in saved for x in container)
    return all(a is b for a, b in zip(container, saved))


HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
              "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes, dtypes and values, NaN equal to NaN (a buffer holding NaN is unchanged)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


@contextmanager
def modes_and_hooks_kept(model: nn.Module) -> Iterator[None]:
    """Run the block, then put back every module's train/eval mode and its hook dictionaries (a hook
    a failing method registered and never removed goes; one it removed comes back). Costs a
    shallow copy of each module's hook dictionaries: for `prepare`, not for every step."""
    modules = list(model.modules())
    modes = [(m, m.training) for m in modules]
    hooks = [(m, name, dict(getattr(m, name))) for m in modules for name in HOOK_DICTS if hasattr(m, name)]
    try:
        yield
    finally:
        for module, mode in modes:
            if module.training != mode:
                module.training = mode
        for module, name, saved in hooks:
            current = getattr(module, name)
            if list(current.keys()) != list(saved.keys()) or any(current[k] is not v for k, v in saved.items()):
                current.clear()
                current.update(saved)


@contextmanager
def restored_after(model: nn.Module) -> Iterator[None]:
    """Run the block, then put the whole model back as it was: the parameter and buffer objects
    and values, `.grad`, attributes, hooks, training modes and the random states. For running code
    that may misbehave (a method under check) on a user's model; costs a copy of the state dict.
    `preserved` and `modes_and_hooks_kept` put back all but the parameters' values, copied here."""
    slots = [(m, kind, dict(getattr(m, kind))) for m in model.modules() for kind in ("_parameters", "_buffers")]
    values = {id(t): t.detach().clone() for _, _, slot in slots for t in slot.values() if t is not None}
    with preserved(model), modes_and_hooks_kept(model):
        try:
            yield
        finally:
            for module, kind, saved in slots:
                current = getattr(module, kind)
                if current.keys() != saved.keys() or any(current[k] is not v for k, v in saved.items()):
                    current.clear()
                    current.update(saved)
                with torch.no_grad():
                    for tensor in saved.values():
                        if tensor is not None and not same_values(tensor, values[id(tensor)]):
                            tensor.copy_(values[id(tensor)])


@contextmanager
def preserved(model: nn.Module, copy: frozenset[str] | None = None) -> Iterator[BufferSnapshot]:
    """Run the block, then restore the model's parameter and buffer objects (the Parameter each
    name held, also after an exception: a method that swapped a tensor in and failed leaves none
    behind), buffer values (see `BufferSnapshot`), `requires_grad`, `.grad`, plain attributes and
    the global random state. Parameter values are not copied (`restored_after` does that)."""
    snapshot = BufferSnapshot(model, copy)
    state = StateSnapshot(model)
    with torch.random.fork_rng(devices=_rng_devices(model)):
        try:
            yield snapshot
        finally:
            state.restore()
            snapshot.restore()


@contextmanager
def random_states_preserved() -> Iterator[None]:
    """Python's, NumPy's and torch's CPU random states as found after the block (importing JAX,
    for one, draws from NumPy's)."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)


HALF = (torch.float16, torch.bfloat16)


@contextmanager
def widened(model: nn.Module) -> Iterator[bool]:
    """The model's half-precision parameters and buffers in float32 for the block, in place (the
    same Parameter objects, so closures and hooks that hold them still see them), then back: a
    half value goes to float32 and back exactly. Yields whether anything was widened."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.dtype in HALF]
    saved = [(t, t.data, t.grad) for t in tensors]
    for tensor in tensors:
        tensor.data = tensor.data.float()
        if isinstance(tensor, nn.Parameter) and tensor.grad is not None:
            tensor.grad = None  # a half .grad cannot stay on a float32 parameter; put back below
    try:
        yield bool(tensors)
    finally:
        for tensor, data, grad in saved:
            tensor.data = data
            if isinstance(tensor, nn.Parameter):
                tensor.grad = grad


def rng_state(model: nn.Module) -> tuple:
    """The random state a forward of `model` may consume (CPU, and the model's CUDA devices)."""
    cuda = tuple(torch.cuda.get_rng_state(d) for d in _rng_devices(model))
    return (torch.get_rng_state(), *cuda)


def same_rng_state(a: tuple, b: tuple) -> bool:
    """Whether two tuples of random-generator states are equal, element by element."""
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of `model`, also when it holds computed tensors as plain attributes.

    `torch.nn.utils.weight_norm` and `spectral_norm` (the hook-based API) keep the last computed
    weight as a non-leaf attribute, which `copy.deepcopy` refuses; such a tensor is recomputed by
    the next forward, so the copy gets a detached clone of it.
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)
