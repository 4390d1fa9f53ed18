"""`kernel`: the hooks method with each layer's formula run as one fused Triton kernel.

A kernel reads the captured input and output gradient once, accumulates in float32 and writes the
(B, *param.shape) per-sample gradient once; layers without a kernel use the shared rules, and
`placement(model)` (also the prepared step's `.placement`) says which layers ran where.

    >>> import os; os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU: Triton's CPU interpreter
    '1'
    >>> import torch, persample
    >>> from persample.methods.kernel import KernelMethod
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> KernelMethod().placement(model)
    {'0': 'triton', '2': 'triton'}
    >>> grads = persample.per_sample_grads(model, torch.randn(16, 4), torch.randint(3, (16,)), method="kernel")
    >>> grads["0.weight"].shape
    torch.Size([16, 8, 4])
"""
from __future__ import annotations

import torch
from torch import nn

from ..assumptions import SETTING
from ..capabilities import Capabilities, Finding, Refusal
from ..contract import Batch, LossFn
from .hooks import HooksLikeMethod
from ..assumptions import OUTPUT_GRADIENTS, PLAIN_FORWARD
from .rule_based import REFUSALS, RELIES_ON, RuleLookup, layer_plan, qualified_names

CPU_HINT = "set TRITON_INTERPRET=1 to run the Triton kernels on the CPU (slowly)"
KERNEL_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (decided when `persample.kernels` loads)."""
    from .. import kernels

    return kernels.INTERPRETED


def _compiled_kernels_on_cpu(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
    if device.type == "cpu" and not interpreting():  # CUDA may be here, but the tensors are not on it
        return Finding(f"the compiled Triton kernels need a CUDA device; {CPU_HINT}")
    return None


class KernelMethod(HooksLikeMethod):
    """`kernel`: the hooks method with each layer's per-sample formula as one fused Triton kernel (read once,
    write once, float32 accumulation); layers without a kernel use the shared rules, and
    `placement(model)` says which ran where.
    """

    capabilities = Capabilities(
        name="kernel",
        summary="hooks with Triton kernels per layer: one fused read-once, write-once pass each",
        devices=frozenset({"cuda", "cpu"}),
        dtypes=KERNEL_DTYPES,
        dtype_reasons={torch.float64: "the kernels accumulate in float32, so float64 would silently lose precision"},
        layers=None,  # closed-form rules where registered, the per-layer torch.func fallback elsewhere
        requires=(("triton", "triton"),),
        relies_on=(*RELIES_ON, PLAIN_FORWARD.id, OUTPUT_GRADIENTS.id),
        refusals=(Refusal(SETTING.id, "the CPU only under TRITON_INTERPRET=1", _compiled_kernels_on_cpu), *REFUSALS),
        notes="cpu only under TRITON_INTERPRET=1 (Triton's interpreter, slow); float64 models unsupported "
        "(the kernels accumulate in float32); layers without a kernel, and layers of a dtype the kernels do "
        "not take (a float64 head in a float32 model), run on the shared rules, reported by placement()",
    )

    def unavailable_reason(self) -> str | None:
        """The missing package, else "no CUDA device" unless Triton interprets on the CPU, else None.
        Code, not `Capabilities`: whether CUDA exists and the interpreter is on is known only at run time."""
        reason = super().unavailable_reason()
        if reason is None and not torch.cuda.is_available() and not interpreting():
            return f"no CUDA device; {CPU_HINT}"
        return reason

    def untimed_reason(self) -> str | None:
        """Why this machine's time would mislead (Triton's CPU interpreter), or None."""
        if interpreting():
            return "runs under Triton's CPU interpreter (TRITON_INTERPRET=1): correct, but its time says nothing of the compiled kernel"
        return None

    def rule_lookup(self) -> RuleLookup:
        """Each layer's Triton kernel rule where one exists, else the shared rule (`kernels.kernel_rule_for`)."""
        from ..kernels import kernel_rule_for

        return kernel_rule_for

    def placement(self, model: nn.Module) -> dict[str, str]:
        """{qualname: "triton" | "rules"} for every module owning a trainable parameter."""
        return {name: where for name, (where, _) in self.placement_reasons(model).items()}

    def placement_reasons(self, model: nn.Module) -> dict[str, tuple[str, str | None]]:
        """{qualname: (where, why it is not on Triton, or None)} for every layer of the method's plan
        (`rule_based.layer_plan`: a child whose parameters its parent's rule claims is the parent's)."""
        from ..kernels import placement_of

        plan = layer_plan(model, self.rule_lookup())
        return {qualname: placement_of(module) for module, qualname in qualified_names(model, plan).items()}

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        step = super()._prepare(model, loss_fn, example_batch)
        step.placement = self.placement(model)
        return step
