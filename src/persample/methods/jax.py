"""`jax`: the same torch model and weights, run as `jax.jit(jax.vmap(jax.grad(loss of one sample)))`.

torch.fx traces the model and its loss into one graph, which is re-expressed with jax.numpy and
jax.lax, taking the weights as arguments; JAX then differentiates the single-sample loss, vectorises
it over the batch and XLA compiles the whole step once per input shape (cached across prepares).
Where torch.fx cannot trace (a Python branch on a tensor's value, as in Hugging Face models'
attention-mask helpers), the model and loss are run on real samples of the example batch under
make_fx instead (`jax_translate.capture`): one ATen graph per path the samples take, each guarded
by the values its branches read (`jax_translate.guarded`). Every call evaluates the guards first
and gives each sample the path it takes alone; a sample on a path never captured raises
`StaleStep`, and `per_sample_grads` prepares again on that batch.
What the translation cannot express faithfully is refused when preparing, by name: a custom
autograd Function (JAX would differentiate its forward, not run its backward), a region under
torch.no_grad(), a derivative taken inside forward, parametrizations and hooks. Every compile of
the step passes `compiler_options={"xla_allow_excess_precision": False}` (per compilation, never
process-wide), so half-precision results round wherever torch's ops round; on XLA:CPU float32
products and convolutions are always computed in float32 (docs/findings/jax-cpu-precision.md).
Like `jax.jit`, the step keeps the Python values it read while tracing (a config field, a loss
module's `label_smoothing`): `per_sample_grads` prepares again when the model's or the loss
module's attributes change, but not for a global or a closure's variable.

On a GPU, JAX preallocates 75% of the memory at its first use: set the environment variable
XLA_PYTHON_CLIENT_PREALLOCATE=false when JAX shares a process with torch measurements.

    >>> import torch, persample
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> grads = persample.per_sample_grads(model, torch.randn(16, 4), torch.randint(3, (16,)), method="jax")
    >>> grads["0.weight"].shape
    torch.Size([16, 8, 4])
"""
from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..assumptions import AUTOGRAD_FUNCTIONS, GRAD_MODE, MATCHES_DEFINITION, PLAIN_FORWARD, SETTING, TRANSLATABLE
from ..batch import CallArgs
from ..capabilities import Capabilities, Finding, Refusal
from ..contract import Batch, LossFn, trainable_parameters
from ..errors import StaleStep, Unsupported
from ..jax_translate.vocabulary import LAYER_TYPES
from .base import Method

NOTES = (
    "Layers outside the list are traced through with torch.fx: a custom module works when its "
    "forward uses translated torch functions (F.linear, F.conv2d, matmul, softmax, view, ...). "
    "A forward torch.fx cannot trace (Python branches on tensor values, as Hugging Face models "
    "have) is captured instead at the ATen level on real samples, one program per path, each "
    "guarded by the values its branches read. Not translated: operations whose output shape "
    "depends on the values, dropout in training mode, batch statistics, in-place ops on views "
    "(traced with torch.fx)."
)


def _backend(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
    if device.type == "cpu":
        return None
    from ..jax_translate.step import jax_backend_problem

    reason = jax_backend_problem(device)
    return Finding(reason) if reason else None


def _untranslatable(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
    """Trace and translate the model's forward (no compile); the loss is checked in prepare."""
    from ..jax_translate.tracing import FxTraceFailed
    from ..jax_translate.translation import check_translatable

    try:
        check_translatable(model)
    except FxTraceFailed:  # captured with real values when preparing: only the example batch can tell
        return None
    except Unsupported as unsupported:
        return Finding(unsupported.reason)
    return None


class JaxMethod(Method):
    """`jax`: the torch model traced with torch.fx, translated to JAX and run as jax.jit(jax.vmap(jax.grad(loss
    of one sample))), on the same weights; `optimize=False` compiles faster and runs slower.
    """

    capabilities = Capabilities(
        name="jax",
        summary="torch.fx translation to JAX: jax.jit(jax.vmap(jax.grad(loss of one sample)))",
        framework="jax",
        requires=(("jax", "jax"),),
        relies_on=(TRANSLATABLE.id, GRAD_MODE.id, AUTOGRAD_FUNCTIONS.id, PLAIN_FORWARD.id, MATCHES_DEFINITION.id),
        refusals=(
            Refusal(SETTING.id, "devices JAX has no backend for here", _backend),
            Refusal(TRANSLATABLE.id, "operations outside the vocabulary, parametrizations, module hooks; "
                    "forwards torch.fx cannot trace are captured with real values when preparing", _untranslatable),
        ),
        notes=NOTES + " Layers translated whole: " + ", ".join(sorted(t.__name__ for t in LAYER_TYPES)) + ".",
    )
    takes_call_args = True

    def __init__(self, optimize: bool = True) -> None:
        """`optimize=False` has XLA compile about twice as fast and run slower: for one-off calls."""
        self.optimize = optimize

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        from ..jax_translate.guarded import GuardedStep
        from ..jax_translate.step import PerSampleStep, needs_x64
        from ..jax_translate.tracing import FxTraceFailed, tensor_inputs
        from ..jax_translate.translation import translate

        call, targets = example_batch
        loss_fn = getattr(loss_fn, "__wrapped__", loss_fn)  # traced: its shape is checked in the trace
        device = next(iter(trainable_parameters(model).values())).device
        try:
            try:
                translation = translate(model, loss_fn, call)
            except FxTraceFailed:  # Python branches on tensor values: capture the paths with real values
                compiled = GuardedStep(model, loss_fn, call, targets, device, optimize=self.optimize)
            else:
                tensors = [*translation.trainable.values(), *translation.constants.values(), *tensor_inputs(call), targets]
                compiled = PerSampleStep(translation, device, x64=needs_x64(tensors), optimize=self.optimize)
        except StaleStep:
            raise
        except Unsupported as unsupported:
            raise Unsupported(unsupported.reason, method=self.name, layer=unsupported.layer,
                              assumption=unsupported.assumption or TRANSLATABLE.id) from None

        def step(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            return compiled(tensor_inputs(call), targets)

        step.compiled = compiled  # a PerSampleStep (torch.fx) or a GuardedStep (captured paths)
        step.warmup = step(call, targets)  # trace and compile for the example batch's shapes
        return step

    def _self_check(self, context: checks.CheckContext, raw) -> None:
        """The check batch's rows of the example batch's answer against autograd, each sample alone
        (a half-precision model is checked widened to float32: the step compiles for float32 too)."""
        if context.widened:  # translated again: the step's constants (frozen weights, buffers) are half
            per_sample = self._prepare(context.model, context.loss_fn, (context.check_call, context.check_targets)).warmup
        else:
            rows = torch.tensor(context.rows)
            per_sample = {n: g[rows.to(g.device)] for n, g in raw.warmup.items()}
        raw.warmup = None
        checks.definition_check(context, per_sample)
