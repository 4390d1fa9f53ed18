"""Mixed precision (issue item 9): under `torch.autocast` a layer's captured input and its output
gradient differ in dtype, e.g. a float32 Linear fed float32 makes a bfloat16 output. Every kernel
takes every (x, grad_out, parameter) dtype combination a model feeds it (`tuning.FEEDS`) and
matches the shared rule in float64 within the coarser dtype's tolerance; bfloat16 with float16 is
refused; an empty batch returns empty gradients without launching a kernel."""
import copy

import pytest
import torch
from torch import nn

from .kernel_checks import DEVICE, assert_matches_rule, poisoned, poisoned_outputs
from persample.kernels import conv, embedding, kernel_rule_for, linear, norms
from persample.kernels.conv import conv_grads
from persample.kernels.embedding import embedding_grads
from persample.kernels.linear import linear_grads
from persample.kernels.norms import channel_norm_grads, row_norm_grads
from persample.kernels.tuning import FEEDS
from persample.rules import LayerInput, rule_for, trainable_locals
from persample.rules.conv import ConvRule
from persample.rules.embedding import EmbeddingRule
from persample.rules.linear import LinearRule
from persample.rules.norms import NormRule

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
MIXED = [feed for feed in FEEDS if len(set(feed)) > 1]
"""(x, grad_out, parameter) dtypes that differ: what autocast feeds a float32 model's layers."""


def name(feed) -> str:
    return "-".join(str(d).removeprefix("torch.") for d in feed)


def shifted(shape, dtype):
    """Far from zero mean, so a norm kernel that skipped centring would be caught."""
    return (torch.randn(shape, device=DEVICE) * 2 + 3).to(dtype)


def test_feeds_hold_every_pair_autocast_makes():
    pairs = {(x, g) for x, g, _ in FEEDS}
    assert {(F32, BF16), (BF16, F32), (F32, F16), (F16, F32), (BF16, BF16), (F16, F16), (F32, F32)} == pairs


@pytest.mark.parametrize("feed", MIXED, ids=name)
def test_linear_kernel_on_mixed_dtypes_matches_rule(feed):
    x_dtype, g_dtype, dtype = feed
    torch.manual_seed(0)
    layer = nn.Linear(19, 5).to(DEVICE, dtype)
    x, g = torch.randn(2, 3, 19, device=DEVICE).to(x_dtype), torch.randn(2, 3, 5, device=DEVICE).to(g_dtype)
    got = linear_grads(x, g, dtype=dtype, out=poisoned_outputs(layer, 2))
    assert_matches_rule(got, LinearRule.grad_sample(layer, LayerInput.of(x.double()), g.double(), trainable_locals(layer)), dtype, x_dtype, g_dtype)


@pytest.mark.parametrize("feed", MIXED, ids=name)
def test_conv_kernel_on_mixed_dtypes_matches_rule(feed):
    x_dtype, g_dtype, dtype = feed
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 6, 3, stride=(1, 2), padding=1, groups=2, padding_mode="reflect").to(DEVICE, dtype)
    x = torch.randn(2, 4, 5, 6, device=DEVICE)
    with torch.no_grad():
        g = torch.randn_like(layer.float()(x)).to(g_dtype)
    x = x.to(x_dtype)
    got = conv_grads(layer, x, g, out=poisoned_outputs(layer, 2))
    assert_matches_rule(got, ConvRule.grad_sample(layer, LayerInput.of(x.double()), g.double(), trainable_locals(layer)), dtype, x_dtype, g_dtype)


@pytest.mark.parametrize("feed", sorted({(g, p) for _, g, p in MIXED if g != p}, key=str), ids=name)
def test_embedding_kernel_on_a_grad_of_another_dtype_matches_rule(feed):
    g_dtype, dtype = feed
    torch.manual_seed(0)
    layer = nn.Embedding(11, 5, padding_idx=2).to(DEVICE, dtype)
    idx = torch.randint(4, (2, 7), device=DEVICE)
    g = torch.randn(2, 7, 5, device=DEVICE).to(g_dtype)
    got = embedding_grads(idx, g, 11, padding_idx=2, dtype=dtype, out=poisoned((2, 11, 5), dtype))
    assert_matches_rule({"weight": got}, EmbeddingRule.grad_sample(layer, LayerInput.of(idx), g.double(), trainable_locals(layer)), dtype, g_dtype)


