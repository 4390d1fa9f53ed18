"""Launch-free steps: record any method's prepared step once in a CUDA graph, then replay it.

Most of PyTorch's gap to jax.jit is per-layer Python and kernel-launch overhead, which a graph
replay removes. A graph replays fixed shapes on fixed memory, so the captured step copies fresh
inputs into static buffers, refuses other shapes, and clones results out of graph memory.

On a machine with CUDA:

    >>> import torch
    >>> from persample.capture import Captured
    >>> model = torch.nn.Linear(4, 3).cuda()
    >>> x, y = torch.randn(8, 4, device="cuda"), torch.randint(3, (8,), device="cuda")
    >>> step = Captured("hooks").prepare(model, None, (x, y))    # captured once, here
    >>> step(x, y)["weight"].shape                               # each call: copy in, replay, clone out
    torch.Size([8, 3, 4])
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from .contract import Batch, Inputs, LossFn, as_tuple
from .errors import Unsupported
from .methods.registry import Method, Step, get

Outputs = dict[str, torch.Tensor]
NO_CUDA = "CUDA graph capture needs a CUDA device; torch.cuda.is_available() is False here"


class GraphCaptureError(RuntimeError):
    """The step ran eagerly but could not be recorded (it synchronises with the host, ...)."""


class GraphBackend(Protocol):
    """Records `run` once; `replay()` re-executes it, returning the same (static) output tensors."""

    devices: frozenset[str]

    def unavailable_reason(self) -> str | None:
        """Why graphs cannot be recorded here, or None."""

    def capture(self, run: Callable[[], Outputs]) -> Callable[[], Outputs]:
        """Record `run` once; returns `replay()`, which re-executes it and returns the same (static)
        output tensors. Raises `GraphCaptureError` when the recording fails."""


class CudaGraphBackend:
    """torch.cuda.CUDAGraph: warm up on a side stream, capture one run, replay it on demand."""

    devices = frozenset({"cuda"})

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup

    def unavailable_reason(self) -> str | None:
        """`NO_CUDA` when torch.cuda.is_available() is False, else None."""
        return None if torch.cuda.is_available() else NO_CUDA

    def capture(self, run: Callable[[], Outputs]) -> Callable[[], Outputs]:
        """Warm `run` up on a side stream, record it in a torch.cuda.CUDAGraph; returns `replay()`. Raises
        `GraphCaptureError` when the capture fails.
        """
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisation, autotuning and allocator warm-up
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = run()
        except RuntimeError as error:
            raise GraphCaptureError(str(error)) from error

        def replay() -> Outputs:
            graph.replay()
            return outputs

        return replay


def _describe(tensor: torch.Tensor) -> str:
    return f"shape {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')} on {tensor.device}"


def _check_same(name: str, expected: torch.Tensor, received: torch.Tensor) -> None:
    if not isinstance(received, torch.Tensor):
        raise ValueError(f"captured step: {name} must be a tensor; got {type(received).__name__}")
    if (received.shape, received.dtype, received.device) != (expected.shape, expected.dtype, expected.device):
        raise ValueError(
            f"captured step: {name} was captured with {_describe(expected)} but received "
            f"{_describe(received)}; a CUDA graph replays fixed shapes, so capture again "
            "(prepare the method again) for this shape"
        )


def capture_step(
    step: Step,
    example_inputs: Inputs,
    example_targets: torch.Tensor,
    *,
    backend: GraphBackend | None = None,
    name: str = "step",
) -> Step:
    """`step`, captured for the shapes of the example batch: copy in, replay, clone out.

    The graph reads the model's parameters where they live: update them in place (optimizers do),
    never replace them, or the replay reads the old memory.
    """
    backend = backend or CudaGraphBackend()
    reason = backend.unavailable_reason()
    if reason:
        raise Unsupported(reason, method=name)
    single = not isinstance(example_inputs, tuple)
    static_inputs = tuple(x.detach().clone() for x in as_tuple(example_inputs))
    static_targets = example_targets.detach().clone()
    for tensor in (*static_inputs, static_targets):
        if tensor.device.type not in backend.devices:
            raise Unsupported(f"{NO_CUDA.split(';')[0]}; the batch is on {tensor.device}", method=name)

    def run() -> Outputs:
        return step(static_inputs[0] if single else static_inputs, static_targets)

    try:
        replay = backend.capture(run)
    except GraphCaptureError as error:
        first_line = (str(error).splitlines() or [""])[0]
        raise Unsupported(
            f"its step cannot be captured in a CUDA graph ({first_line}); it probably "
            "synchronises with the host (.item(), nonzero, data-dependent shapes)",
            method=name,
        ) from error

    def captured(inputs: Inputs, targets: torch.Tensor) -> Outputs:
        received = as_tuple(inputs)
        if single == isinstance(inputs, tuple) or len(received) != len(static_inputs):
            expected = "one input tensor" if single else f"a tuple of {len(static_inputs)} input tensors"
            got = f"a tuple of {len(received)}" if isinstance(inputs, tuple) else "one tensor"
            raise ValueError(f"captured step: was captured with {expected}, received {got}")
        for index, (static, fresh) in enumerate(zip(static_inputs, received)):
            _check_same(f"input {index}", static, fresh)
        _check_same("targets", static_targets, targets)
        for static, fresh in zip((*static_inputs, static_targets), (*received, targets)):
            static.copy_(fresh)
        return {key: value.clone() for key, value in replay().items()}

    captured.__dict__.update(getattr(step, "__dict__", {}))  # e.g. the kernel method's placement
    return captured


class Captured(Method):
    """Any PyTorch method with its prepared step captured in a CUDA graph (not registered)."""

    def __init__(self, inner: str | Method, backend: GraphBackend | None = None) -> None:
        self.inner = get(inner)
        self.backend = backend or CudaGraphBackend()
        self.capabilities = dataclasses.replace(
            self.inner.capabilities,
            name=f"{self.inner.name}+graph",
            summary=f"{self.inner.name}, its step replayed from a CUDA graph (no launch overhead)",
            devices=self.inner.capabilities.devices & self.backend.devices,
            device_reasons={**self.inner.capabilities.device_reasons, **{
                device: f"{NO_CUDA.split(';')[0]}; the model is on {device}"
                for device in self.inner.capabilities.devices - self.backend.devices}},
            reference=False,
        )

    def unavailable_reason(self) -> str | None:
        """Why neither the inner method nor the graph backend can run here, or None. Code, not
        `Capabilities`: it asks this machine (CUDA present) and the inner method at run time."""
        if self.inner.capabilities.framework != "torch":
            return (
                f"CUDA graph capture wraps PyTorch steps; {self.inner.name} is a "
                f"{self.inner.capabilities.framework} method (it compiles its own step)"
            )
        return self.backend.unavailable_reason() or self.inner.unavailable_reason()

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> Step:
        step = self.inner.prepare(model, loss_fn, example_batch)
        return capture_step(step, *example_batch, backend=self.backend, name=self.name)
