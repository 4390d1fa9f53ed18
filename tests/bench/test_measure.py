"""Memory probes measure known allocations; a prepared case holds at least its own output; the
clock and the warm-up behave as the suites rely on."""
import sys
import timeit

import pytest
import torch

from persample.bench.grid import Case
from persample.bench.memory import CudaAllocatorProbe, ResidentSetProbe, TorchCpuProbe, meter_for
from persample.bench.prepared import PreparedCase
from persample.bench.timing import CudaEventClock, device_clock, warm_up

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="measures the CUDA allocator: needs a GPU")
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self: Linux only")


def test_the_cpu_allocator_probe_reports_the_peak_not_the_end():
    probe = TorchCpuProbe()
    probe.start()
    big = torch.ones(1_000_000)  # 4 MB
    del big
    small = torch.ones(250_000)  # 1 MB, alive at the end
    peak = probe.stop()
    assert 4_000_000 <= peak < 4_100_000
    del small


@needs_linux
def test_the_resident_set_probe_sees_touched_pages():
    probe = ResidentSetProbe()
    probe.start()
    block = torch.ones(16 * 2**20)  # 64 MiB, written
    peak = probe.stop()
    assert 64 * 2**20 <= peak < 80 * 2**20
    del block


@needs_cuda
def test_the_cuda_probe_measures_from_a_clean_baseline():
    probe = CudaAllocatorProbe(torch.device("cuda"))
    resident = torch.ones(2**20, device="cuda")
    probe.start()
    transient = torch.ones(2**22, device="cuda")  # 16 MiB
    del transient
    assert probe.stop() == 16 * 2**20
    del resident


def test_meters_cover_prepare_except_for_the_resident_set():
    assert meter_for(torch.device("cpu"), "torch").window == "prepare"
    assert meter_for(torch.device("cpu"), "jax").window == "step"


@pytest.mark.parametrize("method", ["vmap", "hooks", "baseline"])
def test_a_case_holds_at_least_its_output_at_its_peak(method):
    prepared = PreparedCase(Case("mlp", "small", 16, "float32", method), measure_memory=True)
    try:
        parameters = sum(p.numel() for p in prepared.model.parameters())
        output = parameters * 4 * (1 if method == "baseline" else 16)  # batch gradient vs 16 per-sample ones
        assert prepared.warmup_steps == 0  # the window starts before prepare and ends with the first step
        assert prepared.peak_memory() >= output
    finally:
        prepared.close()


def test_a_timed_case_is_warmed_up_and_restores_the_tf32_flags():
    before = torch.backends.cudnn.allow_tf32
    prepared = PreparedCase(Case("mlp", "small", 4, "float32", "vmap"))
    assert 1 <= prepared.warmup_steps <= 3
    assert torch.backends.cudnn.allow_tf32 is False  # "float32" means no TF32, convolutions included
    prepared.close()
    assert torch.backends.cudnn.allow_tf32 == before


def test_warm_up_runs_at_least_once_and_stops_at_its_budget():
    calls = []
    assert warm_up(lambda: calls.append(1), max_steps=3, budget_s=10.0) == 3
    assert warm_up(lambda: calls.append(1), max_steps=3, budget_s=0.0) == 1
    assert len(calls) == 4


def test_the_clock_is_the_wall_clock_without_cuda_and_gpu_time_with_it():
    clock = device_clock()
    if not torch.cuda.is_available():
        assert clock is timeit.default_timer
    else:
        assert isinstance(clock, CudaEventClock)
        start = clock()
        torch.cuda._sleep(1_000_000)
        assert clock() > start
