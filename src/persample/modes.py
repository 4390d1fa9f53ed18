"""Compute modes and the tolerances each is judged by: one table (`MODES`) read by every consumer.

A mode is a dtype, plus TF32 matrix units for "tf32" (CUDA only), or a float32 model run under
autocast ("autocast-bf16": mixed precision as training code uses it). Each `Mode` carries what the
rest of the package asks about it: the tolerances of its precision for each quantity compared
(`QUANTITIES`), the device types that offer it (the conformance matrix), the workload families whose
CI profile runs it, and the device types whose benchmark grid times it (and whose calibration
measures its matrix throughput). The order of `MODES` is the display order (the report's matrices,
capability tables). Adding a mode is one entry in `MODES`; a new precision also needs one
`Tolerances` row, each number with the measurement that sets it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

REFERENCE = "reference"
"""Quantity: per-sample gradients against the float64 loop reference (`reference.reference_grads`)."""
TRANSLATION = "translation"
"""Quantity: the same computation done another way in the same precision, against torch's: the JAX
translation against the torch module, a Triton kernel against the layer rule, a layer rule against
the loop (in float64)."""
NORM = "norm"
"""Quantity: per-sample gradient norms ‖gᵢ‖₂ over all parameters (`per_sample_grad_norms`), against
the norms of the float64 reference."""
QUANTITIES = (REFERENCE, TRANSLATION, NORM)


@dataclass(frozen=True)
class Tolerance:
    """Bounds on the two relative errors `reference.compare` measures (dimensionless):
    `relative`, ‖ĝ − g‖_F / max(‖g‖_F, floor) per parameter over the whole batch; `per_sample`, the
    same for the worst single sample (the floors: `reference.VANISHING_FRACTION`)."""

    relative: float
    per_sample: float


@dataclass(frozen=True)
class Tolerances:
    """One precision's tolerances, per quantity compared.

    `reference`: against the float64 reference; `translation`: against torch in the same
    precision; `guard`: the prepared step's per-call check (`checks/guard.py`), the residual
    ‖Σᵢ gᵢ − ∇(Σᵢ ℓᵢ)‖ over the parameter's batch-gradient norm (floored like the comparison);
    `norm` (derived): per-sample gradient norms against the reference's.
    """

    reference: Tolerance
    translation: Tolerance
    guard: float

    @property
    def norm(self) -> Tolerance:
        """The reference tolerance: |‖ĝᵢ‖ − ‖gᵢ‖| ≤ ‖ĝᵢ − gᵢ‖ (triangle inequality), so norms of
        gradients within the reference tolerance are within it too, up to the vanishing floor's
        share (at most √(1 + P·10⁻⁴) for P parameters)."""
        return self.reference

    def of(self, quantity: str) -> Tolerance:
        """The tolerance for `quantity` (one of `QUANTITIES`); raises ValueError for another."""
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {quantity!r}; known: {', '.join(QUANTITIES)}")
        return getattr(self, quantity)


# Each precision's row. A tolerance that holds on one CPU vendor only is a finding to explain
# (docs/findings/), not a number to widen.
FLOAT64 = Tolerances(
    reference=Tolerance(relative=1e-10, per_sample=1e-9),
    # The layer rules against the loop and the JAX translation against torch, both in float64:
    # measured at most 5.1e-16 (the translation, every layer type in tests/jax/test_jax_layers.py).
    translation=Tolerance(relative=1e-10, per_sample=1e-10),
    guard=1e-6,
)
FLOAT32 = Tolerances(
    reference=Tolerance(relative=1e-4, per_sample=1e-3),
    # A kernel and the float64 rule see the same inputs: only float32 arithmetic and the final
    # rounding separate them. In float32, a norm group of two close elements divides the rounding
    # of its mean by their small spread: the shared rule run in float32 is itself up to 3e-5 (per
    # sample) from float64 there.
    translation=Tolerance(relative=5e-5, per_sample=1e-4),
    guard=1e-3,
)
TF32 = Tolerances(
    reference=Tolerance(relative=1e-2, per_sample=5e-2),
    # Not measured: no test compares a translation in TF32 (the kernel tests run float32 and the
    # half precisions). TF32 keeps float16's 10 mantissa bits, so float16's bound applies.
    translation=Tolerance(relative=2e-3, per_sample=2e-3),
    guard=1e-3,  # the guard sees the dtype, float32: TF32 runs under float32's bound
)
# Half precisions: measured on the CPU (B=8, every zoo model), the float-exact loop itself sits up
# to 3.2e-2 / 6.4e-2 (float16) and 1.1e-1 / 3.3e-1 (bfloat16) from float64 on conv nets, where
# rounding flips ReLU kinks; these bounds still reject a gradient off by a factor of B.
FLOAT16 = Tolerances(
    reference=Tolerance(relative=5e-2, per_sample=1.5e-1),
    # Two units in the last place (2⁻¹⁰ each) for a translation that rounds where torch rounds
    # (torch computes in float32 and rounds once); measured: the JAX translation at most 3.9e-4
    # (instancenorm with running statistics); the kernel tests pass within it too.
    translation=Tolerance(relative=2e-3, per_sample=2e-3),
    guard=1e-2,
)
BFLOAT16 = Tolerances(
    reference=Tolerance(relative=2e-1, per_sample=5e-1),
    # bfloat16 keeps 8 bits (2⁻⁸ = 3.9e-3 per rounding); measured: the JAX translation at most
    # 4.4e-3 (logsoftmax); the kernel tests pass within it too. (The translation test
    # allowed 1.6e-2 elementwise, two units in the last place; this is the tightest that passes.)
    translation=Tolerance(relative=1e-2, per_sample=1e-2),
    guard=5e-2,
)

SELF_CHECK = Tolerance(relative=1e-3, per_sample=1e-2)
"""What a method's checks at prepare time allow, whatever the mode: they compute in float32 or
wider with autocast off (`checks/context.py`), so one bound serves every mode: far above float32
rounding (~1e-6), far below the 5% discrepancy they must catch."""


@dataclass(frozen=True)
class Mode:
    """A compute mode.

    `dtype`: the model's and inputs' dtype; `tolerances`: those of the precision it computes in;
    `devices`: the device types ("cpu", "cuda") that offer it (the hardware may still lack it:
    `unsupported_reason`); `tf32`: TF32 matmuls; `autocast`: the dtype `torch.autocast` computes
    in; `ci`: the workload families ("zoo", "adversarial") whose CI profile runs it;
    `benchmarked`: the device types whose benchmark grid times it and whose calibration measures
    its matrix throughput.
    """

    name: str
    dtype: torch.dtype
    tolerances: Tolerances
    devices: tuple[str, ...] = ("cpu", "cuda")
    tf32: bool = False
    autocast: torch.dtype | None = None
    ci: tuple[str, ...] = ()
    benchmarked: tuple[str, ...] = ()

    @property
    def itemsize(self) -> int:
        """Bytes per element of `dtype`."""
        return torch.empty((), dtype=self.dtype).element_size()

    def tolerance(self, quantity: str = REFERENCE) -> Tolerance:
        """The tolerance for `quantity` (one of `QUANTITIES`); raises ValueError for another."""
        return self.tolerances.of(quantity)

    def unsupported_reason(self, device: torch.device) -> str | None:
        """Why `device` cannot run this mode, or None."""
        if self.tf32 and device.type != "cuda":
            return "TF32 is an NVIDIA tensor-core mode; it needs a CUDA device"
        if self.tf32 and torch.cuda.get_device_capability(device)[0] < 8:
            return f"{torch.cuda.get_device_name(device)} has no TF32 tensor cores (needs compute capability 8.0+)"
        if device.type == "cuda" and torch.bfloat16 in (self.dtype, self.autocast) and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no bfloat16 support"
        return None

    def enable(self) -> tuple[bool, bool]:
        """TF32 on for "tf32", off otherwise (cuBLAS matmuls, cuDNN convolutions); returns the old flags."""
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        return saved

    @staticmethod
    def restore(flags: tuple[bool, bool]) -> None:
        """Put back the TF32 flags `enable` returned."""
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags

    @contextmanager
    def active(self, device: str | torch.device = "cpu") -> Iterator[None]:
        """TF32 as the mode says and, for an autocast mode, autocast on `device`'s type."""
        flags = self.enable()
        device_type = torch.device(device).type
        try:
            if self.autocast is None:
                yield
            else:
                with torch.autocast(device_type, dtype=self.autocast):
                    yield
        finally:
            self.restore(flags)


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (  # in display order: the usual training modes first, the reference's last
        Mode("float32", torch.float32, FLOAT32, ci=("zoo", "adversarial"), benchmarked=("cpu", "cuda")),
        Mode("tf32", torch.float32, TF32, devices=("cuda",), tf32=True, benchmarked=("cuda",)),
        Mode("bfloat16", torch.bfloat16, BFLOAT16, ci=("zoo",), benchmarked=("cuda",)),
        Mode("float16", torch.float16, FLOAT16, benchmarked=("cuda",)),
        # Mixed precision is where the adversarial models break: their CI profile runs it.
        Mode("autocast-bf16", torch.float32, BFLOAT16, autocast=torch.bfloat16, ci=("adversarial",)),
        Mode("float64", torch.float64, FLOAT64),
    )
}
"""Every mode, by name, in display order."""


