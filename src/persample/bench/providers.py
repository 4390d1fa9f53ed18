"""What a case runs: a registered method as is ("eager"), its CUDA-graph capture ("captured"), its
step writing into kept output buffers ("reuse"), or the non-private `baseline`, each as a `Method` whose prepared step is what the benchmarks time."""
from __future__ import annotations

import torch
from torch import nn

from ..batch import CallArgs
from ..contract import Batch, LossFn, trainable_parameters
from ..errors import Unsupported
from ..methods.registry import Capabilities, Method, Step, get
from .grid import BASELINE, Case


class Baseline(Method):
    """Plain training's cost: one batch forward and backward of the mean loss (no per-sample work)."""

    capabilities = Capabilities(
        name=BASELINE,
        summary="non-private baseline: one forward+backward of the batch-mean loss",
        notes="Returns the batch gradient, not per-sample gradients; benchmarked beside the methods.",
    )

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> Step:
        params = trainable_parameters(model)
        names, tensors = list(params), list(params.values())

        def step(inputs, targets) -> dict[str, torch.Tensor]:
            loss = loss_fn(CallArgs.of(inputs).call(model), targets).mean()
            grads = torch.autograd.grad(loss, tensors, allow_unused=True, materialize_grads=True)
            return dict(zip(names, grads))

        return step


def eager(name: str) -> Method:
    """The method benchmarked as `name`: the baseline (plain training: one batch forward and backward
    of the mean loss) for `BASELINE`, else the registered method. Raises `ValueError` for an unknown name."""
    return Baseline() if name == BASELINE else get(name)


def captured(name: str) -> Method:
    """The method with its step captured in a CUDA graph (`persample.capture.Captured`)."""
    if name == BASELINE:
        raise Unsupported("the baseline is timed eagerly only; it is the reference for every variant", method=name)
    try:
        from ..capture import Captured
    except ImportError as error:
        raise Unsupported(f"the captured variant is unavailable: persample.capture failed to import ({error})",
                          method=name) from error
    return Captured(name)


def reusing(name: str) -> Method:
    """The method whose prepared step will reuse its output buffers (`PreparedStep.reuse_outputs`,
    switched on by `PreparedCase`). Raises `Unsupported` for the baseline and for a method that
    does not offer it."""
    if name == BASELINE:
        raise Unsupported("the baseline is timed eagerly only; it is the reference for every variant", method=name)
    method = get(name)
    if not method.reuses_outputs:
        raise Unsupported("does not write into reused output buffers; reuse is offered by hooks and expand",
                          method=name)
    return method


VARIANT_BUILDERS = {"eager": eager, "captured": captured, "reuse": reusing}


def provider_for(case: Case) -> Method:
    """The `Method` that runs `case`; raises `Unsupported` when its variant cannot exist here."""
    if case.variant not in VARIANT_BUILDERS:
        raise ValueError(f"unknown variant {case.variant!r}; known: {', '.join(VARIANT_BUILDERS)}")
    return VARIANT_BUILDERS[case.variant](case.method)
