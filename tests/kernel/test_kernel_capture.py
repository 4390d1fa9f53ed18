"""CUDA-graph capture: static buffers, copy-in, clone-out and shape checks, tested on the CPU with
a backend that replays by re-running the step into fixed output tensors, as a graph would."""
from unittest import mock

import pytest
import torch
from torch import nn

from .kernel_checks import DEVICE
from persample import Unsupported
from persample.capture import Captured, GraphCaptureError, capture_step
from persample.methods.kernel import KernelMethod
from persample.methods.registry import Capabilities, Method, get


class RerunBackend:
    """Replays by running the step again and copying into the first run's outputs (static memory)."""

    devices = frozenset({"cpu", "cuda"})

    def __init__(self) -> None:
        self.outputs = None

    def unavailable_reason(self):
        return None

    def capture(self, run):
        self.outputs = run()

        def replay():
            for name, value in run().items():
                self.outputs[name].copy_(value)
            return self.outputs

        return replay


class HostSyncRefusingBackend(RerunBackend):
    """Fails the capture of a step that reads a value back to the host, as CUDA capture does."""

    def capture(self, run):
        def refuse(tensor):
            raise RuntimeError("operation not permitted when stream is capturing")

        try:
            with mock.patch.object(torch.Tensor, "item", refuse):
                return super().capture(run)
        except RuntimeError as error:
            raise GraphCaptureError(str(error)) from error


def recording_step(seen: list):
    def step(inputs, targets):
        seen.append(inputs)
        return {"scaled": inputs * 2 + targets[:, None], "sum": inputs.sum(1)}

    return step


def batch(seed: int, rows: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 4, generator=generator), torch.randn(rows, generator=generator)


def classification_batch(rows: int, device):
    return torch.randn(rows, 4, device=device), torch.randint(3, (rows,), device=device)


def test_fresh_inputs_are_copied_into_the_static_buffers():
    seen = []
    captured = capture_step(recording_step(seen), *batch(0), backend=RerunBackend())
    x1, y1 = batch(1)
    result = captured(x1, y1)
    torch.testing.assert_close(result["scaled"], x1 * 2 + y1[:, None])
    assert all(tensor is seen[0] for tensor in seen), "the step must always see the static buffers"
    assert seen[0] is not x1


def test_results_are_cloned_out_of_graph_memory():
    backend = RerunBackend()
    captured = capture_step(recording_step([]), *batch(0), backend=backend)
    first = captured(*batch(1))
    kept = {name: value.clone() for name, value in first.items()}
    captured(*batch(2))
    for name, value in first.items():
        assert value.data_ptr() != backend.outputs[name].data_ptr()
        torch.testing.assert_close(value, kept[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y: (x[:2], y[:2]), r"input 0 was captured with shape \(3, 4\) float32 on cpu but received shape \(2, 4\)"),
        (lambda x, y: (x.double(), y), r"input 0 was captured with shape \(3, 4\) float32 .* received shape \(3, 4\) float64"),
        (lambda x, y: (x, y.long()), r"targets was captured with shape \(3,\) float32 .* received shape \(3,\) int64"),
        (lambda x, y: ((x, x), y), r"captured with one input tensor, received a tuple of 2"),
    ],
    ids=["batch-size", "input-dtype", "target-dtype", "input-structure"],
)
def test_a_changed_batch_is_refused_naming_expected_and_received(change, message):
    captured = capture_step(recording_step([]), *batch(0), backend=RerunBackend())
    with pytest.raises(ValueError, match=message):
        captured(*change(*batch(1)))


def test_tuple_inputs_stay_tuples():
    def step(inputs, targets):
        assert isinstance(inputs, tuple) and len(inputs) == 2
        return {"sum": inputs[0] + inputs[1]}

    x, y = batch(0)
    captured = capture_step(step, (x, x), y, backend=RerunBackend())
    torch.testing.assert_close(captured((x, 2 * x), y)["sum"], 3 * x)


def test_captured_method_matches_the_plain_method_and_keeps_placement():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DEVICE)
    example, other = classification_batch(6, DEVICE), classification_batch(6, DEVICE)
    captured = Captured(KernelMethod(), backend=RerunBackend())
    assert captured.name == "kernel+graph"
    step = captured.prepare(model, None, example)
    assert step.placement == {"0": "triton", "2": "triton"}
    plain = get("hooks")(model, *other)
    for name, value in step(*other).items():
        torch.testing.assert_close(value, plain[name], rtol=1e-5, atol=1e-6)


def test_a_step_that_syncs_with_the_host_is_refused():
    class ItemMethod(Method):
        capabilities = Capabilities(name="item-reader", summary="reads a loss back to the host")

        def _prepare(self, model, loss_fn, example_batch):
            def step(inputs, targets):
                scale = loss_fn(model(inputs), targets).sum().item()
                return {name: scale * p.detach().expand(targets.shape[0], *p.shape) for name, p in model.named_parameters()}

            return step

    refused = r"item-reader\+graph: its step cannot be captured .*synchronises with the host"
    with pytest.raises(Unsupported, match=refused):
        Captured(ItemMethod(), backend=HostSyncRefusingBackend()).prepare(nn.Linear(4, 3), None, classification_batch(3, "cpu"))


def test_a_method_of_another_framework_is_refused():
    class JaxLike(Method):
        capabilities = Capabilities(name="jaxlike", summary="compiles its own step", framework="jax")

        def _prepare(self, model, loss_fn, example_batch):
            raise AssertionError("never prepared")

    reason = Captured(JaxLike(), backend=RerunBackend()).unavailable_reason()
    assert "wraps PyTorch steps" in reason and "jax method" in reason


def test_capture_on_the_cpu_is_unsupported():
    with pytest.raises(Unsupported, match="CUDA graph capture needs a CUDA device"):
        capture_step(recording_step([]), *batch(0))
    with pytest.raises(Unsupported, match="CUDA graph capture needs a CUDA device"):
        Captured("hooks").prepare(nn.Linear(4, 3), None, classification_batch(3, "cpu"))


def test_a_model_on_the_cpu_is_refused_from_the_declared_devices_even_where_cuda_exists():
    class CudaOnlyBackend(RerunBackend):
        devices = frozenset({"cuda"})

    captured = Captured("hooks", backend=CudaOnlyBackend())
    assert captured.capabilities.devices == {"cuda"}
    with pytest.raises(Unsupported, match="CUDA graph capture needs a CUDA device; the model is on cpu"):
        captured.prepare(nn.Linear(4, 3), None, classification_batch(3, "cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="recording a real CUDA graph needs a CUDA device")
def test_real_cuda_graph_replays_fresh_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).cuda()
    step = Captured("hooks").prepare(model, None, classification_batch(5, "cuda"))
    for _ in range(2):
        x, y = classification_batch(5, "cuda")
        expected = get("hooks")(model, x, y)
        for name, value in step(x, y).items():
            torch.testing.assert_close(value, expected[name])
