"""The Method protocol: check once, prepare once, then call the prepared step as often as needed.

`prepare(model, loss_fn, example_batch)` refuses what the method cannot do (its declared refusals,
then the assumptions it relies on, checked on the example batch), builds the method's step and
returns a `PreparedStep`. Only the step is timed by the benchmarks. Every step, whatever the
method: takes a Tensor, tuple, list or mapping of inputs; answers an empty batch with empty
gradients; returns each gradient in its parameter's dtype; leaves buffers and the global random
state as it found them.
"""
from __future__ import annotations

import importlib.util
import time
from contextlib import nullcontext
from collections.abc import Mapping
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from .. import checks
from ..batch import CallArgs, Inputs
from ..capabilities import Capabilities, refusal
from ..contract import (
    COUPLING,
    Batch,
    LossFn,
    check_dtype_on_device,
    check_inputs_match,
    check_targets,
    default_loss,
    first_trainable_parameter,
    trainable_parameters,
)
from ..errors import LossNotPerSample, Unsupported
from ..checks.loss import check_loss_shape
from ..outputs import OutputBuffers, writing_into
from ..state import modes_and_hooks_kept, preserved, random_states_preserved

RawStep = Callable[..., dict[str, torch.Tensor]]
"""What `_prepare` builds: `raw(inputs, targets) -> {param name: (B, *param.shape)}`; `inputs` is a
`CallArgs` for methods with `takes_call_args`, else the user's form (a Tensor or a tuple, or a dict)."""


