"""Each per-layer rule, driven by hypothesis over random shapes, equals the loop in float64.

Shapes include batch size 1 and odd sizes, Linear (and Hugging Face's Conv1D) on 2-4 dimensional
inputs, convolutions with every kernel/stride/padding/dilation/groups/padding_mode combination that
PyTorch accepts, transposed convolutions with every stride/padding/output_padding/dilation/groups,
BatchNorm in eval mode with running statistics, EmbeddingBag in each mode (with padding and
per-sample weights), and a layer called twice in one forward (contributions accumulate). `rule_method` is each selected method
that computes with per-layer rules (`layer-rules`: hooks, expand and kernel when none is named).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from persample.methods.base import Method
from persample.methods.registry import get
from persample.modes import REFERENCE, TRANSLATION
from persample.reference import compare, tolerance_for

batch_sizes = st.sampled_from([1, 2, 3, 5])
examples = settings(max_examples=25, deadline=None, derandomize=True)


class Probe(nn.Module):
    """A layer followed by nothing: the loss reads its output with a per-sample readout."""

    def __init__(self, layer: nn.Module, twice: bool = False) -> None:
        super().__init__()
        self.layer, self.twice = layer, twice

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        out = self.layer(x, *rest)
        return self.layer(torch.tanh(out)) if self.twice else out


def readout_loss(outputs: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """ℓᵢ = Σ (outᵢ ⊙ rᵢ + ½ outᵢ²): nonlinear, so each gᵢ depends on its own sample."""
    return (outputs * readout + 0.5 * outputs**2).flatten(1).sum(1)


def _as(inputs: torch.Tensor | tuple[torch.Tensor, ...], dtype: torch.dtype):
    """`inputs` (a tensor, or a tuple of the layer's arguments) with its floating tensors in `dtype`."""
    if isinstance(inputs, tuple):
        return tuple(_as(t, dtype) for t in inputs)
    return inputs.to(dtype) if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() else inputs


def check_rule(method: Method, layer: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...],
               twice: bool = False) -> None:
    """Assert that `method`'s per-sample gradients of `layer` (called twice when `twice`) on `inputs` (one
    tensor, or a tuple of the layer's arguments, each batch first) match the float64 loop: within
    float64's translation tolerance, or float32's reference tolerance for a method without float64.
    """
    __tracebackhide__ = True
    torch.manual_seed(0)
    model = Probe(layer, twice).double()
    inputs = _as(inputs, torch.float64)
    readout = torch.randn_like(model(*inputs) if isinstance(inputs, tuple) else model(inputs))
    if torch.float64 not in method.capabilities.dtypes:
        model, inputs, readout = model.float(), _as(inputs, torch.float32), readout.float()
    got = method(model, inputs, readout, readout_loss)
    want = get("loop")(model.double(), _as(inputs, torch.float64), readout.double(), readout_loss)
    # In float64 the rules are a translation of the loop in the same precision; a method without
    # float64 computes in float32 and is held to float32's bound against the float64 loop.
    exact = torch.float64 in method.capabilities.dtypes
    tolerance = tolerance_for(torch.float64, TRANSLATION) if exact else tolerance_for(torch.float32, REFERENCE)
    comparison = compare(got, want)
    assert comparison.within(tolerance), f"{method.name} on {layer}: {comparison.describe(tolerance)}"


@examples
@given(batch=batch_sizes, leading=st.lists(st.integers(1, 3), max_size=2), features=st.integers(1, 6),
       out=st.integers(1, 6), bias=st.booleans(), twice=st.booleans())
def test_linear_on_two_to_four_dimensional_inputs(rule_method, batch, leading, features, out, bias, twice):
    out = features if twice else out
    check_rule(rule_method, nn.Linear(features, out, bias=bias), torch.randn(batch, *leading, features), twice)


@st.composite
def convolutions(draw):
    """A hypothesis strategy of (nn.Conv1d/2d/3d with random channels, groups, kernel, stride, padding,
    dilation and padding mode, the per-sample input shape).
    """
    dims = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    in_channels, out_channels = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = draw(st.sampled_from(["int", "same", "valid"]))
    stride = 1 if padding == "same" else draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2)) if padding == "int" else padding
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])) if padding != "valid" else "zeros"
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    size = tuple(max(s, 3) + draw(st.integers(0, 2)) for s in span)
    layer = getattr(nn, f"Conv{dims}d")(in_channels, out_channels, kernel, stride=stride, padding=pad,
                                        dilation=dilation, groups=groups, bias=draw(st.booleans()), padding_mode=mode)
    return layer, (in_channels, *size)


@examples
@given(batch=batch_sizes, conv=convolutions())
def test_convolution_with_stride_padding_dilation_and_groups(rule_method, batch, conv):
    layer, shape = conv
    check_rule(rule_method, layer, torch.randn(batch, *shape))


@examples
@given(batch=batch_sizes, vocab=st.integers(2, 9), width=st.integers(1, 5), tokens=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       padding=st.booleans())
def test_embedding_scatters_each_samples_tokens_into_its_own_rows(rule_method, batch, vocab, width, tokens, padding):
    layer = nn.Embedding(vocab, width, padding_idx=0 if padding else None)
    check_rule(rule_method, layer, torch.randint(vocab, (batch, *tokens)))


