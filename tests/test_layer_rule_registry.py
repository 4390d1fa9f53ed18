"""The one registry of per-layer knowledge (`persample.rules`) and the layer facts it shares
(`persample.layers`): a rule computes the trainable parameters only, one lookup decides which
layers a rule, a FLOP count and a JAX translation apply to, and convolution padding is computed
once, as torch pads."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import persample
from persample.bench.floor import count_flops
from persample.layers import LayerInput, conv_padding_amounts, nearest_registered, padding_amounts, uses_running_stats
from persample.rules import layer_rule, rule_for, rule_types, trainable_locals
from persample.rules.conv import padded


def one_of_each_layer() -> list[tuple[nn.Module, torch.Tensor]]:
    """A layer of every type with a gradient rule, with an input batch of 3."""
    torch.manual_seed(0)
    layers = [
        (nn.Linear(4, 3), torch.randn(3, 2, 4)),
        (nn.Conv1d(2, 4, 3, groups=2), torch.randn(3, 2, 6)),
        (nn.Conv2d(2, 3, 2, padding="same", dilation=2), torch.randn(3, 2, 5, 5)),
        (nn.Conv3d(1, 2, 2), torch.randn(3, 1, 3, 3, 3)),
        (nn.Embedding(7, 3, padding_idx=0), torch.randint(7, (3, 4))),
        (nn.LayerNorm(4), torch.randn(3, 2, 4)),
        (nn.RMSNorm(4), torch.randn(3, 2, 4)),
        (nn.GroupNorm(2, 4), torch.randn(3, 4, 5)),
        (nn.InstanceNorm1d(2, affine=True), torch.randn(3, 2, 5)),
        (nn.InstanceNorm2d(2, affine=True), torch.randn(3, 2, 3, 3)),
        (nn.InstanceNorm3d(2, affine=True), torch.randn(3, 2, 2, 2, 2)),
    ]
    assert {type(layer) for layer, _ in layers} == set(rule_types()), "a rule type is missing from this list"
    return layers


LAYERS = one_of_each_layer()


@pytest.mark.parametrize("layer, x", LAYERS, ids=[type(layer).__name__ for layer, _ in LAYERS])
def test_every_rule_computes_exactly_the_parameters_it_is_asked_for(layer, x):
    rule = rule_for(layer)
    grad_out = torch.randn_like(layer(x))
    inputs = LayerInput.of(x)
    owned = trainable_locals(layer, rule.params)
    full = rule.grad_sample(layer, inputs, grad_out, owned)
    for size in range(len(owned) + 1):
        for asked in itertools.combinations(sorted(owned), size):
            got = rule.grad_sample(layer, inputs, grad_out, frozenset(asked))
            assert set(got) == set(asked)
            for name in asked:  # asking for fewer changes none of the values
                torch.testing.assert_close(got[name], full[name], rtol=0, atol=0)
            if rule.grad_batch is not None:
                summed = rule.grad_batch(layer, inputs, grad_out, frozenset(asked))
                assert set(summed) == set(asked)
                for name in asked:
                    torch.testing.assert_close(summed[name], full[name].sum(0), rtol=1e-5, atol=1e-5)


def test_a_frozen_linear_weight_is_not_computed(monkeypatch):
    layer = nn.Linear(5, 3)
    layer.weight.requires_grad_(False)
    assert rule_for(layer).trainable(layer) == {"bias"}

    def no_outer_product(*args, **kwargs):
        raise AssertionError("the per-sample outer product of a frozen weight was computed")

    for product in ("bmm", "einsum", "mul", "matmul", "baddbmm"):
        monkeypatch.setattr(torch, product, no_outer_product)
    g = torch.randn(4, 2, 3)
    got = rule_for(layer).grad_sample(layer, LayerInput.of(torch.randn(4, 2, 5)), g, rule_for(layer).trainable(layer))
    assert set(got) == {"bias"}
    torch.testing.assert_close(got["bias"], g.sum(1))


def test_the_floor_counts_no_per_sample_work_for_a_frozen_weight():
    layer = nn.Linear(6, 4)
    layer.weight.requires_grad_(False)
    flops, _ = count_flops(nn.Sequential(layer), torch.randn(1, 6))
    assert flops == (2 * 6 * 4 + 4) + 4  # the forward, and the bias's per-sample gradient alone


def partly_frozen_model() -> nn.Module:
    """Conv (frozen weight) -> GroupNorm (frozen weight) -> Linear (frozen weight) -> Embedding-free head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 4 * 4, 6),
                          nn.Tanh(), nn.Linear(6, 3))
    for index in (0, 1, 3):
        model[index].weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("method", ["hooks", "expand", "kernel"])
def test_frozen_weights_with_trainable_biases_give_the_loops_answer(method):
    model = partly_frozen_model()
    if method != "kernel":
        model = model.double()
    dtype = next(model.parameters()).dtype
    x, y = torch.randn(5, 2, 4, 4, dtype=dtype), torch.randint(3, (5,))
    want = persample.per_sample_grads(copy.deepcopy(model).double(), x.double(), y, method="loop")
    got = persample.per_sample_grads(model, x, y, method=method)
    assert set(got) == set(want) == {"0.bias", "1.bias", "3.bias", "5.weight", "5.bias"}
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name], rtol=tolerance, atol=tolerance)


