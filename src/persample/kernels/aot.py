"""Compile every kernel ahead of time for a GPU target, on a machine without one.

The interpreter checks what the kernels compute, not whether they compile: this lowers each kernel,
in each autotune configuration and for each dtype combination a model feeds it (`tuning.FEEDS`:
x, grad_out and parameter dtypes, each pointer typed separately), through Triton's real pipeline
to a cubin for the target (default H100, sm_90) and reports registers, spills and shared memory.
Needs TRITON_INTERPRET unset.

    python -m persample.kernels.aot            # one line per (kernel, pointer dtypes, config)
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from . import conv, embedding, linear, norms
from .tuning import DATA_DTYPES, FEEDS, INTERPRETED, dot_operands

H100 = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
# Which tensor of the feed (x, grad_out, parameter) each data pointer points into; the others are fixed.
ROLES = {"x_ptr": 0, "g_ptr": 1, "gw_ptr": 2, "gb_ptr": 2, "out_ptr": 2}
POINTER_TYPES = {"sorted_ptr": "i64", "order_ptr": "i64", "stats_ptr": "fp32"}

Feed = tuple[torch.dtype, torch.dtype, torch.dtype]


@dataclass(frozen=True)
class Build:
    """One ahead-of-time compilation of a kernel for a GPU target: its pointer dtypes and configuration,
    registers per thread, local (spill) and shared memory in bytes, and whether it uses tensor cores.
    """

    kernel: str
    dtypes: str  # "x=fp32 g=bf16 gw=fp32 ...": the data pointers' element types
    config: str
    registers: int
    local_bytes: int  # local memory: LOCAL plus the STACK frame, where ptxas puts register spills
    shared_bytes: int
    tensor_cores: bool  # wgmma (Hopper) or mma in the PTX


def _autotuned(kernel, flags: dict) -> list[tuple[object, dict, dict]]:
    """(jit function, constexprs, launch options) for each GPU config of an autotuned kernel."""
    return [
        (kernel.fn, {**flags, **cfg.kwargs}, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        for cfg in kernel.configs
    ]


def variants(feed: Feed) -> list[list[tuple[object, dict, dict]]]:
    """Every kernel as the list of its configurations (jit function, the constexprs its launcher
    passes, launch options) for x, grad_out and parameters of the `feed` dtypes."""
    x, grad, _ = feed
    both = {"HAS_WEIGHT": True, "HAS_BIAS": True}
    row = {"CENTER": True, "INLINE_STATS": True, **both, "BLOCK_R": 16, "BLOCK_F": 256}
    return [
        _autotuned(linear._linear_grads_kernel, {**both, **dot_operands("matmul", x, grad)}),
        _autotuned(embedding._embedding_grads_kernel, {"SEARCH_STEPS": 7, **dot_operands("exact", grad, grad)}),
        _autotuned(conv._conv_grads_kernel, {"K": 9, **both, **dot_operands("conv", x, grad)}),
        [(norms._segment_moments_kernel, {"CENTER": True, "BLOCK": 4096}, {"num_warps": 8})],
        [
            (norms._row_affine_grads_kernel, row, {"num_warps": 8}),
            (norms._row_affine_grads_kernel, {**row, "BLOCK_R": 1, "BLOCK_F": norms.MAX_ROW_BLOCK}, {"num_warps": 8}),
            (norms._row_affine_grads_kernel, {**row, "INLINE_STATS": False, "BLOCK_R": 4, "BLOCK_F": 1024}, {"num_warps": 8}),
        ],
        [(norms._channel_affine_grads_kernel, {**both, "BLOCK_C": 8, "BLOCK_S": 512}, {"num_warps": 8})],
    ]


def signature(fn, feed: Feed, constexprs: dict) -> dict[str, str]:
    """Triton's signature of `fn`: each data pointer typed by its tensor in the feed."""
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in ROLES:
            types[name] = "*" + DATA_DTYPES[feed[ROLES[name]]].name
        elif name.endswith("_ptr"):
            types[name] = "*" + POINTER_TYPES[name]
        else:
            types[name] = "fp32" if name == "eps" else "i32"
    return types


def build(fn, feed: Feed, constexprs: dict, options: dict, target: GPUTarget = H100) -> Build:
    """Compile one jit function with these constexprs and launch options for this feed."""
    types = signature(fn, feed, constexprs)
    fixed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
    compiled = compile(ASTSource(fn=fn, signature=types, constexprs=fixed), target=target, options=options)
    registers, local = _resource_usage(compiled.asm["cubin"])
    blocks = ",".join(f"{k}={v}" for k, v in constexprs.items() if k.startswith("BLOCK"))
    dtypes = " ".join(f"{name.removesuffix('_ptr')}={types[name][1:]}" for name in fn.arg_names if name in ROLES)
    ptx = compiled.asm["ptx"]
    return Build(
        fn.__name__, dtypes, f"{blocks} warps={options.get('num_warps')}", registers, local,
        compiled.metadata.shared, "wgmma" in ptx or "mma.sync" in ptx,
    )


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local memory bytes: LOCAL + STACK) as cuobjdump reads them from the
    cubin. Register spills show as STACK (STL/LDL to the stack frame), with LOCAL still 0."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        command = [str(CUOBJDUMP), "--dump-resource-usage", file.name]
        usage = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    registers, stack, local = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK", "LOCAL"))
    return registers, stack + local


def plan(feeds: tuple[Feed, ...] = FEEDS) -> list[tuple]:
    """(fn, feed, constexprs, options) for each kernel in each configuration and feed; a kernel
    that does not read every tensor of the feed is built once per distinct pointer typing."""
    jobs, seen = [], set()
    for feed in feeds:
        for fn, constexprs, options in (variant for configs in variants(feed) for variant in configs):
            key = (fn.__name__, tuple(signature(fn, feed, constexprs).items()), repr(constexprs), repr(options))
            if key not in seen:
                seen.add(key)
                jobs.append((fn, feed, constexprs, options))
    return jobs


def build_all(target: GPUTarget = H100, feeds: tuple[Feed, ...] = FEEDS) -> list[Build]:
    """Every kernel in every configuration for every feed (see `plan`), compiled for `target`."""
    if INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    return [build(fn, feed, constexprs, options, target) for fn, feed, constexprs, options in plan(feeds)]


if __name__ == "__main__":
    for result in build_all():
        print(f"{result.kernel:30} {result.dtypes:30} {result.config:44} regs={result.registers:3} "
              f"local={result.local_bytes} shared={result.shared_bytes} tensor_cores={result.tensor_cores}")