@pytest.mark.parametrize("max_row_block", [4096, 2], ids=["inline-stats", "moments-pass"])
@pytest.mark.parametrize("kind", [nn.LayerNorm, nn.RMSNorm])
@pytest.mark.parametrize("feed", MIXED, ids=name)
def test_row_norm_kernel_on_mixed_dtypes_matches_rule(feed, kind, max_row_block):
    x_dtype, g_dtype, dtype = feed
    torch.manual_seed(0)
    layer = kind(6).to(DEVICE, dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x, g = shifted((2, 3, 6), x_dtype), torch.randn(2, 3, 6, device=DEVICE).to(g_dtype)
    got = row_norm_grads(layer, x, g, out=poisoned_outputs(layer, 2), max_row_block=max_row_block)
    rule = NormRule.grad_sample(copy.deepcopy(layer).double(), LayerInput.of(x.double()), g.double(), trainable_locals(layer))
    assert_matches_rule(got, rule, dtype, x_dtype, g_dtype)


@pytest.mark.parametrize("feed", MIXED, ids=name)
def test_channel_norm_kernel_on_mixed_dtypes_matches_rule(feed):
    x_dtype, g_dtype, dtype = feed
    torch.manual_seed(0)
    for layer, shape in [(nn.GroupNorm(2, 4), (2, 4, 5)), (nn.InstanceNorm2d(3, affine=True), (2, 3, 4, 3))]:
        layer = layer.to(DEVICE, dtype)
        x, g = shifted(shape, x_dtype), torch.randn(shape, device=DEVICE).to(g_dtype)
        got = channel_norm_grads(layer, x, g, out=poisoned_outputs(layer, 2))
        rule = NormRule.grad_sample(copy.deepcopy(layer).double(), LayerInput.of(x.double()), g.double(), trainable_locals(layer))
        assert_matches_rule(got, rule, dtype, x_dtype, g_dtype)


@pytest.mark.parametrize("half", [BF16, F16], ids=str)
def test_what_autocast_feeds_a_float32_model_is_covered_and_computed(half):
    """Record each layer's (input, output gradient, parameter) dtypes in a float32 model run under
    autocast: every combination is one of FEEDS, and each layer's kernel matches its float64 rule."""
    torch.manual_seed(0)
    model = nn.ModuleDict({
        "embed": nn.Embedding(10, 6), "linear": nn.Linear(6, 6), "layer_norm": nn.LayerNorm(6),
        "conv": nn.Conv1d(6, 4, 3), "group_norm": nn.GroupNorm(2, 4), "head": nn.Conv1d(4, 4, 1),
    }).to(DEVICE)
    seen = []

    def record(module, args, out):
        out.register_hook(lambda g: seen.append((module, args[0], g)))

    for module in model.values():
        module.register_forward_hook(record)
    with torch.autocast(DEVICE.type, dtype=half):
        h = model["layer_norm"](model["linear"](model["embed"](torch.randint(10, (2, 5), device=DEVICE))))
        out = model["head"](model["group_norm"](model["conv"](h.float().transpose(1, 2))))
        out.float().square().sum().backward()
    assert len(seen) == len(model)
    for module, x, g in seen:
        feed = (x.dtype, g.dtype, module.weight.dtype)
        fed = FEEDS if x.is_floating_point() else [(x.dtype, g, p) for _, g, p in FEEDS]  # Embedding: indices
        assert feed in fed, f"{type(module).__name__} was fed {feed}, not in tuning.FEEDS"
        got = kernel_rule_for(module).grad_sample(module, LayerInput.of(x), g, trainable_locals(module))
        x64 = x.double() if x.is_floating_point() else x
        rule = rule_for(module).grad_sample(copy.deepcopy(module).double(), LayerInput.of(x64), g.double(), trainable_locals(module))
        assert_matches_rule(got, rule, F32, *feed)


LAUNCHERS = {
    "linear": lambda x, g: linear_grads(x, g),
    "conv": lambda x, g: conv_grads(nn.Conv1d(3, 3, 1).to(DEVICE), x, g),
    "row_norm": lambda x, g: row_norm_grads(nn.LayerNorm(4).to(DEVICE), x, g),
    "channel_norm": lambda x, g: channel_norm_grads(nn.GroupNorm(1, 3).to(DEVICE), x, g),
}
SHAPES = {"linear": (2, 3), "conv": (2, 3, 4), "row_norm": (2, 4), "channel_norm": (2, 3, 4)}  # x's, and g's


@pytest.mark.parametrize("kernel", LAUNCHERS)
@pytest.mark.parametrize("x_dtype, g_dtype", [(BF16, F16), (F16, BF16)], ids=["bf16-fp16", "fp16-bf16"])
def test_bfloat16_with_float16_is_refused_naming_both(kernel, x_dtype, g_dtype):
    x = torch.randn(SHAPES[kernel], device=DEVICE, dtype=x_dtype)
    g = torch.randn(SHAPES[kernel], device=DEVICE, dtype=g_dtype)
    with pytest.raises(ValueError, match=f"x is {x_dtype} and grad_out is {g_dtype}"):
        LAUNCHERS[kernel](x, g)


def test_a_dtype_the_kernels_do_not_take_is_refused():
    with pytest.raises(ValueError, match="x is torch.float64"):
        linear_grads(torch.randn(2, 3, dtype=torch.float64, device=DEVICE), torch.randn(2, 3, device=DEVICE))


class NoLaunch:
    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched for an empty batch")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_an_empty_batch_gives_empty_gradients_without_a_launch(monkeypatch, dtype):
    for module, kernel in [
        (linear, "_linear_grads_kernel"), (conv, "_conv_grads_kernel"), (embedding, "_embedding_grads_kernel"),
        (norms, "_segment_moments_kernel"), (norms, "_row_affine_grads_kernel"), (norms, "_channel_affine_grads_kernel"),
    ]:
        monkeypatch.setattr(module, kernel, NoLaunch())

    def empty(*shape, dtype=dtype):
        return torch.empty(0, *shape, device=DEVICE, dtype=dtype)

    def check(got, layer):
        for local, p in layer.named_parameters():
            assert got[local].shape == (0, *p.shape) and got[local].dtype == p.dtype, local

    layer = nn.Linear(7, 5).to(DEVICE)
    check(linear_grads(empty(3, 7, dtype=F32), empty(3, 5), dtype=F32), layer)
    layer = nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect").to(DEVICE)
    check(conv_grads(layer, empty(4, 5, 5, dtype=F32), empty(6, 5, 5)), layer)
    assert embedding_grads(torch.empty(0, 5, dtype=torch.long, device=DEVICE), empty(5, 4), 9).shape == (0, 9, 4)
    for split in (4096, 2):
        layer = nn.LayerNorm(6).to(DEVICE)
        check(row_norm_grads(layer, empty(3, 6), empty(3, 6, dtype=F32), max_row_block=split), layer)
    layer = nn.GroupNorm(2, 4).to(DEVICE)
    check(channel_norm_grads(layer, empty(4, 5), empty(4, 5)), layer)