class PreparedStep:
    """`step(inputs, targets) -> {name: (B, *param.shape)}` for the model a method prepared.

    Attributes: `method` (the name), `checks` (a `CheckReport`: what was checked at prepare time
    and its cost), `prepare_seconds` (checks and building), `placement` (which layers ran where,
    for methods that say), `choice` (`auto`: what it picked and why), `reusing_outputs` (see
    `reuse_outputs`).
    """

    def __init__(self, method: Method, model: nn.Module, loss_fn: LossFn, raw: RawStep | None,
                 saved_buffers: frozenset[str] | None = frozenset(), report: checks.CheckReport | None = None) -> None:
        self._method, self.model, self.loss_fn, self.raw = method, model, loss_fn, raw
        self.method = method.name
        self.saved_buffers = saved_buffers
        self.checks = report
        self.params = trainable_parameters(model)
        self.placement: dict[str, str] | None = None
        self.choice = None
        self.prepare_seconds = 0.0
        self._outputs: OutputBuffers | None = None

    @property
    def reusing_outputs(self) -> bool:
        """Whether `reuse_outputs` was called: results are overwritten by the next call."""
        return self._outputs is not None

    def reuse_outputs(self) -> PreparedStep:
        """From now on, write the large per-sample gradients into buffers this step keeps, instead of
        new memory on every call (on a CPU, new memory costs page faults on its first write).

        Semantics: the tensors a call returns are valid until the next call of this step, which
        overwrites them (with the next batch's values); clone what you keep. A batch of another
        size (or dtype, device) gets fresh buffers, which later calls then reuse. Which tensors share
        memory: the Linear layers' weight gradients (`persample.outputs`); the others are new on
        every call. Values are the same as without reuse.

        Offered by methods with `Method.reuses_outputs` (hooks, expand); returns this step.
        Raises `Unsupported` for the others (their results come from code that allocates its own:
        torch.func, the peers' libraries, JAX, Triton kernels)."""
        if not self._method.reuses_outputs:
            raise Unsupported("does not write into reused output buffers (its results come from code that "
                              "allocates its own); reuse is offered by hooks and expand", method=self.method)
        if self._outputs is None:
            self._outputs = OutputBuffers()
        return self

    def __call__(self, inputs: Inputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        check_grad_mode()
        call = data_of(CallArgs.of(inputs))
        batch = call.batch_size
        check_targets(targets, batch)
        if batch == 0:
            return {name: p.new_zeros(0, *p.shape) for name, p in self.params.items()}
        if self.raw is None:  # prepared on an empty batch: the checks need samples
            self._adopt(self._method.prepare(self.model, self.loss_fn, (call, targets)))
        with preserved(self.model, self.saved_buffers), torch.enable_grad(), \
                (writing_into(self._outputs) if self._outputs is not None else nullcontext()):
            grads = self.raw(call if self._method.takes_call_args else call.to_user(), targets)
        if not isinstance(grads, Mapping):
            raise TypeError(f"method {self.method!r} returned a {type(grads).__name__}; a step returns a dict "
                            "{parameter name: (B, *param.shape)}")
        return {name: g.to(self.params[name].dtype) if name in self.params and isinstance(g, torch.Tensor) else g
                for name, g in grads.items()}

    def _adopt(self, other: PreparedStep) -> None:
        self.raw, self.saved_buffers, self.checks = other.raw, other.saved_buffers, other.checks
        self.placement, self.choice = other.placement, other.choice


def compiled_inner(model: nn.Module) -> nn.Module | None:
    """The module a `torch.compile`d model wraps, or None for any other model."""
    wrapped = getattr(model, "_orig_mod", None)
    return wrapped if isinstance(wrapped, nn.Module) and type(model).__name__ == "OptimizedModule" else None


class CompiledStep:
    """The step of the module a `torch.compile`d model wraps (`_orig_mod`: the same parameters, so the
    same per-sample gradients; the compiled graph is for training, and persample's hooks and
    instrumented forwards do not belong in it), keyed as the compiled model names them."""

    PREFIX = "_orig_mod."

    def __init__(self, inner: PreparedStep) -> None:
        self.inner = inner
        self.method, self.checks, self.placement, self.choice = inner.method, inner.checks, inner.placement, inner.choice

    def __call__(self, inputs: Inputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.PREFIX + name: grad for name, grad in self.inner(inputs, targets).items()}

    def reuse_outputs(self) -> CompiledStep:
        """`PreparedStep.reuse_outputs` of the wrapped step; returns this step."""
        self.inner.reuse_outputs()
        return self


class Method(ABC):
    """A way of computing per-sample gradients. Subclasses set `capabilities` and `_prepare`."""

    capabilities: Capabilities
    takes_call_args = False  # our methods take `CallArgs`; plugins get the user's form of inputs
    reuses_outputs = False  # its prepared step offers `PreparedStep.reuse_outputs`

    @property
    def name(self) -> str:
        """The method's registered name, `capabilities.name`."""
        return self.capabilities.name

    def unavailable_reason(self) -> str | None:
        """Why this method cannot run on this machine at all (a missing package), or None."""
        for module, package in self.capabilities.requires:
            if importlib.util.find_spec(module) is None:
                return f"needs the package {package!r}: pip install {package}"
        return None

    def untimed_reason(self) -> str | None:
        """Why this method's time here would mislead (it runs emulated), or None: then it is
        checked for correctness only, never timed."""
        return None

    def problem(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> Unsupported | None:
        """Why this method cannot run `model` on `device` in `dtype` (not raised), or None.

        Reads only data: the layers that couple samples (refused by every method), the packages,
        devices and dtypes of `capabilities`, then each of its `refusals`.
        """
        with random_states_preserved():  # a refusal may trace the model or import a library
            return self._problem(model, device, dtype)

    def _problem(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> Unsupported | None:
        caps, name = self.capabilities, self.name
        finding = COUPLING.finds(model, device, dtype)
        if finding is not None:  # first: refused by every method, whatever else
            return refusal(finding, COUPLING.assumption, name)
        reason = self.unavailable_reason()
        if reason:
            return Unsupported(reason, method=name, assumption="device-and-dtype")
        if device.type not in caps.devices:
            why = caps.device_reasons.get(device.type, f"does not run on {device.type}")
            return Unsupported(why, method=name, assumption="device-and-dtype")
        if dtype not in caps.dtypes:
            why = caps.dtype_reasons.get(dtype, f"does not offer {str(dtype).removeprefix('torch.')}")
            return Unsupported(why, method=name, assumption="device-and-dtype")
        try:
            check_dtype_on_device(dtype, device)
        except Unsupported as refused:
            return refused.naming(method=name)
        for declared in caps.all_refusals():
            finding = declared.finds(model, device, dtype)
            if finding is not None:
                return refusal(finding, declared.assumption, name)
        return None

    def check(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        """Raise `Unsupported` (naming the methods that can) unless this method can run `model`."""
        problem = self.problem(model, device, dtype)
        if problem is not None:
            raise self._with_alternatives(problem, model, device, dtype)

    def prepare(self, model: nn.Module, loss_fn: LossFn | None, example_batch: Batch) -> PreparedStep:
        """Check the model, the loss and the method's assumptions once, then build the step.

        Raises `Unsupported` (naming the layer, the reason and the methods that can), or
        `LossNotPerSample` (a `ValueError`) for a loss that is not one loss per sample. Runs with
        gradients enabled whatever the caller's `torch.no_grad()` (inference mode is refused).
        Whatever it returns or raises, the model is left as found (`state.preserved`: the same
        parameter and buffer objects, buffer values, flags, attributes and random states;
        `state.modes_and_hooks_kept`: train/eval modes and hooks).
        """
        check_grad_mode()
        module = isinstance(model, nn.Module)
        with torch.enable_grad(), preserved(model) if module else nullcontext(), \
                modes_and_hooks_kept(model) if module else nullcontext():
            return self._prepare_checked(model, loss_fn, example_batch)

    def _prepare_checked(self, model: nn.Module, loss_fn: LossFn | None, example_batch: Batch) -> PreparedStep:
        wrapped = compiled_inner(model)
        if wrapped is not None:
            return CompiledStep(self.prepare(wrapped, loss_fn, example_batch))
        loss_fn, call, targets, param = arguments(model, loss_fn, example_batch)
        self.check(model, param.device, param.dtype)
        check_inputs_match(model, call)
        check_targets(targets, call.batch_size)
        if call.batch_size == 0:
            return PreparedStep(self, model, loss_fn, None)
        start = time.perf_counter()
        context = checks.CheckContext(self.name, model, loss_fn, call, targets, self.captured_layers)
        try:
            with context.checking():
                checks.check_loss_per_sample(context)
                self._check_assumptions(context)
            context.release()  # the whole batch's graph and captured tensors
            with preserved(model):
                raw = self._build(context, model, loss_fn, (call if self.takes_call_args else call.to_user(), targets))
            with context.checking(), preserved(model):
                self._self_check(context, raw)
        except Unsupported as refused:
            raise self._with_alternatives(refused, model, param.device, param.dtype) from None
        report = context.finish()
        saved = None if self.capabilities.reference else context.mutated_buffers  # loop restores every buffer itself
        step = PreparedStep(self, model, loss_fn, raw, saved, report)
        step.placement = getattr(raw, "placement", None)
        step.prepare_seconds = time.perf_counter() - start
        return step

    def captured_layers(self, model: nn.Module) -> frozenset[nn.Module]:
        """The modules whose calls the checks' instrumented forward records (rule-based methods)."""
        return frozenset()

    def _check_assumptions(self, context: checks.CheckContext) -> None:
        """Check what `capabilities.relies_on` names that the instrumented forward can tell."""
        checks.check_observed(context, self.capabilities.relies_on)

    def _build(self, context: checks.CheckContext, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> RawStep:
        """Build the raw step; methods that need what the checks saw override this, not `_prepare`."""
        return self._prepare(model, loss_fn, example_batch)

    def _self_check(self, context: checks.CheckContext, raw: RawStep) -> None:
        """Hold the method's own answer on the check batch against autograd (methods override)."""

    @abstractmethod
    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> RawStep:
        """Build the raw step; the model and loss have passed every check."""

    def _with_alternatives(self, problem: Unsupported, model: nn.Module, device: torch.device,
                           dtype: torch.dtype) -> Unsupported:
        from .registry import registered

        assumption = problem.assumption
        others = [
            name for name, method in registered().items()
            if name != self.name and not method.capabilities.chooser and assumption not in method.capabilities.relies_on
            and _can_run(method, model, device, dtype)
        ]
        return problem.naming(method=self.name, supported_by=others)

    def __call__(self, model, inputs, targets, loss_fn=None) -> dict[str, torch.Tensor]:
        return self.prepare(model, loss_fn, (inputs, targets))(inputs, targets)

    def __repr__(self) -> str:
        return f"<method {self.name}>"


def arguments(model: nn.Module, loss_fn: LossFn | None, example_batch: Batch):
    """(loss function, `CallArgs`, targets, first trainable parameter) of a `prepare` call."""
    inputs, targets = example_batch
    return per_sample_loss(loss_fn or default_loss), data_of(CallArgs.of(inputs)), targets, first_trainable_parameter(model)


def data_of(call: CallArgs) -> CallArgs:
    """The inputs as data: detached (gradients are with respect to parameters; an input that
    requires grad must not collect any), and refused when made under torch.inference_mode()."""
    for name, tensor in call.tensors():
        if tensor.is_inference():
            raise ValueError(
                f"input {name} was created under torch.inference_mode(), and such tensors cannot be saved for "
                "backward; create it outside inference mode (torch.no_grad() is fine) or pass tensor.clone() made "
                "outside it")
    return call.map(torch.Tensor.detach)


def check_grad_mode() -> None:
    """Raises `ValueError` under torch.inference_mode(), which forbids gradients (torch.no_grad() is fine)."""
    if torch.is_inference_mode_enabled():
        raise ValueError("per-sample gradients cannot be computed under torch.inference_mode(), which forbids "
                         "gradients; call outside it (under torch.no_grad() is fine)")


def per_sample_loss(loss_fn: LossFn) -> LossFn:
    """`loss_fn` whose every result is checked to be one loss per sample (a loss module whose
    `reduction` changed after preparing must not pass unnoticed)."""
    if getattr(loss_fn, "_persample_checked", False):
        return loss_fn

    def checked(outputs, targets):
        losses = loss_fn(outputs, targets)
        check_loss_shape(losses, targets.shape[0])
        return losses

    checked._persample_checked = True
    checked.__wrapped__ = loss_fn
    return checked


def _can_run(method: Method, model: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    try:
        return method.problem(model, device, dtype) is None
    except Exception:  # a method whose own check breaks cannot be recommended
        return False


__all__ = ["LossNotPerSample", "Method", "PreparedStep", "RawStep"]
