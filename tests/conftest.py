"""Without CUDA the kernel method's Triton kernels run in Triton's interpreter, which `triton.jit`
picks when a kernel is decorated: so TRITON_INTERPRET=1 is set here, before any test imports
`persample.kernels` (the bench and report tests build the kernel method too)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path_factory):
    """No test reads or writes the user's cache of measurements (`persample.recommendations`)."""
    monkeypatch.setenv("PERSAMPLE_CACHE", str(tmp_path_factory.mktemp("persample-cache")))
