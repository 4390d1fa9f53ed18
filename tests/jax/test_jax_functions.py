"""Torch functions and tensor methods written in a forward translate to torch's values.

Each module below exercises one family the way model code writes it (functional calls, methods,
operators, shape arithmetic); values are compared in float64 through the compiled translation.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from persample.conformance.assertions import assert_translates
from persample.jax_translate.eager import evaluate


class Shapes(nn.Module):
    def forward(self, x):  # x: (B, 4, 6)
        batch, rows, cols = x.shape
        a = x.view(batch, rows * 2, -1).permute(0, 2, 1).reshape(batch, -1)
        b = x.transpose(1, 2).flatten(1).unsqueeze(1).squeeze(1).squeeze()
        c = torch.cat([x, x * 2], dim=1).unflatten(1, (2, rows))
        left, right = x.chunk(2, dim=-1)
        first, second, third = x.split([1, 2, 3], dim=2)
        rows_ = x.unbind(1)
        stacked = torch.stack([left, right], dim=0).sum(0)
        grown = x[:, :1].expand(-1, rows, -1) + x.mT.mT + x.size(1) + x.dim()
        tiled = x[:, 0].repeat(1, 2)
        picked = x[:, [0, 2], 1:5:2] + x[..., None][:, -1, None, :2, 0]
        return a, b, c, stacked, first + third.sum(-1, keepdim=True), second, rows_[3], grown, tiled, picked


class Arithmetic(nn.Module):
    def forward(self, x, y):
        z = torch.add(x, y, alpha=2) - torch.sub(x, y) * torch.mul(x, 0.5) / (y.abs() + 1)
        z = z + torch.div(x, y.abs() + 1, rounding_mode="floor") + (x // 1.5) + x % 2 + (-x) ** 2
        z = z + x.pow(3) + torch.pow(y, 2) + torch.clamp(x, min=-0.5) + x.clip(-1, 1) + torch.maximum(x, y)
        z = z + torch.where(x > y, x, y) + x.masked_fill(x < 0, 0.25) + x.where(x > 0, y) + torch.minimum(x, y)
        z = z + torch.exp(x) + torch.log(y.abs() + 1) + torch.log1p(y.abs()) + torch.sqrt(y.abs())
        z = z + torch.rsqrt(y.abs() + 1) + x.square() + torch.erf(x) + torch.sin(x) + x.cos() + x.reciprocal()
        z = z + x.sigmoid() + torch.tanh(x) + x.neg() + math.sqrt(x.shape[-1]) / math.log(3)
        return z * ((x != y) & (x >= -3) | (x <= 3)).float()


class Activations(nn.Module):
    def forward(self, x):
        return (torch.relu(x), F.relu(x), x.relu(), F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x),
                F.leaky_relu(x, 0.3), F.elu(x, 2.0), F.softplus(x, beta=3, threshold=2), F.sigmoid(x), F.tanh(x),
                F.dropout(x, 0.5, training=False))


class Reductions(nn.Module):
    def forward(self, x):  # x: (B, 3, 5)
        values, indices = x.max(1)
        return (x.mean(), x.mean((1, 2), keepdim=True), torch.sum(x, dim=-1), x.sum(1, dtype=torch.float64),
                torch.amax(x, 1), x.amin((0, 2)), x.max(dim=2).values, indices, torch.min(x, 0)[0],
                torch.max(x, x * 0.5), x.var(1), x.var(1, unbiased=False),
                torch.std(x, dim=2, correction=0, keepdim=True), torch.logsumexp(x, 2),
                x.softmax(-1), torch.softmax(x, 1), F.log_softmax(x, dim=2), x.log_softmax(1),
                F.normalize(x, dim=-1), F.normalize(x, p=1.0, dim=1), x.argmax(-1), values)


class Products(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 4))
        self.bias = nn.Parameter(torch.randn(5))
        self.register_buffer("scale", torch.tensor(0.7))

    def forward(self, x):  # x: (B, 3, 4)
        h = F.linear(x, self.weight, self.bias) * self.scale
        gram = torch.matmul(h, h.transpose(1, 2)) + torch.bmm(x, x.mT) + x @ x.transpose(-1, -2)
        mixed = torch.einsum("bij,bjk->bik", gram, h) + torch.einsum("bik,ok->bio", x, self.weight.t().t())
        first = x[0] @ self.weight.T + torch.mm(x[0], self.weight.t()) + x[0].matmul(self.weight.T)
        return mixed, first


class Attention(nn.Module):
    def forward(self, q, k, v):  # (B, heads, T, E)
        seq = q.shape[-2]
        mask = torch.arange(seq)[None, :] <= torch.arange(seq)[:, None]
        bias = torch.zeros((seq, seq)).masked_fill(~mask, -1e9)  # fx traces sizes given as one tuple
        return (F.scaled_dot_product_attention(q, k, v),
                F.scaled_dot_product_attention(q, k, v, is_causal=True),
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3),
                F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype)))


class Creation(nn.Module):
    def forward(self, x):  # (B, 4, 3)
        positions = torch.arange(x.shape[1], device=x.device).to(x.dtype)
        ramp = torch.arange(0.5, 2.0, 0.5, dtype=x.dtype)
        filled = torch.zeros(2, 3, dtype=x.dtype) + torch.ones(3) + torch.full((2, 3), 2.5) + torch.full_like(x[0, :2], 3.0)
        return (x + positions[:, None], ramp, filled, torch.zeros_like(x), torch.ones_like(x, dtype=torch.float64),
                x.new_zeros(2, 2), x.new_ones((3,)), x.new_full((2,), 4.0), x.detach() + x.clone().contiguous(),
                x.double().float().double(), x.long().to(x.dtype), x.to(torch.float64), x.type_as(x))


class Padding(nn.Module):
    def forward(self, x):  # (B, 2, 5, 6)
        return (F.pad(x, (1, 2)), F.pad(x, (1, 1, 2, 0), value=0.5), F.pad(x, (2, 1, 1, 2), mode="reflect"),
                F.pad(x, (1, 1, 2, 0), mode="replicate"), F.pad(x, (1, 2, 2, 1), mode="circular"), F.pad(x, (-1, -1)))


class Functional(nn.Module):
    """The functional forms of the layers, with the module's own parameters (traced, not leaves)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Parameter(torch.randn(4, 2, 3, 3))
        self.embed = nn.Parameter(torch.randn(9, 6))
        self.kernel1d = nn.Parameter(torch.randn(3, 6, 2))
        self.norm = nn.Parameter(torch.rand(4) + 0.5)
        self.shift = nn.Parameter(torch.randn(4))
        self.register_buffer("mean", torch.randn(4))
        self.register_buffer("var", torch.rand(4) + 0.5)

    def forward(self, x, tokens):  # x: (B, 2, 8, 8), tokens: (B, 5)
        h = F.conv2d(x, self.conv, padding=1, stride=(1, 2))
        h = h + F.group_norm(h, 2, self.norm, self.shift) + F.instance_norm(h, weight=self.norm, bias=self.shift)
        h = h + F.batch_norm(h, self.mean, self.var, self.norm, self.shift, training=False)
        h = F.layer_norm(h, (4,), self.norm, self.shift) + F.rms_norm(h, (4,), self.norm, eps=1e-3)
        pooled = F.max_pool2d(h, 2) + F.avg_pool2d(h, 2) + F.adaptive_avg_pool2d(h, (4, 2))
        words = F.embedding(tokens, self.embed, padding_idx=0)
        sequence = words.transpose(1, 2)
        return (pooled, F.adaptive_avg_pool1d(sequence, 1), F.max_pool1d(words, 2),
                F.conv1d(sequence, self.kernel1d, padding="same"), F.avg_pool1d(sequence, 2, ceil_mode=True))


