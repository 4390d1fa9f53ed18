"""The one registry of per-layer knowledge (`persample.rules`) and the layer facts it shares
(`persample.layers`): a rule computes the trainable parameters only, one lookup decides which
layers a rule, a FLOP count and a JAX translation apply to (a layer of an optional package by its
qualified name, without importing it), a rule may hold in some states of its layer only (BatchNorm
in eval mode), and convolution padding is computed once, as torch pads. The rules for Hugging
Face's Conv1D, BatchNorm in eval mode, the transposed convolutions and EmbeddingBag are held against
a float64 per-sample autograd loop, called directly and end to end."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map

import persample
from persample.bench.floor import count_flops
from persample.layers import (
    LayerInput,
    NamedLayer,
    conv_padding_amounts,
    named_layer,
    nearest_registered,
    padding_amounts,
    qualified_name,
    uses_running_stats,
)
from persample.rules import (
    LayerRule,
    layer_rule,
    rule_for,
    rule_refusal_reason,
    rule_types,
)
from persample.rules.conv import padded
from persample.rules.linear import HF_CONV1D
from persample.rules.registry import resolved_rule_types

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # transformers is optional: its Conv1D's rule is matched by name
    Conv1D = None
needs_transformers = pytest.mark.skipif(Conv1D is None, reason="transformers is not installed")


def running(norm: nn.Module) -> nn.Module:
    """`norm` in eval mode with non-trivial running statistics and affine parameters."""
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    return norm.eval()


def rule_key(layer: type) -> object:
    """A rule type as registered: the class, or the qualified name of a `named_layer` stand-in."""
    return layer.qualified if isinstance(layer, NamedLayer) else layer


def one_of_each_layer() -> list[tuple[nn.Module, torch.Tensor | tuple]]:
    """A layer of every type with a gradient rule, with an input batch of 3 (a tuple: several arguments)."""
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
        (running(nn.BatchNorm1d(3)), torch.randn(3, 3)),
        (running(nn.BatchNorm2d(2)), torch.randn(3, 2, 3, 3)),
        (running(nn.BatchNorm3d(2)), torch.randn(3, 2, 2, 2, 2)),
        (running(nn.SyncBatchNorm(2)), torch.randn(3, 2, 4)),
        (nn.ConvTranspose1d(4, 2, 3, stride=2, groups=2, output_padding=1), torch.randn(3, 4, 5)),
        (nn.ConvTranspose2d(2, 3, (2, 3), stride=(3, 1), padding=(1, 0), dilation=(1, 2)), torch.randn(3, 2, 3, 4)),
        (nn.ConvTranspose3d(1, 2, 2, stride=2, bias=False), torch.randn(3, 1, 2, 2, 2)),
        (nn.EmbeddingBag(7, 3, mode="mean", padding_idx=0), torch.randint(7, (3, 4))),
        (nn.MultiheadAttention(4, 2, kdim=3, vdim=5), (torch.randn(2, 3, 4), torch.randn(6, 3, 3), torch.randn(6, 3, 5))),
        (nn.LSTM(4, 3, proj_size=2), torch.randn(5, 3, 4)),  # 5 parameters: 32 subsets asked for
        (nn.GRU(4, 3, batch_first=True), torch.randn(3, 5, 4)),
        (nn.RNN(4, 3, nonlinearity="relu", bias=False), torch.randn(5, 3, 4)),
    ]
    if Conv1D is not None:
        layers.append((Conv1D(5, 4), torch.randn(3, 2, 4)))
    return layers


LAYERS = one_of_each_layer()


def test_the_list_holds_a_layer_of_every_rule_type():
    types = {qualified_name(type(layer)) if type(layer) is Conv1D else type(layer) for layer, _ in LAYERS}
    wanted = {rule_key(t) for t in rule_types()} - ({HF_CONV1D} if Conv1D is None else set())
    assert types == wanted, "a rule type is missing from `one_of_each_layer`"


@pytest.mark.parametrize("layer, x", LAYERS, ids=[type(layer).__name__ for layer, _ in LAYERS])
def test_every_rule_computes_exactly_the_parameters_it_is_asked_for(layer, x):
    rule = rule_for(layer)
    args = x if isinstance(x, tuple) else (x,)
    grad_out = tree_map(lambda t: torch.randn_like(t) if isinstance(t, torch.Tensor) else t, layer(*args))
    inputs = LayerInput.of(*args)
    owned = rule.trainable(layer)
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


def test_layers_whose_rule_does_not_apply_are_counted_but_not_offered():
    for layer in (nn.BatchNorm1d(3), nn.BatchNorm2d(3, track_running_stats=False).eval()):  # batch statistics
        assert rule_for(layer) is None and layer_rule(layer).flops is not None
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


# --- Hugging Face's Conv1D, BatchNorm in eval mode, transposed convolutions, EmbeddingBag ---


def batch_first_samples(args: tuple, kwargs: dict) -> list[tuple[tuple, dict]]:
    """Each sample's own call of a layer whose tensor arguments are batch first: row n of each, as a batch of one."""
    rows = next(a for a in args if isinstance(a, torch.Tensor)).shape[0]
    cut = lambda value, n: value[n:n + 1] if isinstance(value, torch.Tensor) else value
    return [(tuple(cut(a, n) for a in args), {k: cut(v, n) for k, v in kwargs.items()}) for n in range(rows)]


