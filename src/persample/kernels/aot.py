"""Compile every kernel ahead of time for a GPU target, on a machine without one.

The interpreter checks what the kernels compute, not whether they compile: this lowers each kernel,
in each autotune configuration and dtype, through Triton's real pipeline to a cubin for the target
(default H100, sm_90) and reports registers, spills and shared memory. Needs TRITON_INTERPRET unset.

    python -m persample.kernels.aot            # one line per (kernel, dtype, config)
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from . import conv, embedding, linear, norms
from .tuning import INTERPRETED

H100 = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
TYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Pointers that do not carry the data dtype.
POINTER_TYPES = {"sorted_ptr": "i64", "order_ptr": "i64", "stats_ptr": "fp32"}


@dataclass(frozen=True)
class Build:
    kernel: str
    dtype: str
    config: str
    registers: int
    local_bytes: int  # register spills (and stack arrays) live in local memory
    shared_bytes: int
    tensor_cores: bool  # wgmma (Hopper) or mma in the PTX


def _autotuned(kernel, flags: dict) -> list[tuple[object, dict, dict]]:
    """(jit function, constexprs, launch options) for each GPU config of an autotuned kernel."""
    return [
        (kernel.fn, {**flags, **cfg.kwargs}, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        for cfg in kernel.configs
    ]


def variants(dtype: str) -> list[tuple[object, dict, dict]]:
    """Every kernel with the constexprs its launcher passes, for one data dtype."""
    precision = "ieee" if dtype == "float32" else "tf32"
    both = {"HAS_WEIGHT": True, "HAS_BIAS": True}
    row = {"CENTER": True, "INLINE_STATS": True, **both, "BLOCK_R": 16, "BLOCK_F": 256}
    return [
        *_autotuned(linear._linear_grads_kernel, {**both, "PRECISION": precision}),
        *_autotuned(embedding._embedding_grads_kernel, {"SEARCH_STEPS": 7, "PRECISION": precision}),
        *_autotuned(conv._conv_grads_kernel, {"K": 9, **both, "PRECISION": precision}),
        (norms._segment_moments_kernel, {"CENTER": True, "BLOCK": 4096}, {"num_warps": 8}),
        (norms._row_affine_grads_kernel, row, {"num_warps": 8}),
        (norms._row_affine_grads_kernel, {**row, "BLOCK_R": 1, "BLOCK_F": norms.MAX_ROW_BLOCK}, {"num_warps": 8}),
        (norms._row_affine_grads_kernel, {**row, "INLINE_STATS": False, "BLOCK_R": 4, "BLOCK_F": 1024}, {"num_warps": 8}),
        (norms._channel_affine_grads_kernel, {**both, "BLOCK_C": 8, "BLOCK_S": 512}, {"num_warps": 8}),
    ]


def build(fn, dtype: str, constexprs: dict, options: dict, target: GPUTarget = H100) -> Build:
    """Compile one jit function with these constexprs and launch options; pointers carry `dtype`."""
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + POINTER_TYPES.get(name, TYPES[dtype])
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    fixed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
    compiled = compile(ASTSource(fn=fn, signature=signature, constexprs=fixed), target=target, options=options)
    registers, local = _resource_usage(compiled.asm["cubin"])
    blocks = ",".join(f"{k}={v}" for k, v in constexprs.items() if k.startswith("BLOCK"))
    ptx = compiled.asm["ptx"]
    return Build(
        fn.__name__, dtype, f"{blocks} warps={options.get('num_warps')}", registers, local,
        compiled.metadata.shared, "wgmma" in ptx or "mma.sync" in ptx,
    )


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local memory bytes) as cuobjdump reads them from the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        command = [str(CUOBJDUMP), "--dump-resource-usage", file.name]
        usage = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"LOCAL:(\d+)", usage).group(1))


def build_all(target: GPUTarget = H100, dtypes: tuple[str, ...] = tuple(TYPES)) -> list[Build]:
    """Every kernel variant in every dtype, compiled for `target`."""
    if INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    return [build(fn, dtype, *variant, target) for dtype in dtypes for fn, *variant in variants(dtype)]


if __name__ == "__main__":
    for result in build_all():
        print(f"{result.kernel:30} {result.dtype:8} {result.config:44} regs={result.registers:3} "
              f"local={result.local_bytes} shared={result.shared_bytes} tensor_cores={result.tensor_cores}")
