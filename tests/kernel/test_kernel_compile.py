"""The interpreter never compiles (and upcasts what the compiler would reject, such as a product of
a bfloat16 and a float32 tile): build every kernel for an H100 (sm_90) with Triton's real pipeline,
in a fresh process without TRITON_INTERPRET, and check what the build says.

Every kernel is built in every autotune configuration for every dtype combination a model feeds it
(`tuning.FEEDS`, each pointer typed separately; 140 builds), not a sample: on 2 shared CPU cores
that took 49-70 s with an empty Triton cache (others sharing the cores) and 3 s with a warm one.
"""
import json
import os
import subprocess
import sys

from persample.kernels.tuning import DATA_DTYPES, FEEDS

BUILD = """
import dataclasses, json
from persample.kernels.aot import build_all
print(json.dumps([dataclasses.asdict(b) for b in build_all()]))
"""
PRODUCTS = ("_linear_grads_kernel", "_embedding_grads_kernel", "_conv_grads_kernel")


def test_every_kernel_builds_for_h100_in_every_feed_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    builds = json.loads(done.stdout.splitlines()[-1])
    pointers = [(b["kernel"], dict(kv.split("=") for kv in b["dtypes"].split())) for b in builds]
    feeds = {tuple(DATA_DTYPES[d].name for d in feed) for feed in FEEDS}
    built = {kernel: set() for kernel, _ in pointers}
    for kernel, types in pointers:
        built[kernel].add((types.get("x"), types.get("g"), types.get("gw", types.get("out"))))
    assert set(built) == {*PRODUCTS, "_segment_moments_kernel", "_row_affine_grads_kernel", "_channel_affine_grads_kernel"}
    for kernel in ("_linear_grads_kernel", "_conv_grads_kernel", "_row_affine_grads_kernel", "_channel_affine_grads_kernel"):
        assert built[kernel] == feeds, kernel
    assert built["_embedding_grads_kernel"] == {(None, g, p) for _, g, p in feeds}
    assert built["_segment_moments_kernel"] == {(x, None, None) for x, _, _ in feeds}
    spilling = [b for b in builds if b["local_bytes"]]
    assert not spilling, f"register spills: {spilling}"
    # half operands, alone or with float32 ones (tf32), multiply on tensor cores
    slow = [b for (kernel, types), b in zip(pointers, builds) if kernel in PRODUCTS and not b["tensor_cores"]
            and {types.get("x", "fp32"), types["g"]} != {"fp32"}]
    assert not slow, f"products with half operands off the tensor cores: {slow}"