def bag_samples(flat: torch.Tensor, offsets: torch.Tensor, last: bool, weights: torch.Tensor | None = None):
    """Each bag of a 1-D EmbeddingBag call (input, offsets) as its own call: the bags are the samples."""
    ends = offsets[1:] if last else torch.cat([offsets[1:], torch.tensor([flat.numel()])])
    starts = offsets[:-1] if last else offsets
    samples = []
    for start, end in zip(starts.tolist(), ends.tolist()):
        own = torch.tensor([0, end - start]) if last else torch.tensor([0])
        kwargs = {} if weights is None else {"per_sample_weights": weights[start:end]}
        samples.append(((flat[start:end], own), kwargs))
    return samples


def case(layer: nn.Module, *args, samples=None, **kwargs):
    """(layer in float64, the call's args and kwargs in float64, each sample's own call)."""
    layer = layer.double()
    to64 = lambda v: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
    args, kwargs = tuple(to64(a) for a in args), {k: to64(v) for k, v in kwargs.items()}
    if samples is None:
        samples = batch_first_samples(args, kwargs)
    samples = [(tuple(to64(a) for a in a_), {k: to64(v) for k, v in k_.items()}) for a_, k_ in samples]
    return layer, args, kwargs, samples


def rule_cases():
    torch.manual_seed(0)
    flat = torch.tensor([3, 0, 3, 5, 0, 0, 6, 2, 2, 4, 1])
    cases = {
        "ConvTranspose1d-groups-output_padding-dilation": case(
            nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2), torch.randn(3, 4, 5)),
        "ConvTranspose1d-output_padding-over-stride": case(
            nn.ConvTranspose1d(2, 2, 2, stride=2, dilation=3, output_padding=2), torch.randn(3, 2, 4)),
        "ConvTranspose1d-output_size": case(nn.ConvTranspose1d(2, 3, 3, stride=3), torch.randn(2, 2, 4), output_size=[13]),
        "ConvTranspose2d-odd-strides-no-bias": case(
            nn.ConvTranspose2d(2, 3, (2, 3), stride=(3, 1), padding=(1, 0), output_padding=(2, 0), bias=False),
            torch.randn(2, 2, 4, 3)),
        "ConvTranspose3d-groups": case(nn.ConvTranspose3d(2, 4, 2, stride=(2, 1, 3), groups=2), torch.randn(2, 2, 2, 3, 2)),
        "BatchNorm1d-NC": case(running(nn.BatchNorm1d(3)), torch.randn(4, 3)),
        "BatchNorm1d-NCL": case(running(nn.BatchNorm1d(3)), torch.randn(4, 3, 5)),
        "BatchNorm2d": case(running(nn.BatchNorm2d(3)), torch.randn(2, 3, 2, 3)),
        "BatchNorm3d": case(running(nn.BatchNorm3d(2)), torch.randn(2, 2, 2, 1, 2)),
    }
    if Conv1D is not None:
        cases["Conv1D"] = case(Conv1D(5, 4), torch.randn(3, 2, 4))
        cases["Conv1D-2d-input"] = case(Conv1D(3, 4), torch.randn(3, 4))
    for mode in ("sum", "mean", "max"):
        for padding in (None, 0):
            name = f"EmbeddingBag-{mode}-padding_idx={padding}"
            rows = torch.tensor([[0, 1, 1, 4], [0, 0, 0, 0], [2, 0, 3, 2]])  # a bag of padding alone (or of row 0)
            cases[name] = case(nn.EmbeddingBag(7, 3, mode=mode, padding_idx=padding), rows)
            for last in (False, True):
                offsets = torch.tensor([0, 3, 3, 6, 9] + ([11] if last else []))  # an empty bag
                layer = nn.EmbeddingBag(7, 3, mode=mode, padding_idx=padding, include_last_offset=last)
                cases[f"{name}-offsets-include_last_offset={last}"] = case(
                    layer, flat, offsets, samples=bag_samples(flat, offsets, last))
    weights = torch.rand(3, 4) + 0.5
    cases["EmbeddingBag-sum-per_sample_weights"] = case(
        nn.EmbeddingBag(7, 3, mode="sum", padding_idx=1), torch.randint(7, (3, 4)), per_sample_weights=weights)
    flat_weights, offsets = torch.rand(11, dtype=torch.float64), torch.tensor([0, 4, 4, 7])
    cases["EmbeddingBag-sum-per_sample_weights-offsets"] = case(
        nn.EmbeddingBag(7, 3, mode="sum"), flat, offsets, per_sample_weights=flat_weights,
        samples=bag_samples(flat, offsets, False, flat_weights))
    return cases


