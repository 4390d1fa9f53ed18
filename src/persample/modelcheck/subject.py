"""The model under check: the user's model, batch and loss, their copies in another dtype or on
another device, and batches of other sizes resampled from the user's rows."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..batch import CallArgs, Inputs
from ..contract import LossFn, check_targets, default_loss, first_trainable_parameter
from ..specs import load_spec
from ..checks.loss import check_loss_shape
from ..state import copy_model, restored_after

RESAMPLE_SEED = 0
DETERMINISM = {"rtol": 1e-4, "atol": 1e-6}  # two forwards of one batch: equal up to GPU atomics' order


@dataclass
class Variant:
    """The model, batch and loss in one dtype on one device; `model` is the user's own object when
    neither changes (so that "the model is left as found" is checked on it)."""

    model: nn.Module
    call: CallArgs
    targets: torch.Tensor
    loss_fn: LossFn
    dtype: torch.dtype
    device: torch.device

    def batch(self, size: int) -> tuple[CallArgs, torch.Tensor]:
        """A batch of `size`: the user's own at its size, else rows drawn from it with replacement
        (seeded, so every method sees the same rows)."""
        rows = self.call.batch_size
        if size == rows:
            return self.call, self.targets
        generator = torch.Generator().manual_seed(RESAMPLE_SEED + size)
        index = torch.randint(rows, (size,), generator=generator).to(self.targets.device)
        return self.call.select(index), self.targets[index]


@dataclass
class Subject:
    """What the user gave: model, inputs, targets and loss (None: cross-entropy per sample)."""

    model: nn.Module
    call: CallArgs
    targets: torch.Tensor
    loss_fn: LossFn
    name: str

    @classmethod
    def of(cls, model: nn.Module, inputs: Inputs, targets: torch.Tensor, loss_fn: LossFn | None = None,
           name: str | None = None) -> Subject:
        """Validate the user's objects; raises `TypeError` or `ValueError` naming the fix."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"the targets must be a Tensor, batch first; got {type(targets).__name__}")
        call = CallArgs.of(inputs)
        if call.batch_size < 1:
            raise ValueError("the batch is empty: give at least one sample (three or more to check that samples stay apart)")
        check_targets(targets, call.batch_size)
        for argument, tensor in [*call.tensors(), ("targets", targets)]:
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                where = "the targets" if argument == "targets" else f"input {argument}"
                raise ValueError(f"{where} hold NaN or inf values, so every gradient would be non-finite and no method "
                                 "could be judged; replace them (masked entries with a finite value) before the check")
        first_trainable_parameter(model)  # raises when nothing is trainable
        return cls(model, call, targets, loss_fn or default_loss, name or type(model).__name__)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's first trainable parameter."""
        return first_trainable_parameter(self.model).dtype

    @property
    def device(self) -> torch.device:
        """The device of the model's first trainable parameter."""
        return first_trainable_parameter(self.model).device

    @property
    def parameter_count(self) -> int:
        """The number of trainable parameter elements."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def variant(self, dtype: torch.dtype, device: torch.device) -> Variant:
        """The subject in `dtype` on `device`: the user's objects when they already are, else copies
        (floating tensors cast, integer ones moved)."""
        if dtype == self.dtype and device == self.device:
            return Variant(self.model, self.call, self.targets, self.loss_fn, dtype, device)
        model = copy_model(self.model).to(device=device, dtype=dtype)
        cast = lambda t: t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)  # noqa: E731
        return Variant(model, self.call.map(cast), cast(self.targets), self.loss_fn, dtype, device)

    def check_deterministic(self) -> None:
        """Two forwards of the same batch, from the same buffers but other random states, agree;
        raises `ValueError` when they do not (dropout in training mode, say), since then no
        per-sample gradient is reproducible to compare, and `LossNotPerSample` when the loss does
        not return one loss per sample. The model is left as found (a forward that updates its
        buffers, running statistics or a power iteration, does so on each call from the same state,
        as in every method)."""
        losses = []
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(self.device)):
            for seed in (1, 2):
                torch.manual_seed(seed)
                with restored_after(self.model):
                    losses.append(self.loss_fn(self.call.call(self.model), self.targets))
                check_loss_shape(losses[-1], self.call.batch_size)
        first, second = losses
        if not torch.allclose(first.double(), second.double(), **DETERMINISM, equal_nan=True):
            raise ValueError(
                "two forwards of the same batch give different losses: the forward is random (dropout in "
                "training mode?) or reads state it changes; per-sample gradients of a random forward cannot be "
                "compared with a reference. Call model.eval() for the check, or fix the randomness."
            )


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def load_factory(spec: str) -> Subject:
    """The subject a factory returns: `spec` is 'path/to/file.py:factory' or 'package.module:factory',
    and `factory()` returns (model, inputs, targets) or (model, inputs, targets, loss_fn).

    Raises `ValueError` naming what the factory returned instead.
    """
    factory = load_spec(spec, "model factory")
    if not callable(factory):
        raise ValueError(f"{spec!r} is a {type(factory).__name__}, not a factory: name a function returning "
                         "(model, inputs, targets) or (model, inputs, targets, loss_fn)")
    made = factory()
    if not isinstance(made, (tuple, list)) or len(made) not in (3, 4):
        raise ValueError(f"{spec}() returned {type(made).__name__}"
                         f"{f' of {len(made)}' if isinstance(made, (tuple, list)) else ''}; it must return "
                         "(model, inputs, targets) or (model, inputs, targets, loss_fn)")
    model, inputs, targets, *loss = made
    loss_fn: Callable | None = loss[0] if loss else None
    return Subject.of(model, inputs, targets, loss_fn, name=spec.rpartition(":")[2].removeprefix("make_").removeprefix("build_") or spec)
