"""The convolution kernel: Conv1d/2d/3d with stride, padding (numbers, "same", "valid", modes),
dilation, groups and bias, by implicit im2col."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from .kernel_checks import DEVICE, DTYPES, assert_matches_rule, assert_method_matches_reference, poisoned_outputs
from persample.rules import LayerInput, trainable_locals
from persample.kernels.conv import conv_grads
from persample.rules.conv import ConvRule

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def check_conv(layer, x, dtype):
    __tracebackhide__ = True
    with torch.no_grad():
        g = torch.randn_like(layer(x))
    out = poisoned_outputs(layer, x.shape[0])
    got = conv_grads(layer, x, g, out=out)
    assert set(got) == set(out) and all(got[name] is out[name] for name in out)
    assert_matches_rule(got, ConvRule.grad_sample(layer, LayerInput.of(x.double()), g.double(), trainable_locals(layer)), dtype)


@st.composite
def convolutions(draw, dims):
    groups = draw(st.sampled_from([1, 2, 3]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = draw(st.sampled_from(["number", "same", "valid"]))
    stride = (1,) * dims if padding == "same" else tuple(draw(st.integers(1, 2)) for _ in range(dims))
    spec = dict(
        in_channels=groups * draw(st.integers(1, 2)),
        out_channels=groups * draw(st.integers(1, 3)),
        kernel_size=kernel,
        stride=stride,
        padding=tuple(draw(st.integers(0, 2)) for _ in range(dims)) if padding == "number" else padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=draw(st.sampled_from(["zeros", "zeros", "reflect", "circular"])) if padding != "valid" else "zeros",
    )
    # the smallest input every padding mode and the dilated kernel accept
    smallest = [max(d * (k - 1) + 1, 3) for d, k in zip(dilation, kernel)]
    side = [draw(st.integers(s, s + 4)) for s in smallest]
    return spec, side


@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=20, deadline=None)
@given(data=st.data(), batch=st.integers(1, 3), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_conv_kernel_matches_rule(dims, data, batch, dtype, seed):
    spec, side = data.draw(convolutions(dims))
    torch.manual_seed(seed)
    layer = CONV[dims](**spec).to(DEVICE, dtype)
    x = torch.randn(batch, spec["in_channels"], *side, device=DEVICE, dtype=dtype)
    check_conv(layer, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv3d_kernel_matches_rule(dtype):
    torch.manual_seed(0)
    layer = nn.Conv3d(4, 6, (2, 3, 1), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1), groups=2).to(DEVICE, dtype)
    check_conv(layer, torch.randn(2, 4, 5, 6, 3, device=DEVICE, dtype=dtype), dtype)


def test_conv_with_more_positions_and_channels_than_one_block():
    """Several o-, ck- and l-blocks per sample (the interpreter runs 16 × 32 × 32 blocks)."""
    torch.manual_seed(0)
    layer = nn.Conv2d(5, 20, 3, padding=1).to(DEVICE)
    check_conv(layer, torch.randn(2, 5, 9, 7, device=DEVICE), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_method_on_convolutions_matches_reference(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding="valid"), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=2, padding_mode="reflect"),
    ).to(DEVICE, dtype)
    x = torch.randn(3, 2, 9, 9, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        y = torch.randn_like(model(x))
    assert assert_method_matches_reference(model, x, y) == {"0": "triton", "2": "triton"}


def test_frozen_weight_computes_the_bias_alone():
    layer = nn.Conv1d(3, 4, 3).to(DEVICE)
    layer.weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, device=DEVICE)
    g = torch.randn(2, 4, 6, device=DEVICE)
    got = conv_grads(layer, x, g)
    assert set(got) == {"bias"}
    torch.testing.assert_close(got["bias"], g.sum(2), rtol=1e-5, atol=1e-5)