RULE_CASES = rule_cases()


def loop_gradients(layer: nn.Module, samples, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: (B, *shape)}: each sample's call alone, differentiated by autograd against its row of grad_out."""
    params = {name: p for name, p in layer.named_parameters() if p.requires_grad}
    rows = []
    for (args, kwargs), g in zip(samples, grad_out):
        out = layer(*args, **kwargs)
        rows.append(torch.autograd.grad((out * g.unsqueeze(0)).sum(), list(params.values()), allow_unused=True))
    return {name: torch.stack([r[i] if r[i] is not None else torch.zeros_like(p) for r in rows])
            for i, (name, p) in enumerate(params.items())}


@pytest.mark.parametrize("name", RULE_CASES)
def test_each_new_rule_equals_the_float64_per_sample_loop(name):
    layer, args, kwargs, samples = RULE_CASES[name]
    torch.manual_seed(1)
    out = layer(*args, **kwargs)
    grad_out = torch.randn_like(out)
    rule, inputs = rule_for(layer), LayerInput(args, kwargs)
    want = loop_gradients(layer, samples, grad_out)
    trainable = rule.trainable(layer)
    assert set(want) == set(trainable)
    # a captured input that requires grad (an earlier layer's output): the formulas' results are data
    tracked = LayerInput(tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                               else a for a in args), kwargs)
    got = rule.grad_sample(layer, tracked, grad_out, trainable)
    summed = rule.grad_batch(layer, tracked, grad_out, trainable)
    assert not any(g.requires_grad for g in [*got.values(), *summed.values()])
    for param in want:
        torch.testing.assert_close(got[param], want[param], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(summed[param], want[param].sum(0), rtol=1e-10, atol=1e-12)
    # expanded_forward: sample n computed with its own weights[name][n] (here all different)...
    batch = grad_out.shape[0]
    weights = {local: (p.detach() + 0.1 * torch.randn(batch, *p.shape, dtype=p.dtype)).requires_grad_()
               for local, p in layer.named_parameters()}
    expanded = rule.expanded_forward(layer, inputs, weights)
    for n, (own_args, own_kwargs) in enumerate(samples):
        alone = torch.func.functional_call(layer, {k: w[n] for k, w in weights.items()}, own_args, own_kwargs)
        torch.testing.assert_close(expanded[n], alone[0], rtol=1e-10, atol=1e-12)
    # ...and, with the module's own weights as stride-0 views, the module's output, differentiated per sample
    shared = {local: p.detach().unsqueeze(0).expand(batch, *p.shape).requires_grad_()
              for local, p in layer.named_parameters()}
    expanded = rule.expanded_forward(layer, inputs, shared)
    torch.testing.assert_close(expanded, out, rtol=1e-10, atol=1e-12)
    per_sample = torch.autograd.grad((expanded * grad_out).sum(), [shared[p] for p in want])
    for param, grad in zip(want, per_sample):
        torch.testing.assert_close(grad, want[param], rtol=1e-10, atol=1e-12)


def test_embedding_bag_semantics_the_rule_follows_are_torchs():
    """Checked on torch itself: padding_idx rows are left out of a bag and out of mean's count, get no
    gradient, and a bag of padding alone gives zeros; max sends each feature's gradient to one row."""
    bag = nn.EmbeddingBag(5, 2, mode="mean", padding_idx=0).double()
    out = bag(torch.tensor([[0, 1, 2], [0, 0, 0]]))
    torch.testing.assert_close(out[0], (bag.weight[1] + bag.weight[2]) / 2)
    torch.testing.assert_close(out[1], torch.zeros(2, dtype=torch.float64))
    out.sum().backward()
    assert bag.weight.grad[0].abs().sum() == 0
    top = nn.EmbeddingBag(5, 2, mode="max").double()
    top(torch.tensor([[1, 2, 3]])).sum().backward()
    assert (top.weight.grad.sum(0) == 1).all() and ((top.weight.grad == 0) | (top.weight.grad == 1)).all()


@pytest.mark.parametrize("setting, why", [({"scale_grad_by_freq": True}, "scale_grad_by_freq"),
                                          ({"max_norm": 1.0}, "max_norm")])
def test_an_embedding_bag_that_couples_or_rewrites_its_weight_gets_no_rule(setting, why):
    layer = nn.EmbeddingBag(5, 2, **setting)
    assert rule_for(layer) is None and rule_for(nn.EmbeddingBag) is not None
    assert why in rule_refusal_reason(layer)


def fake_conv1d() -> type[nn.Module]:
    """A class named as transformers' Conv1D and computing what it computes, for a machine without it."""

    class Conv1D(nn.Module):
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.nf, self.nx = nf, nx
            self.weight = nn.Parameter(torch.randn(nx, nf))
            self.bias = nn.Parameter(torch.randn(nf))

        def forward(self, x):
            return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)

    Conv1D.__module__, Conv1D.__qualname__ = HF_CONV1D.rsplit(".", 1)
    return Conv1D


