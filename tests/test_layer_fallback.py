"""The rule-based methods on layers without a closed-form rule, and on layers every sample shares.

Specification:
- a module that owns trainable parameters and has no rule (a custom norm, an embedding module with
  its own class token next to a child Linear with a rule, a layer returning a tuple) runs on the
  per-layer torch.func fallback: right, and named "torch.func" in the step's placement;
- a fallback layer whose forward torch.func cannot batch (a branch on a tensor's value) is refused
  naming the layer, never torch's raw error;
- a layer called on arguments every sample shares (position ids of shape (1, T)) gets its output
  expanded to the batch, so its per-sample gradients are right; a model that does not broadcast
  that output over the batch (it reduces over dim 0) is refused, since the expansion would change
  its losses.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import persample
from persample.methods.registry import get

METHODS = ["hooks", "expand", "kernel"]


class RMSNorm(nn.Module):
    """y = x / rms(x) · w, as Llama's and T5's norms (no closed-form rule registered)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class PatchEmbedding(nn.Module):
    """A ViT-style embedding: a child Linear (with its rule) plus its own class token and positions."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project = nn.Linear(4, width)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.positions = nn.Parameter(torch.randn(1, 8, width))

    def forward(self, x):
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.project(x)], 1)
        return tokens + self.positions[:, : tokens.shape[1]]


class TwoOutputs(nn.Module):
    """Returns (y, auxiliary), both reaching the loss: the rule receives a tuple of output gradients."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        return torch.tanh(x * self.scale), (x * self.scale).pow(2).mean(-1)


class Encoder(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.embed = PatchEmbedding(width)
        self.norm = RMSNorm(width)
        self.two = TwoOutputs(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        y, aux = self.two(self.norm(self.embed(x)))
        return self.head(y.mean(1)) + aux.mean(1, keepdim=True)


class Positions(nn.Module):
    """Token embeddings plus position embeddings looked up with ids shared by the batch, (1, T)."""

    def __init__(self, reduce_positions: bool = False) -> None:
        super().__init__()
        self.tokens = nn.Embedding(11, 6)
        self.positions = nn.Embedding(5, 6)
        self.head = nn.Linear(6, 3)
        self.reduce_positions = reduce_positions

    def forward(self, ids):
        where = self.positions(torch.arange(ids.shape[1]).unsqueeze(0))
        if self.reduce_positions:  # a consumer that does not broadcast: sums over dim 0
            where = where.sum(0, keepdim=True)
        return self.head(torch.tanh(self.tokens(ids) + where).mean(1))


def _ce(outputs, targets):
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def _assert_right(model, x, y, method):
    expected = persample.per_sample_grads(model.double(), x.double() if x.is_floating_point() else x, y, loss_fn=_ce, method="loop")
    model.float()
    got = persample.per_sample_grads(model, x, y, loss_fn=_ce, method=method)
    for name, value in expected.items():
        torch.testing.assert_close(got[name].double(), value, rtol=1e-4, atol=1e-6, msg=f"{method}: {name}")


@pytest.mark.parametrize("method", METHODS)
def test_layers_without_a_rule_run_on_the_torch_func_fallback(method):
    torch.manual_seed(0)
    model = Encoder()
    x, y = torch.randn(5, 7, 4), torch.randint(3, (5,))
    _assert_right(model, x, y, method)
    placement = get(method).prepare(model, _ce, (x, y)).placement
    assert placement["embed"] == placement["norm"] == placement["two"] == "torch.func"
    assert placement["embed.project"] in ("rules", "triton") and placement["head"] in ("rules", "triton")


class BranchOnValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.weight if torch.isfinite(x).all() else x


@pytest.mark.parametrize("method", METHODS)
def test_a_fallback_layer_torch_func_cannot_batch_is_refused_by_name(method):
    model = nn.Sequential(nn.Linear(4, 4), BranchOnValues(), nn.Linear(4, 3))
    x, y = torch.randn(5, 4), torch.randint(3, (5,))
    with pytest.raises(persample.Unsupported, match=r"layer 1 \(BranchOnValues\).*torch.func") as refused:
        persample.per_sample_grads(model, x, y, loss_fn=_ce, method=method)
    assert refused.value.assumption == "layer-rules"


@pytest.mark.parametrize("method", METHODS)
def test_a_layer_on_positions_shared_by_the_batch_is_right(method):
    torch.manual_seed(0)
    ids, y = torch.randint(11, (6, 5)), torch.randint(3, (6,))
    _assert_right(Positions(), ids, y, method)


@pytest.mark.parametrize("method", METHODS)
def test_a_shared_output_the_model_does_not_broadcast_is_refused(method):
    torch.manual_seed(0)
    ids, y = torch.randint(11, (6, 5)), torch.randint(3, (6,))
    with pytest.raises(persample.Unsupported, match=r"positions.*(shares|losses)") as refused:
        persample.per_sample_grads(Positions(reduce_positions=True), ids, y, loss_fn=_ce, method=method)
    assert refused.value.layer == "Embedding"