class ScaledLinear(nn.Linear):
    """A Linear that computes something else: no rule, FLOP count or translation of Linear applies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class NamedLinear(nn.Linear):
    """A Linear subclass that keeps Linear's forward: everything of Linear applies."""


def test_a_subclass_overriding_forward_gets_no_rule_no_flop_count_and_no_translation():
    assert rule_for(ScaledLinear(3, 2)) is None and layer_rule(ScaledLinear(3, 2)) is None
    assert rule_for(NamedLinear(3, 2)) is rule_for(nn.Linear(3, 2)) is not None
    _, uncounted = count_flops(nn.Sequential(ScaledLinear(3, 2)), torch.randn(1, 3))
    assert uncounted == ("ScaledLinear",)
    assert count_flops(nn.Sequential(NamedLinear(3, 2)), torch.randn(1, 3)) == count_flops(
        nn.Sequential(nn.Linear(3, 2)), torch.randn(1, 3))
    pytest.importorskip("jax")
    from persample.jax_translate import translation  # noqa: F401  (registers the translations)
    from persample.jax_translate.vocabulary import layer_translator

    assert layer_translator(ScaledLinear(3, 2)) is None
    assert layer_translator(NamedLinear(3, 2)) is layer_translator(nn.Linear(3, 2)) is not None


def test_nearest_registered_takes_the_nearest_base_and_stops_at_an_overridden_forward():
    class Base(nn.Module):
        def forward(self, x):
            return x

    class Child(Base):
        pass

    class Grandchild(Child):
        def forward(self, x):
            return -x

    table = {Base: "base", Child: "child"}
    assert nearest_registered(Child(), table) == "child"
    assert nearest_registered(type("Deeper", (Child,), {})(), table) == "child"
    assert nearest_registered(Grandchild(), table) is None
    assert nearest_registered(nn.ReLU(), table) is None


def test_layers_without_a_per_sample_rule_are_counted_but_not_offered():
    for layer in (nn.BatchNorm1d(3), nn.LSTM(3, 4), nn.GRU(3, 4), nn.RNN(3, 4)):
        assert rule_for(layer) is None and layer_rule(layer).flops is not None
        assert type(layer) not in rule_types()
    _, uncounted = count_flops(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval(), torch.randn(1, 3))
    assert uncounted == ()


def test_norm_sample_is_an_empty_slot_for_now():
    assert all(rule_for(layer).norm_sample is None for layer, _ in LAYERS)


CONVS = [
    (nn.Conv1d, (4,), (1,)), (nn.Conv1d, (2,), (3,)), (nn.Conv2d, (2, 4), (1, 2)), (nn.Conv2d, (3, 2), (2, 1)),
    (nn.Conv3d, (2, 1, 4), (1, 1, 2)),
]


@pytest.mark.parametrize("conv, kernel, dilation", CONVS)
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_same_padding_is_what_torch_pads_with_even_kernels_and_dilation(conv, kernel, dilation, padding_mode):
    torch.manual_seed(0)
    layer = conv(2, 3, kernel, padding="same", dilation=dilation, padding_mode=padding_mode)
    x = torch.randn(2, 2, *(7 + d for d in range(len(kernel))))
    amounts = padding_amounts(layer)
    assert [before + after for before, after in amounts] == [d * (k - 1) for k, d in zip(kernel, dilation)]
    assert all(after - before in (0, 1) for before, after in amounts)  # the odd element goes after
    want = layer(x)
    assert want.shape[2:] == x.shape[2:]
    by_hand = getattr(F, f"conv{len(kernel)}d")(padded(layer, x), layer.weight, layer.bias, dilation=dilation)
    torch.testing.assert_close(by_hand, want)


@pytest.mark.parametrize("padding", ["valid", 0, 2, (1, 3)])
def test_numeric_and_valid_padding_give_torchs_output_shape(padding):
    layer = nn.Conv2d(1, 1, (3, 2), padding=padding, stride=(2, 1), dilation=(1, 2))
    x = torch.randn(1, 1, 9, 8)
    amounts = padding_amounts(layer)
    for dim, (before, after) in enumerate(amounts):
        span = layer.dilation[dim] * (layer.kernel_size[dim] - 1) + 1
        assert layer(x).shape[2 + dim] == (x.shape[2 + dim] + before + after - span) // layer.stride[dim] + 1


def test_padding_amounts_refuse_an_unknown_word():
    with pytest.raises(ValueError, match="padding"):
        conv_padding_amounts("full", (3,), (1,))


def test_instance_norm_uses_running_statistics_only_when_tracked_and_evaluating():
    tracked = nn.InstanceNorm1d(2, track_running_stats=True)
    assert not uses_running_stats(tracked) and uses_running_stats(tracked.eval())
    assert not uses_running_stats(nn.InstanceNorm1d(2).eval())
    assert not uses_running_stats(nn.GroupNorm(1, 2).eval())


def test_a_layer_called_with_keywords_reaches_its_rule_through_the_recorded_call():
    class KeywordCall(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(input=x)

    torch.manual_seed(0)
    model, x, y = KeywordCall().double(), torch.randn(5, 4).double(), torch.randint(3, (5,))
    want = persample.per_sample_grads(model, x, y, method="loop")
    for method in ("hooks", "expand"):
        got = persample.per_sample_grads(model, x, y, method=method)
        for name in want:
            torch.testing.assert_close(got[name], want[name])
    call = LayerInput.of(input=x)
    assert call.first is x and call.bound(model.lin) == {"input": x}
