"""The floors of a case: bytes that must move and FLOPs that must run, and the time they take at
this machine's measured rates (`calibration`). Two floors:

- warm (`floor_s`): every byte at the bandwidth into memory already touched,
  `max(bytes/BW, flops/peak)`: what a step writing into buffers it reuses could reach;
- fresh-output (`fresh_floor_s`): the per-sample gradients allocated and written at the
  fresh-write rate (allocation + first touch + write, as a step returning new tensors does), the
  rest at the warm bandwidth, `max(out/fresh + (bytes - out)/BW, flops/peak)`. On a CPU a fresh
  write costs more than its bytes (page faults), so this is the floor a step returning new tensors
  is held against.

Bytes: the batch read once, the parameters read once, the per-sample gradients written once.
FLOPs: forward + gradient to each layer's input (where a trainable layer lies upstream) +
per-sample parameter gradients, counted per layer (each layer rule's `flops`, `persample.rules`) on
a batch of one and scaled by B.
Matrix products outside those layers (attention's q·kᵀ and softmax·v) are counted with torch's
`FlopCounterMode` and cost twice more in the backward when gradients flow through them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..contract import as_tuple, trainable_parameters
from ..workloads import Problem, get_workload
from ..layers import LayerInput
from ..rules import layer_rule
from .grid import Case
from ..modes import get_mode


@dataclass(frozen=True)
class Floor:
    """A case's roofline floor (Williams et al. 2009): the `bytes` it must move and the `flops` it must compute
    at least; `uncounted` names the trainable layer types without a FLOP rule.
    """

    bytes: int
    flops: float
    uncounted: tuple[str, ...] = ()  # layer types with trainable parameters but no FLOP rule
    output_bytes: int = 0  # of `bytes`, the per-sample gradients written (B × trainable parameters)

    def seconds(self, bandwidth: float | None, throughput: float | None) -> float | None:
        """The warm floor in seconds, `max(bytes / bandwidth, flops / throughput)`, given bytes/s into
        memory already touched and FLOP/s (None if either is unknown): what a step writing its
        per-sample gradients into buffers it reuses could reach."""
        if not bandwidth or not throughput:
            return None
        return max(self.bytes / bandwidth, self.flops / throughput)

    def fresh_seconds(self, bandwidth: float | None, fresh_write: float | None,
                      throughput: float | None) -> float | None:
        """The fresh-output floor in seconds: the per-sample gradients allocated and written at the
        fresh-write rate, every other byte at the warm `bandwidth`, against the FLOPs' time,
        `max(output_bytes / fresh_write + (bytes - output_bytes) / bandwidth, flops / throughput)`;
        what a step returning new tensors could reach. None if a rate is unknown (a calibration
        from before the fresh rate was measured)."""
        if not bandwidth or not fresh_write or not throughput:
            return None
        return max(self.output_bytes / fresh_write + (self.bytes - self.output_bytes) / bandwidth,
                   self.flops / throughput)


def _owns_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def _trainable_names(module: nn.Module, params: tuple[str, ...]) -> frozenset[str]:
    """The names, among the module's own parameters and the rule's `params`, whose per-sample gradients
    a method computes: a trainable own parameter, or a tensor recomputed from parameters on every call
    (weight_norm, spectral_norm, parametrize: not a parameter of the module itself) when any
    parameter below the module trains."""
    own = module._parameters
    recomputed_trains = any(p.requires_grad for p in module.parameters())
    return frozenset(
        name for name in {*own, *params}
        if (own[name].requires_grad if own.get(name) is not None
            else name not in own and isinstance(getattr(module, name, None), torch.Tensor) and recomputed_trains))


def count_flops(model: nn.Module, inputs) -> tuple[float, tuple[str, ...]]:
    """FLOPs of the per-sample-gradient computation on `inputs` (as given, usually one sample)."""
    # Imported here: it imports Triton, which must not load before a test session's conftest has
    # chosen Triton's interpreter (TRITON_INTERPRET is read when Triton's own kernels are defined).
    from torch.utils.flop_counter import FlopCounterMode

    state = {"depth": 0, "last": 0, "total": 0.0, "upstream": False}
    uncounted: set[str] = set()
    counter = FlopCounterMode(display=False)

    def close_functional() -> None:
        functional = counter.get_total_flops() - state["last"]
        state["total"] += functional * (3 if state["upstream"] else 1)
        state["last"] = counter.get_total_flops()

    def before(module, args) -> None:
        if state["depth"] == 0:
            close_functional()
        state["depth"] += 1

    def after(module, args, kwargs, output) -> None:
        state["depth"] -= 1
        if state["depth"] == 0:
            rule = layer_rule(module)
            own = _trainable_names(module, rule.params)
            flops = rule.flops(module, LayerInput(args, kwargs), output[0] if isinstance(output, tuple) else output, own)
            trainable = _owns_trainable(module)
            state["total"] += flops.forward + flops.input_grad * state["upstream"] + flops.param_grad
            state["upstream"] |= trainable
            state["last"] = counter.get_total_flops()

    def unruled(module, args) -> None:
        uncounted.add(type(module).__name__)
        state["upstream"] = True

    handles = []
    for module in model.modules():
        rule = layer_rule(module)
        if rule is not None and rule.flops is not None:
            handles += [module.register_forward_pre_hook(before),
                        module.register_forward_hook(after, with_kwargs=True)]
        elif _owns_trainable(module):
            handles.append(module.register_forward_pre_hook(unruled))
    try:
        with counter, torch.no_grad():
            model(*as_tuple(inputs))
            close_functional()
    finally:
        for handle in handles:
            handle.remove()
    return state["total"], tuple(sorted(uncounted))


def _bytes_per_row(tensors, itemsize: int) -> int:
    return sum(t[:1].numel() * (itemsize if t.is_floating_point() else t.element_size()) for t in tensors)


@functools.lru_cache(maxsize=None)
def _per_sample(workload: str, size: str) -> tuple[float, tuple[str, ...], int, int, Problem]:
    """FLOPs, uncounted layers, trainable and all parameter counts, and the problem, for one sample."""
    problem = get_workload(workload).build(size=size, batch_size=1)
    flops, uncounted = count_flops(problem.model, problem.inputs)
    trainable = sum(p.numel() for p in trainable_parameters(problem.model).values())
    every = sum(p.numel() for p in problem.model.parameters())
    return flops, uncounted, trainable, every, problem


def floor_for(case: Case) -> Floor:
    """The floor of `case` (its method and variant do not change what must be done)."""
    flops, uncounted, trainable, every, problem = _per_sample(case.workload, case.size)
    itemsize = get_mode(case.mode).itemsize
    batch_bytes = _bytes_per_row((*as_tuple(problem.inputs), problem.targets), itemsize) * case.batch_size
    output = case.batch_size * trainable * itemsize
    moved = batch_bytes + every * itemsize + output
    return Floor(int(moved), flops * case.batch_size, uncounted, int(output))
