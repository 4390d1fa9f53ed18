"""`auto`: the fastest method that is right for this model, chosen when preparing.

Tries the candidates of `persample.selection` in order (our methods by measured ranking, then the
documented rule, then the peers, `loop` last), passing over those whose declared refusals or known
deviations apply to the model and those whose preparation refuses on the example batch; the first
that prepares is returned, its step carrying the choice (`step.choice.describe()`). A peer or plugin,
which does not guard itself, is guarded on every call: Σᵢ gᵢ against autograd's batch gradient
(one more forward and backward); a mismatch chooses again on that batch.

    >>> import torch, persample
    >>> from persample.methods import get
    >>> step = get("auto").prepare(torch.nn.Linear(4, 3), None, (torch.randn(8, 4), torch.randint(3, (8,))))
    >>> step.method in persample.available_methods()
    True
"""
from __future__ import annotations

from torch import nn

from ..batch import CallArgs
from ..contract import Batch, LossFn
from ..errors import StaleStep
from ..checks.guard import check_sum_against_autograd
from .base import CompiledStep, Method, PreparedStep, arguments, compiled_inner, data_of
from ..capabilities import Capabilities


class AutoStep(PreparedStep):
    """The chosen method's step; when its guard finds the model taking another path than when it
    was prepared (`StaleStep`), `auto` chooses again on that batch."""

    def __init__(self, auto: Method, choice, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__(auto, model, loss_fn, None)
        self._adopt_choice(choice)

    def _adopt_choice(self, choice) -> None:
        self.inner, self.choice = choice.step, choice
        # a method without its own per-call guard (a peer, a plugin) is guarded here
        self.guarded = not choice.method.capabilities.checks_itself
        self.method, self.checks, self.placement = choice.step.method, choice.step.checks, choice.step.placement
        self.prepare_seconds = choice.step.prepare_seconds

    def __call__(self, inputs, targets):
        try:
            grads = self.inner(inputs, targets)
            if self.guarded and CallArgs.of(inputs).batch_size:
                check_sum_against_autograd(self.model, self.loss_fn, data_of(CallArgs.of(inputs)), targets, grads,
                                           self.method)
            return grads
        except StaleStep:
            from ..selection import explain_choice

            call = CallArgs.of(inputs)
            param = next(iter(self.params.values()))
            self._adopt_choice(explain_choice(self.model, param.device, param.dtype, call.batch_size,
                                              example_batch=(call, targets), loss_fn=self.loss_fn))
            return self.inner(call, targets)


class AutoMethod(Method):
    """`auto`: the fastest method that is right for this model, chosen per structure by `persample.selection`
    and verified on the example batch (not registered as a method to benchmark).
    """

    capabilities = Capabilities(
        name="auto",
        summary="the fastest method that is right for this model (persample.selection)",
        chooser=True,
        notes="Passes over methods whose refusals, known deviations or checks on the example batch fail.",
    )
    takes_call_args = True

    def prepare(self, model: nn.Module, loss_fn: LossFn | None, example_batch: Batch) -> PreparedStep:
        """The step of the method `auto` picks for `model` (`AutoStep`, with `.choice` saying what and why); an
        empty batch defers the choice to the first batch with samples. Raises `Unsupported` naming
        what every candidate refused.
        """
        from ..selection import explain_choice

        wrapped = compiled_inner(model)
        if wrapped is not None:
            return CompiledStep(self.prepare(wrapped, loss_fn, example_batch))
        loss_fn, call, targets, param = arguments(model, loss_fn, example_batch)
        if call.batch_size == 0:  # choose when a batch with samples comes: the checks need them
            return PreparedStep(self, model, loss_fn, None)
        choice = explain_choice(model, param.device, param.dtype, call.batch_size,
                                example_batch=(call, targets), loss_fn=loss_fn)
        return AutoStep(self, choice, model, loss_fn)

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        raise NotImplementedError("auto prepares through the method it chooses")