def get_mode(name: str) -> Mode:
    """The mode called `name`; raises ValueError naming the known ones for another."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; known: {', '.join(MODES)}")
    return MODES[name]


def mode_name(dtype: torch.dtype, tf32: bool = False) -> str:
    """The mode results computed in `dtype` belong to: "float32", "bfloat16", ... or "tf32" for
    float32 with TF32 enabled (the name only; it may name no mode, e.g. "int64")."""
    name = str(dtype).removeprefix("torch.")
    return "tf32" if tf32 and dtype == torch.float32 else name


def tolerance_for(mode: torch.dtype | str, quantity: str = REFERENCE, *, tf32: bool = False) -> Tolerance:
    """The tolerance for `quantity` (one of `QUANTITIES`) of results computed in `mode`: a dtype
    (with `tf32` for float32 under TF32) or a mode name such as "tf32" or "autocast-bf16" (which
    takes the tolerances of the precision it computes in). Raises ValueError for a dtype or name
    without a mode, or an unknown quantity."""
    name = mode if isinstance(mode, str) else mode_name(mode, tf32)
    if name not in MODES:
        raise ValueError(f"no tolerance for {name!r}; known modes: {', '.join(MODES)}")
    return MODES[name].tolerance(quantity)


def modes_on(device_type: str) -> tuple[str, ...]:
    """The modes a device type ("cpu", "cuda") offers, in display order, before asking the hardware
    (`Mode.unsupported_reason`); empty for a device type no mode names."""
    return tuple(name for name, mode in MODES.items() if device_type in mode.devices)


def ci_modes(family: str) -> tuple[str, ...]:
    """The modes the CI profile runs for a workload family ("zoo", "adversarial"), in display order."""
    return tuple(name for name, mode in MODES.items() if family in mode.ci)


def benchmark_modes(*device_types: str) -> tuple[str, ...]:
    """The modes the benchmark grids of `device_types` time (and calibration measures), in display order."""
    return tuple(name for name, mode in MODES.items() if set(device_types) & set(mode.benchmarked))


def display_key(name: str) -> tuple[int, str]:
    """Sort key for mode (or dtype) names: the order of `MODES`, unknown names last, alphabetically."""
    order = list(MODES)
    return (order.index(name) if name in order else len(order), name)