def test_nearest_registered_matches_a_qualified_name_along_the_mro_and_stops_at_an_overridden_forward():
    kind = fake_conv1d()
    keeps = type("Keeps", (kind,), {})
    overrides = type("Overrides", (kind,), {"forward": lambda self, x: 2 * kind.forward(self, x)})
    table = {HF_CONV1D: "by name", nn.Linear: "linear"}
    assert nearest_registered(kind(3, 2), table) == nearest_registered(keeps(3, 2), table) == "by name"
    assert nearest_registered(overrides(3, 2), table) is None
    assert nearest_registered(nn.Linear(2, 3), table) == "linear" and nearest_registered(nn.ReLU(), table) is None


def test_hugging_face_conv1d_is_registered_by_name_without_importing_transformers(monkeypatch):
    """transformers not importable (monkeypatched out): persample's rule still finds a class of that name,
    which only a loaded transformers can make; the stand-in resolves to nothing and is left out."""
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "transformers.pytorch_utils", None)
    kind = fake_conv1d()
    layer = kind(3, 2)
    rule = rule_for(layer)
    assert rule is not None and rule.layer is kind
    assert rule_for(type("Keeps", (kind,), {})(3, 2)).layer is kind  # the class that matched
    overrides = type("Overrides", (kind,), {"forward": lambda self, x: kind.forward(self, x) + 1})(3, 2)
    assert rule_for(overrides) is None and layer_rule(overrides) is None
    assert rule_refusal_reason(overrides).startswith("overrides forward() of a layer with a rule")
    stand_in = next(t for t in rule_types() if isinstance(t, NamedLayer))
    assert stand_in.__name__ == "Conv1D" and stand_in.qualified == HF_CONV1D
    assert isinstance(layer, rule_types()) and issubclass(kind, stand_in) and not isinstance(nn.Linear(2, 3), stand_in)
    assert stand_in.resolve() is None
    assert stand_in not in resolved_rule_types() and nn.Linear in resolved_rule_types()
    assert pickle.loads(pickle.dumps(stand_in)) is stand_in is named_layer(HF_CONV1D)
    x, g = torch.randn(4, 2), torch.randn(4, 3)
    got = rule.grad_sample(layer, LayerInput.of(x), g, rule.trainable(layer))
    torch.testing.assert_close(got["weight"], x.unsqueeze(2) * g.unsqueeze(1))
    torch.testing.assert_close(got["bias"], g)


@needs_transformers
def test_hugging_face_conv1d_resolves_to_the_transformers_class_where_it_imports():
    stand_in = next(t for t in rule_types() if isinstance(t, NamedLayer))
    assert stand_in.resolve() is Conv1D and Conv1D in resolved_rule_types()
    assert rule_for(Conv1D(3, 2)).layer is Conv1D and named_layer(HF_CONV1D).resolve() is Conv1D
    assert rule_for(nn.Sequential) is None


