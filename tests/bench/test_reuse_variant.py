"""The "reuse" variant: a method's prepared step writing into the output buffers it keeps
(`PreparedStep.reuse_outputs`), benchmarked as its own case beside "eager" in the CPU floor grid;
methods that do not offer it (and the baseline) are skipped with the reason."""
from __future__ import annotations

import torch

from persample.bench.grid import Case, get_grid
from persample.bench.prepared import PreparedCase
from persample.bench.skips import skip_reason

CPU = torch.device("cpu")


def test_the_cpu_floor_grid_times_the_memory_bound_cases_eager_and_with_reused_outputs():
    grid = get_grid("cpu-floor")
    assert grid.workloads == ("mlp", "linear_large")
    assert (grid.batch_sizes, grid.modes, grid.variants) == ((32, 64, 256), ("float32",), ("eager", "reuse"))


def test_methods_without_reuse_and_the_baseline_skip_the_variant_with_the_reason():
    assert skip_reason(Case("mlp", "full", 32, "float32", "hooks", "reuse"), CPU) is None
    assert skip_reason(Case("mlp", "full", 32, "float32", "expand", "reuse"), CPU) is None
    assert "reused output buffers" in skip_reason(Case("mlp", "full", 32, "float32", "vmap", "reuse"), CPU)
    assert "eagerly only" in skip_reason(Case("mlp", "full", 32, "float32", "baseline", "reuse"), CPU)


def test_a_reuse_case_prepares_a_step_that_reuses_its_outputs():
    case = PreparedCase(Case("mlp", "small", 4, "float32", "hooks", "reuse"), CPU)
    assert case.step.reusing_outputs
    case.run()
    assert not PreparedCase(Case("mlp", "small", 4, "float32", "hooks", "eager"), CPU).step.reusing_outputs
