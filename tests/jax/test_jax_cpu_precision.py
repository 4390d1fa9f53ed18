"""The jax method's float32 gradients are float32-accurate whichever CPU code path XLA takes.

XLA:CPU picks its kernels by CPU: YNNPACK for wide convolutions and matrix products (with
bfloat16/AMX kernels for bfloat16 operands only), Eigen with oneDNN's sgemm for the rest, and
LLVM code for the CPU's instruction set. A reduced-precision path for float32 (bfloat16 products,
oneDNN's bf16 "fpmath" mode, a TF32-like mode) would make users' float32 per-sample gradients
silently less accurate on some CPUs only, so each configuration runs here: this CPU as it is, and
narrower instruction sets emulated with `--xla_cpu_max_isa` and `ONEDNN_MAX_CPU_ISA`, with YNNPACK
off so that oneDNN and XLA's own loops do all the products. YNNPACK cannot be narrowed from outside
(it reads the CPU with cpuinfo), so on this CPU it runs its AVX-512 kernels only; its other float32
kernels (SSE2 to AVX-512) are all float32 FMA loops, and it has no float32 kernel that rounds to
bfloat16 (its bf16/AMX kernels take bfloat16 operands). docs/findings/jax-cpu-precision.md has
the numbers.

Each configuration needs a fresh process (XLA reads XLA_FLAGS and oneDNN its variables once):
about 2.5 s each on a 2-core machine.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("float32_probe.py")
X86 = platform.machine().lower() in {"x86_64", "amd64"}
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
CONFIGS = {
    # name: (XLA_FLAGS, other environment); all but the first turn YNNPACK off
    "this-cpu": ("", {}),
    "this-cpu-onednn-bf16-fpmath-allowed": (NO_YNN, {"ONEDNN_DEFAULT_FPMATH_MODE": "BF16"}),
    "avx512-without-bf16": (f"--xla_cpu_max_isa=AVX512 {NO_YNN}", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
    "avx2": (f"--xla_cpu_max_isa=AVX2 {NO_YNN}", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "sse4.2": (f"--xla_cpu_max_isa=SSE4_2 {NO_YNN}", {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
}
FLOAT32_ACCURATE = 1e-5
"""float32 rounding puts the probe ~3e-7 from float64 on every path measured; a conv with bfloat16
products puts it at 4e-3 (measured by patching the translation's convolution)."""


@pytest.mark.parametrize("config", CONFIGS)
def test_float32_gradients_are_float32_accurate_on_every_cpu_path(config, tmp_path):
    xla_flags, environment = CONFIGS[config]
    if not X86 and config != "this-cpu":
        pytest.skip("instruction sets are emulated on x86 only")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("XLA_FLAGS", "ONEDNN_", "DNNL_"))}
    env.update(environment)
    env["XLA_FLAGS"] = f"{xla_flags} --xla_dump_to={tmp_path} --xla_dump_hlo_as_text".strip()
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run([sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"the probe failed under {config}:\n{run.stderr[-3000:]}"
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    hlo = "".join(path.read_text() for path in tmp_path.glob("*after_optimizations.txt"))
    assert "convolution(" in hlo, f"XLA dumped no optimised HLO with the model's convolutions under {config}"
    if NO_YNN in xla_flags:  # the flag took effect: oneDNN and XLA's own loops did the products
        assert "__ynn_fusion" not in hlo, f"YNNPACK ran under {config}"
    for mode, error in errors.items():
        assert error < FLOAT32_ACCURATE, (
            f"{config}: the {mode} jax step's float32 gradients are {error:.2g} from float64 "
            f"(float32 rounding gives ~3e-7): a reduced-precision path is back")
