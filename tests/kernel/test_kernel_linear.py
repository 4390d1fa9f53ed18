"""The Linear kernel: 2-4 dimensional inputs, odd sizes, batch 1, bias on/off, frozen weight."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from .kernel_checks import DEVICE, DTYPES, assert_matches_rule, assert_method_matches_reference, poisoned_outputs
from persample.rules import LayerInput, trainable_locals
from persample.kernels.linear import linear_grads
from persample.rules.linear import LinearRule


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    leading=st.lists(st.integers(1, 3), max_size=2),
    features=st.tuples(st.integers(1, 19), st.integers(1, 19)),
    bias=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_linear_kernel_matches_rule(batch, leading, features, bias, dtype, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(*features, bias=bias).to(DEVICE, dtype)
    x = torch.randn(batch, *leading, features[0], device=DEVICE, dtype=dtype)
    g = torch.randn(batch, *leading, features[1], device=DEVICE, dtype=dtype)
    out = poisoned_outputs(layer, batch)
    got = linear_grads(x, g, bias=bias, dtype=dtype, out=out)
    assert all(got[name] is out[name] for name in out), "the kernel must write into the given buffers"
    assert_matches_rule(got, LinearRule.grad_sample(layer, LayerInput.of(x.double()), g.double(), trainable_locals(layer)), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_kernel_method_on_a_token_linear_matches_reference(dtype):
    torch.manual_seed(0)
    layer = nn.Linear(7, 5).to(DEVICE, dtype)
    x = torch.randn(3, 4, 7, device=DEVICE, dtype=dtype)
    y = torch.randn(3, 4, 5, device=DEVICE, dtype=dtype)
    assert assert_method_matches_reference(layer, x, y) == {"": "triton"}


def test_frozen_weight_computes_the_bias_alone():
    layer = nn.Linear(6, 4).to(DEVICE)
    layer.weight.requires_grad_(False)
    x, g = torch.randn(2, 3, 6, device=DEVICE), torch.randn(2, 3, 4, device=DEVICE)
    from persample.kernels.linear import linear_grad_sample

    got = linear_grad_sample(layer, LayerInput.of(x), g, trainable_locals(layer))
    assert set(got) == {"bias"}
    torch.testing.assert_close(got["bias"], g.sum(1), rtol=1e-5, atol=1e-5)


def test_preallocated_output_of_the_wrong_shape_is_refused():
    x, g = torch.randn(2, 6, device=DEVICE), torch.randn(2, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"shape \(2, 4, 6\)"):
        linear_grads(x, g, out={"weight": torch.empty(2, 6, 4, device=DEVICE)})
