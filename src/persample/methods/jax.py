"""`jax`: the same torch model and weights, run as `jax.jit(jax.vmap(jax.grad(loss of one sample)))`.

torch.fx traces the model and its loss into one graph, which is re-expressed with jax.numpy and
jax.lax, taking the weights as arguments; JAX then differentiates the single-sample loss, vectorises
it over the batch and XLA compiles the whole step once per input shape (cached across prepares).

On a GPU, JAX preallocates 75% of the memory at its first use: set the environment variable
XLA_PYTHON_CLIENT_PREALLOCATE=false when JAX shares a process with torch measurements.

    >>> import torch, persample
    >>> import persample.methods.jax  # registers "jax"
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> grads = persample.per_sample_grads(model, torch.randn(16, 4), torch.randint(3, (16,)), method="jax")
    >>> grads["0.weight"].shape
    torch.Size([16, 8, 4])
"""
from __future__ import annotations

import torch
from torch import nn

from ..contract import Batch, LossFn, as_tuple, trainable_parameters
from ..errors import Unsupported
from ..jax_translate.vocabulary import LAYER_TYPES
from .registry import Capabilities, Method, Step, register

NOTES = (
    "Layers outside the list are traced through with torch.fx: a custom module works when its "
    "forward uses translated torch functions (F.linear, F.conv2d, matmul, softmax, view, ...). "
    "Not translated: data-dependent Python control flow, dropout in training mode, batch "
    "statistics, in-place ops on views."
)


@register
class JaxMethod(Method):
    capabilities = Capabilities(
        name="jax",
        summary="torch.fx translation to JAX: jax.jit(jax.vmap(jax.grad(loss of one sample)))",
        framework="jax",
        layers=LAYER_TYPES,
        requires=(("jax", "jax"),),
        notes=NOTES,
    )

    def __init__(self, optimize: bool = True) -> None:
        """`optimize=False` has XLA compile about twice as fast and run slower: for one-off calls."""
        self.optimize = optimize

    def problem(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> Unsupported | None:
        found = super().problem(model, device, dtype)
        if found is not None or device.type == "cpu":
            return found
        from ..jax_translate.step import jax_backend_problem

        reason = jax_backend_problem(device)
        return Unsupported(reason, method=self.name) if reason else None

    def find_unsupported(self, model: nn.Module) -> Unsupported | None:
        """Trace and translate the model's forward (no compile); the loss is checked in prepare."""
        reason = self.unavailable_reason()
        if reason:
            return Unsupported(reason, method=self.name)
        from ..jax_translate.translation import check_translatable

        try:
            check_translatable(model)
        except Unsupported as unsupported:
            return unsupported
        return None

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch) -> Step:
        from ..jax_translate.step import PerSampleStep, needs_x64
        from ..jax_translate.translation import translate

        inputs, targets = example_batch
        translation = translate(model, loss_fn, len(as_tuple(inputs)))
        device = next(iter(trainable_parameters(model).values())).device
        tensors = [*translation.trainable.values(), *translation.constants.values(), *as_tuple(inputs), targets]
        step = PerSampleStep(translation, device, x64=needs_x64(tensors), optimize=self.optimize)
        step(inputs, targets)  # warm up: trace and compile for the example batch's shapes
        return step