def floats(*shape):
    return torch.randn(*shape, dtype=torch.float64)


CASES = {
    "shapes": (Shapes, lambda: (floats(2, 4, 6),)),
    "arithmetic": (Arithmetic, lambda: (floats(2, 3, 4), floats(2, 3, 4))),
    "activations": (Activations, lambda: (floats(2, 7) * 3,)),
    "reductions": (Reductions, lambda: (floats(2, 3, 5),)),
    "products": (Products, lambda: (floats(2, 3, 4),)),
    "attention": (Attention, lambda: (floats(2, 2, 5, 4), floats(2, 2, 5, 4), floats(2, 2, 5, 4))),
    "creation": (Creation, lambda: (floats(2, 4, 3),)),
    "padding": (Padding, lambda: (floats(2, 2, 5, 6),)),
    "functional-layers": (Functional, lambda: (floats(2, 2, 8, 8), torch.randint(9, (2, 5)))),
}


@pytest.mark.parametrize("case", CASES)
def test_translated_functions_compute_torch_values(case):
    make_model, make_inputs = CASES[case]
    torch.manual_seed(0)
    model = make_model().double()
    inputs = make_inputs()
    with torch.no_grad():
        expected = model(*inputs)
    assert_translates(evaluate(model, *inputs, compiled=True), expected, torch.float64, case)
