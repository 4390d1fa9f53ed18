"""One torch thread while these tests run: their models are tiny, and on a shared CPU the OpenMP
synchronisation between threads costs far more than the work (measured: the float64 loop reference
of four small zoo models takes 6 s with two threads on a loaded 2-core machine, 0.04 s with one)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
