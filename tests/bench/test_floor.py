"""The roofline floor on models small enough to count by hand (a multiply-add is 2 FLOPs)."""
import pytest
import torch
from torch import nn

from persample import losses
from persample.bench.floor import Floor, count_flops, floor_for
from persample.bench.grid import Case
from persample.workloads import Workload, registry as workload_registry


def two_linear() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))


def test_linear_layers_count_forward_input_gradients_and_per_sample_gradients():
    # Linear(6,4): forward 2*6*4 + 4 bias = 52, no input gradient (nothing trainable upstream),
    # per-sample gradient 52. Linear(4,2): forward 2*4*2 + 2 = 18, input gradient 16, per-sample 18.
    flops, uncounted = count_flops(two_linear(), torch.randn(1, 6))
    assert flops == 52 + 52 + 18 + 16 + 18 and uncounted == ()


def test_frozen_layers_cost_only_their_forward():
    model = two_linear()
    model[0].requires_grad_(False)
    # 52 forward for the frozen layer; the second has nothing trainable upstream: 18 + 18
    assert count_flops(model, torch.randn(1, 6))[0] == 52 + 18 + 18


class TokenAttention(nn.Module):
    """Embedding(10, 4) -> Linear(4, 4) -> scores h hᵀ (a matmul outside any layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.proj = nn.Embedding(10, 4), nn.Linear(4, 4)

    def forward(self, tokens):
        h = self.proj(self.embed(tokens))
        return (h @ h.transpose(-1, -2)).flatten(1)


def test_embeddings_and_matmuls_outside_layers_are_counted():
    flops, _ = count_flops(TokenAttention(), torch.tensor([[1, 2, 3]]))
    embedding = 3 * 4  # per-sample gradient: scatter-add of 3 rows of 4
    projection = (2 * 3 * 4 * 4 + 3 * 4) + 2 * 3 * 4 * 4 + (2 * 3 * 4 * 4 + 3 * 4)  # forward, input, per-sample
    scores = 3 * (2 * 3 * 4 * 3)  # forward, and both operands' gradients
    assert flops == embedding + projection + scores


def test_convolutions_and_norms_are_counted_per_output_position_and_element():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2))
    flops, _ = count_flops(model, torch.randn(1, 1, 5, 5))
    conv = 2 * (2 * 9 * 2 * 1 * 9 + 9 * 2)  # 3x3 outputs x 2 channels x 9 products (+bias): forward, per-sample
    norm = 7 * 18 + 8 * 18 + 3 * 18  # 18 elements: forward, input gradient, scale and shift gradients
    assert flops == conv + norm


def test_layers_without_a_rule_are_named():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(6))

        def forward(self, x):
            return x * self.gain

    flops, uncounted = count_flops(nn.Sequential(Scale(), nn.Linear(6, 2)), torch.randn(1, 6))
    assert uncounted == ("Scale",)
    assert flops == (2 * 6 * 2 + 2) + 2 * 6 * 2 + (2 * 6 * 2 + 2)  # the Linear has a trainable layer upstream


@pytest.fixture
def hand_workload(monkeypatch):
    def batch(size, n, generator):
        return torch.randn(n, 6, generator=generator), torch.randint(2, (n,), generator=generator)

    workload = Workload("hand_counted", "two Linear layers", lambda size: two_linear(), batch, losses.cross_entropy,
                        frozenset())
    monkeypatch.setitem(workload_registry._WORKLOADS, workload.name, workload)
    return workload


@pytest.mark.parametrize("mode, itemsize", [("float32", 4), ("bfloat16", 2)])
def test_bytes_are_the_batch_parameters_and_per_sample_gradients(hand_workload, mode, itemsize):
    floor = floor_for(Case("hand_counted", "full", 8, mode, "vmap"))
    parameters = 6 * 4 + 4 + 4 * 2 + 2  # 38
    inputs, targets = 8 * 6 * itemsize, 8 * 8  # class indices stay int64
    assert floor.bytes == inputs + targets + parameters * itemsize + 8 * parameters * itemsize
    assert floor.flops == 8 * 156


def test_the_floor_time_is_the_slower_of_moving_and_computing():
    floor = Floor(bytes=2_000, flops=1_000)
    assert floor.seconds(bandwidth=1_000, throughput=1_000) == 2.0
    assert floor.seconds(bandwidth=1_000, throughput=100) == 10.0
    assert floor.seconds(bandwidth=None, throughput=100) is None
