"""The norm kernels: LayerNorm, RMSNorm, GroupNorm, InstanceNorm (input and running statistics)."""
import copy
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from torch import nn

from .kernel_checks import DEVICE, DTYPES, assert_matches_rule, assert_method_matches_reference, poisoned_outputs
from persample.rules import LayerInput, trainable_locals
from persample.kernels.norms import channel_norm_grads, row_norm_grads
from persample.rules.norms import NormRule


def shifted_input(shape, dtype):
    """Inputs far from zero mean, so a kernel that skipped centring would be caught."""
    return (torch.randn(shape, device=DEVICE) * 2 + 3).to(dtype)


def check_kernel(kernel, layer, x, dtype, **options):
    __tracebackhide__ = True
    g = torch.randn_like(x)
    out = poisoned_outputs(layer, x.shape[0])
    got = kernel(layer, x, g, out=out, **options)
    assert set(got) == set(out) and all(got[name] is out[name] for name in out)
    assert_matches_rule(got, NormRule.grad_sample(copy.deepcopy(layer).double(), LayerInput.of(x.double()), g.double(), trainable_locals(layer)), dtype)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    rows=st.lists(st.integers(1, 4), max_size=2),
    normalized=st.lists(st.integers(1, 9), min_size=1, max_size=2),
    kind=st.sampled_from(["layer", "layer-no-bias", "rms", "rms-eps"]),
    split=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_row_norm_kernel_matches_rule(batch, rows, normalized, kind, split, dtype, seed):
    torch.manual_seed(seed)
    layer = {
        "layer": lambda: nn.LayerNorm(normalized),
        "layer-no-bias": lambda: nn.LayerNorm(normalized, bias=False),
        "rms": lambda: nn.RMSNorm(normalized),
        "rms-eps": lambda: nn.RMSNorm(normalized, eps=1e-3),
    }[kind]().to(DEVICE, dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = shifted_input((batch, *rows, *normalized), dtype)
    # split: rows longer than 2 features get a separate moments pass instead of in-tile statistics
    check_kernel(row_norm_grads, layer, x, dtype, max_row_block=2 if split else 4096)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    groups_and_width=st.sampled_from([(1, 3), (2, 6), (3, 3), (4, 8), (2, 2)]),
    spatial=st.lists(st.integers(1, 6), min_size=0, max_size=2),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_group_norm_kernel_matches_rule(batch, groups_and_width, spatial, dtype, seed):
    torch.manual_seed(seed)
    assume(batch * math.prod(spatial) > 1)  # torch refuses one value per channel, e.g. (1, C, 1)
    layer = nn.GroupNorm(*groups_and_width).to(DEVICE, dtype)
    x = shifted_input((batch, groups_and_width[1], *spatial), dtype)
    check_kernel(channel_norm_grads, layer, x, dtype)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("running", [False, True], ids=["instance-stats", "running-stats"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_instance_norm_kernel_matches_rule(dims, running, dtype):
    torch.manual_seed(dims)
    kind = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1]
    layer = kind(5, affine=True, track_running_stats=running).to(DEVICE, dtype)
    if running:
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
        layer.eval()
    x = shifted_input((2, 5, *[3, 4, 2][:dims]), dtype)
    check_kernel(channel_norm_grads, layer, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_method_on_norms_matches_reference(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 4), nn.RMSNorm(4)).to(DEVICE, dtype)
    x, y = shifted_input((3, 5, 6), dtype), torch.randn(3, 5, 4, device=DEVICE, dtype=dtype)
    assert set(assert_method_matches_reference(model, x, y).values()) == {"triton"}


def test_frozen_scale_computes_the_shift_alone():
    layer = nn.GroupNorm(2, 4).to(DEVICE)
    layer.weight.requires_grad_(False)
    x, g = torch.randn(2, 4, 5, device=DEVICE), torch.randn(2, 4, 5, device=DEVICE)
    got = channel_norm_grads(layer, x, g)
    assert set(got) == {"bias"}
    torch.testing.assert_close(got["bias"], g.sum(2), rtol=1e-5, atol=1e-5)
