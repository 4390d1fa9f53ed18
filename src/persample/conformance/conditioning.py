"""Seeds whose batches keep every ReLU input away from the kink.

At a ReLU input within rounding distance of 0, float32 and float64 can take different sides of
the kink and the two per-sample gradients legitimately differ (a cifar_cnn batch had an input at
1.1e-8: float32 methods then sat 2e-2 from float64). The conformance batches are drawn from the
first seed whose float64 forward keeps every ReLU input at least `KINK_MARGIN` from 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..batch import CallArgs
from ..workloads import Workload

KINK_MARGIN = 1e-5
RELUS = {torch.relu, torch.relu_, F.relu, torch.Tensor.relu, torch.Tensor.relu_}


class _KinkWatch(TorchFunctionMode):
    """Records the smallest |input| seen by any ReLU during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.nearest = float("inf")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in RELUS and args and isinstance(args[0], torch.Tensor) and args[0].numel():
            self.nearest = min(self.nearest, args[0].detach().abs().min().item())
        return func(*args, **(kwargs or {}))


def nearest_kink(workload: Workload, seed: int, batch_size: int) -> float:
    """Smallest |ReLU input| in the float64 forward of the workload's seeded batch."""
    problem = workload.build(size="small", batch_size=batch_size, seed=seed, dtype=torch.float64)
    watch = _KinkWatch()
    with watch:  # gradients on: a forward may differentiate itself (an energy model)
        CallArgs.of(problem.inputs).call(problem.model)
    return watch.nearest


def well_conditioned_seed(workload: Workload, batch_size: int, tries: int = 50) -> int:
    """The first seed whose batch keeps ReLU inputs `KINK_MARGIN` away from the kink."""
    for seed in range(tries):
        if nearest_kink(workload, seed, batch_size) >= KINK_MARGIN:
            return seed
    raise RuntimeError(f"{workload.name}: no seed in range({tries}) keeps ReLU inputs off the kink")
