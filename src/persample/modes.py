"""Compute modes: a dtype, plus TF32 matrix units for "tf32" (CUDA only), or a float32 model run
under autocast ("autocast-bf16": mixed precision as training code uses it).

One definition for the conformance suite, the benchmarks and the report ("float64", "float32",
"tf32", "bfloat16", "float16", "autocast-bf16"), so a benchmark row and a conformance record of a
mode line up.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mode:
    """`dtype`: the model's and inputs' dtype; `tf32`: TF32 matmuls; `autocast`: the dtype
    `torch.autocast` computes in; `tolerance`: the mode whose tolerance applies (its own by default)."""

    name: str
    dtype: torch.dtype
    tf32: bool = False
    autocast: torch.dtype | None = None
    tolerance: str | None = None

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

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


MODES = {
    mode.name: mode
    for mode in (
        Mode("float64", torch.float64),
        Mode("float32", torch.float32),
        Mode("tf32", torch.float32, tf32=True),
        Mode("bfloat16", torch.bfloat16),
        Mode("float16", torch.float16),
        Mode("autocast-bf16", torch.float32, autocast=torch.bfloat16, tolerance="bfloat16"),
    )
}


def get_mode(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; known: {', '.join(MODES)}")
    return MODES[name]
