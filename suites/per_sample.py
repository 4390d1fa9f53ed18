"""Per-sample gradients, every method beside the non-private baseline: seconds per step and peak
memory, per workload x batch size x dtype x method x variant (the grid of `persample.bench.grid`).

Setup builds, prepares and warms each case (unsupported cases skip there, cheaply, with a recorded
reason); only the step is measured. See docs/benchmarks.md.
"""
from persample.bench import asv_suite as bench


class PerSampleGradientTime:
    """Seconds per step, device-synchronised (GPU time from CUDA events on a GPU)."""

    params, param_names = bench.asv_params()
    timer = bench.device_clock()
    repeat, min_run_count, warmup_time, rounds, timeout = bench.asv_timing()

    def setup(self, *params):
        self.case = bench.timed_case(*params)

    def time_step(self, *params):
        self.case.run()


class PerSampleGradientMemory:
    """Peak bytes above the model and the batch, from before prepare through one step."""

    params, param_names = bench.asv_params()
    unit = "bytes"
    timeout = bench.asv_timing().timeout

    def setup(self, *params):
        self.case = bench.measured_case(*params)

    def track_peak_memory(self, *params):
        return self.case.peak_memory()
