"""Run by test_jax_cpu_precision.py in a fresh process (XLA reads XLA_FLAGS, oneDNN its ONEDNN_*
variables, once per process): the jax method's float32 per-sample gradients of a smooth conv net
against the float64 loop. Prints one JSON line: the worst relative error per compile mode (the
caller reads which kernels XLA chose from the HLO it has XLA dump).

The model is smooth (tanh, no ReLU kinks or max-pool ties), so float32 rounding alone separates
float32 from float64: ~1e-6. A reduced-precision path (bfloat16 products, TF32-like or oneDNN
"fpmath" bf16) shows as 1e-3 and more. Its layers are wide enough for XLA's library kernels:
2-d convolutions with more than 16 channels and matrix products of at least 8 rows go to YNNPACK
(xla/backends/cpu/ynn_support.cc), the rest to Eigen/oneDNN sgemm and XLA's own emitted loops.
"""
from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    from persample.methods.jax import JaxMethod
    from persample.reference import compare, reference_grads

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.Tanh(), nn.Conv2d(24, 24, 3, padding=1), nn.Tanh(),
        nn.AvgPool2d(2), nn.Conv2d(24, 8, 3), nn.Tanh(), nn.Flatten(),
        nn.Linear(8 * 2 * 2, 32), nn.Tanh(), nn.Linear(32, 10),
    )
    generator = torch.Generator().manual_seed(1)
    inputs = torch.rand(8, 3, 8, 8, generator=generator) * 2 - 1
    targets = torch.randint(10, (8,), generator=generator)

    def loss_fn(output, target):
        return nn.functional.cross_entropy(output, target, reduction="none")

    reference = reference_grads(model, inputs, targets, loss_fn)
    errors = {}
    for optimize in (True, False):
        step = JaxMethod(optimize=optimize).prepare(model, loss_fn, (inputs, targets))
        comparison = compare(step(inputs, targets), reference)
        errors["optimized" if optimize else "quick"] = max(comparison.relative.values())
    print(json.dumps(errors), flush=True)


if __name__ == "__main__":
    status = 0
    try:
        main()
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # With ONEDNN_MAX_CPU_ISA set, torch + jaxlib have aborted in their exit handlers ("terminate
    # called without an active exception") after the work was done: leave without them.
    os._exit(status)