@st.composite
def normalisations(draw):
    """A hypothesis strategy of (a LayerNorm, RMSNorm, GroupNorm or InstanceNorm with random shape and affine
    settings, the per-sample input shape).
    """
    kind = draw(st.sampled_from(["layer", "rms", "group", "instance"]))
    # LayerNorm over one element is degenerate (x̂ ≡ 0, every gradient is rounding noise).
    channels = draw(st.integers(2 if kind == "layer" else 1, 4))
    if kind in ("layer", "rms"):
        shape = (draw(st.integers(1, 3)), channels)
        normalized = shape[-draw(st.integers(1, 2)):]
        if kind == "layer":
            return nn.LayerNorm(normalized, bias=draw(st.booleans())), shape
        return nn.RMSNorm(normalized, eps=draw(st.sampled_from([None, 1e-5]))), shape
    spatial = tuple(draw(st.integers(2, 3)) for _ in range(draw(st.integers(1, 2))))
    if kind == "group":
        groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
        return nn.GroupNorm(groups, channels), (channels, *spatial)
    layer = getattr(nn, f"InstanceNorm{len(spatial)}d")(channels, affine=True, track_running_stats=draw(st.booleans()))
    if layer.track_running_stats:  # use running statistics: eval mode with non-trivial values
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
        layer.eval()
    return layer, (channels, *spatial)


@examples
@given(batch=batch_sizes, norm=normalisations())
def test_normalisation_affine_parameters(rule_method, batch, norm):
    layer, shape = norm
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    check_rule(rule_method, layer, torch.randn(batch, *shape))


@examples
@given(batch=batch_sizes, leading=st.lists(st.integers(1, 3), max_size=2), nx=st.integers(1, 6),
       nf=st.integers(1, 6), twice=st.booleans())
def test_hugging_face_conv1d_is_a_linear_with_its_weight_transposed(rule_method, batch, leading, nx, nf, twice):
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    nf = nx if twice else nf
    layer = Conv1D(nf, nx)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    check_rule(rule_method, layer, torch.randn(batch, *leading, nx), twice)


@st.composite
def transposed_convolutions(draw):
    """A hypothesis strategy of (nn.ConvTranspose1d/2d/3d with random channels, groups, kernel, stride,
    padding, output_padding (below max(stride, dilation), as torch requires), dilation and bias, the
    per-sample input shape)."""
    dims = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    in_channels, out_channels = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    # Each output size (L−1)·s − 2p + d·(k−1) + output_padding + 1 at least 1.
    padding = tuple(draw(st.integers(0, min(d * (k - 1), ((n - 1) * s + d * (k - 1) + op) // 2)))
                    for n, s, k, d, op in zip(size, stride, kernel, dilation, output_padding))
    layer = getattr(nn, f"ConvTranspose{dims}d")(in_channels, out_channels, kernel, stride=stride, padding=padding,
                                                 output_padding=output_padding, groups=groups,
                                                 bias=draw(st.booleans()), dilation=dilation)
    return layer, (in_channels, *size)


@examples
@given(batch=batch_sizes, conv=transposed_convolutions())
def test_transposed_convolution_with_stride_padding_output_padding_dilation_and_groups(rule_method, batch, conv):
    layer, shape = conv
    check_rule(rule_method, layer, torch.randn(batch, *shape))


@examples
@given(batch=batch_sizes, dims=st.integers(0, 3), channels=st.integers(1, 4), twice=st.booleans(),
       scale=st.booleans(), data=st.data())
def test_batch_norm_in_eval_mode_is_its_running_statistics_affine_map(rule_method, batch, dims, channels, twice,
                                                                       scale, data):
    """BatchNorm1d on (N, C) (dims 0) and (N, C, L), BatchNorm2d, BatchNorm3d; eval mode, non-trivial running
    statistics, a trainable weight and bias (or bias alone)."""
    spatial = tuple(data.draw(st.integers(1, 3)) for _ in range(dims))
    layer = getattr(nn, f"BatchNorm{max(dims, 1)}d")(channels)
    layer.running_mean.uniform_(-1, 1)
    layer.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    layer.weight.requires_grad_(scale)
    check_rule(rule_method, layer.eval(), torch.randn(batch, channels, *spatial), twice)


@examples
@given(batch=batch_sizes, vocab=st.integers(2, 9), width=st.integers(1, 4), length=st.integers(1, 5),
       mode=st.sampled_from(["sum", "mean", "max"]), padding=st.booleans(), weighted=st.booleans())
def test_embedding_bag_sums_averages_or_takes_the_max_of_each_samples_bag(rule_method, batch, vocab, width, length,
                                                                        mode, padding, weighted):
    """One bag per sample (a 2-D input), padding_idx 0 left out of the bags (and of mean's count; a bag of
    padding alone gives zeros), per_sample_weights in sum mode."""
    layer = nn.EmbeddingBag(vocab, width, mode=mode, padding_idx=0 if padding else None)
    indices = torch.randint(vocab, (batch, length))
    inputs = (indices, None, torch.rand(batch, length) + 0.5) if weighted and mode == "sum" else indices
    check_rule(rule_method, layer, inputs)