def test_importing_persample_does_not_import_transformers():
    code = ("import sys, torch, persample, persample.rules, persample.methods.hooks; "
            "persample.rules.rule_for(torch.nn.Linear(2, 2)); "
            "assert not any(m.split('.')[0] == 'transformers' for m in sys.modules), 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batch_norm_has_a_rule_in_eval_mode_with_running_statistics_only():
    tracked, untracked = nn.BatchNorm2d(3), nn.BatchNorm2d(3, track_running_stats=False)
    assert rule_for(nn.BatchNorm2d) is not None  # a type: the rule, whatever state its modules are in
    assert not uses_running_stats(tracked) and rule_for(tracked) is None
    assert rule_refusal_reason(tracked).startswith("is in training mode: it normalises with the batch's statistics")
    assert uses_running_stats(tracked.eval()) and rule_for(tracked) is layer_rule(tracked)
    assert rule_refusal_reason(tracked) is None
    assert not uses_running_stats(untracked.eval()) and rule_for(untracked) is None
    assert "track_running_stats=False" in rule_refusal_reason(untracked)


def batch_norm_model(training: bool, tracked: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3, track_running_stats=tracked)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), norm, nn.Tanh(), nn.Flatten(), nn.Linear(12, 3))
    if tracked:
        running(norm)
    return model.train(training)


@pytest.mark.parametrize("method", ["hooks", "expand", "kernel"])
@pytest.mark.parametrize("training, tracked, why", [(True, True, "training mode"),
                                                    (False, False, "track_running_stats=False")])
def test_batch_norm_with_batch_statistics_is_refused_naming_the_layer_and_the_reason(method, training, tracked, why):
    model, x, y = batch_norm_model(training, tracked), torch.randn(4, 2, 4, 4), torch.randint(3, (4,))
    with pytest.raises(persample.Unsupported, match=rf"BatchNorm2d.*{why}.*batch statistics"):
        persample.per_sample_grads(model, x, y, method=method)


def test_a_step_prepared_in_eval_mode_is_not_reused_in_training_mode():
    """The modules' train/eval flags are part of a prepared step's key (`persample.cache.structure`): a model
    put back in training mode is prepared again, and its BatchNorm refused, never run with the eval formula."""
    model, x, y = batch_norm_model(training=False).double(), torch.randn(4, 2, 4, 4).double(), torch.randint(3, (4,))
    persample.per_sample_grads(model, x, y, method="hooks")
    evaluating = persample.cache.structure(model)
    model.train()
    assert persample.cache.structure(model) != evaluating
    with pytest.raises(persample.Unsupported, match="training mode"):
        persample.per_sample_grads(model, x, y, method="hooks")


class Bags(nn.Module):
    """An EmbeddingBag (one bag per sample) read by a linear head."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.bag, self.head = nn.EmbeddingBag(9, 4, mode=mode, padding_idx=1), nn.Linear(4, 3)

    def forward(self, idx: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(torch.tanh(self.bag(idx, per_sample_weights=weights)))


def end_to_end_models() -> dict[str, tuple[nn.Module, object]]:
    """Small models holding each new layer, with a batch of 5 inputs."""
    torch.manual_seed(0)
    models = {
        "ConvTranspose2d": (nn.Sequential(nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
                                          nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), torch.randn(5, 2, 3, 3)),
        "ConvTranspose1d-3d": (nn.Sequential(nn.ConvTranspose1d(3, 2, 2, stride=3, dilation=2, bias=False), nn.Tanh(),
                                             nn.Unflatten(2, (1, 1, 9)),
                                             nn.ConvTranspose3d(2, 2, 2, stride=(1, 1, 2), output_padding=(0, 0, 1)),
                                             nn.Flatten(), nn.Linear(2 * 2 * 2 * 19, 3)), torch.randn(5, 3, 3)),
        "BatchNorm-eval": (batch_norm_model(training=False), torch.randn(5, 2, 4, 4)),
        "BatchNorm1d-eval": (nn.Sequential(nn.Linear(4, 6), running(nn.BatchNorm1d(6)), nn.Tanh(), nn.Linear(6, 3)),
                             torch.randn(5, 4)),
        "EmbeddingBag-max": (Bags("max"), torch.randint(9, (5, 4))),
        "EmbeddingBag-mean": (Bags("mean"), torch.randint(9, (5, 4))),
        "EmbeddingBag-weighted-sum": (Bags("sum"), (torch.randint(9, (5, 4)), torch.rand(5, 4) + 0.5)),
    }
    if Conv1D is not None:
        models["Conv1D"] = (nn.Sequential(Conv1D(6, 4), nn.Tanh(), Conv1D(6, 6), nn.Flatten(), nn.Linear(12, 3)),
                            torch.randn(5, 2, 4))
    return models


E2E = end_to_end_models()


@pytest.mark.parametrize("method", ["hooks", "expand", "kernel"])
@pytest.mark.parametrize("name", E2E)
def test_models_with_the_new_layers_give_the_loops_per_sample_gradients(name, method):
    model, inputs = E2E[name]
    model = copy.deepcopy(model)
    dtype = torch.float32 if method == "kernel" else torch.float64
    cast = lambda v: v.to(dtype) if v.is_floating_point() else v
    model = model.to(dtype)
    inputs = tuple(cast(t) for t in inputs) if isinstance(inputs, tuple) else cast(inputs)
    y = torch.randint(3, (5,))
    as64 = lambda v: v.double() if v.is_floating_point() else v
    want = persample.per_sample_grads(copy.deepcopy(model).double(),
                                      tuple(as64(t) for t in inputs) if isinstance(inputs, tuple) else as64(inputs),
                                      y, method="loop")
    got = persample.per_sample_grads(model, inputs, y, method=method)
    assert set(got) == set(want)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for param in want:
        torch.testing.assert_close(got[param].double(), want[param], rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", E2E)
def test_the_new_layers_are_counted_by_the_floor(name):
    model, inputs = E2E[name]
    flops, uncounted = count_flops(model, inputs)
    assert uncounted == () and flops > 0


class FlatBags(nn.Module):
    """An EmbeddingBag called on a 1-D input with offsets, one bag per sample: sample i's first lengths[i]
    indices (`shifted`: each bag but the first starts one element late, taking the previous sample's last
    element, so samples are coupled)."""

    def __init__(self, mode: str, last: bool, shifted: bool = False) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(9, 4, mode=mode, padding_idx=1, include_last_offset=last)
        self.head, self.shifted = nn.Linear(4, 3), shifted

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        flat = idx[torch.arange(idx.shape[1]) < lengths[:, None]]
        offsets = torch.cumsum(lengths, 0) - lengths
        if self.shifted:
            offsets = torch.cat([offsets[:1], (offsets[1:] - 1).clamp_min(0)])
        if self.bag.include_last_offset:
            offsets = torch.cat([offsets, lengths.sum().reshape(1)])
        return self.head(torch.tanh(self.bag(flat, offsets)))


needs_batch_first = pytest.mark.skipif(
    "batch_first" not in {f.name for f in dataclasses.fields(LayerRule)},
    reason="the checks read a layer's batch through `LayerRule.batch_first` (not in this tree yet)")


@needs_batch_first
@pytest.mark.parametrize("method", ["hooks", "expand"])
@pytest.mark.parametrize("mode, last", [("sum", False), ("mean", True), ("max", False), ("max", True)])
def test_an_embedding_bag_on_a_flat_input_with_offsets_has_its_bags_as_samples(mode, last, method):
    torch.manual_seed(0)
    model = FlatBags(mode, last).double()
    idx, lengths, y = torch.randint(9, (5, 4)), torch.tensor([4, 0, 2, 3, 1]), torch.randint(3, (5,))
    want = persample.per_sample_grads(model, (idx, lengths), y, method="loop")
    got = persample.per_sample_grads(model, (idx, lengths), y, method=method)
    for param in want:
        torch.testing.assert_close(got[param], want[param], rtol=1e-10, atol=1e-12)


@needs_batch_first
@pytest.mark.parametrize("method", ["hooks", "expand"])
def test_bags_that_mix_samples_are_refused(method):
    torch.manual_seed(0)
    model = FlatBags("sum", False, shifted=True).double()
    idx, lengths, y = torch.randint(9, (5, 4)), torch.tensor([4, 3, 2, 3, 2]), torch.randint(3, (5,))
    with pytest.raises(persample.Unsupported, match=r"EmbeddingBag.*rows of other samples changed"):
        persample.per_sample_grads(model, (idx, lengths), y, method=method)
