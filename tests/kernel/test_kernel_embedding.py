"""The Embedding kernel: repeated tokens, padding rows, any index shape, batch 1."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from .kernel_checks import DEVICE, DTYPES, assert_matches_rule, assert_method_matches_reference, poisoned
from persample.rules import LayerInput, trainable_locals
from persample.kernels.embedding import embedding_grads
from persample.rules.embedding import EmbeddingRule


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    token_shape=st.lists(st.integers(1, 9), max_size=2),
    vocabulary=st.integers(1, 40),
    width=st.integers(1, 21),
    padding=st.one_of(st.none(), st.integers(-1, 0)),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_embedding_kernel_matches_rule(batch, token_shape, vocabulary, width, padding, dtype, seed):
    torch.manual_seed(seed)
    layer = nn.Embedding(vocabulary, width, padding_idx=padding).to(DEVICE, dtype)
    # few distinct tokens, so rows repeat within a sample and the padding row is hit
    idx = torch.randint(min(vocabulary, 4), (batch, *token_shape), device=DEVICE)
    g = torch.randn(*idx.shape, width, device=DEVICE, dtype=dtype)
    out = poisoned((batch, vocabulary, width), dtype)
    got = embedding_grads(idx, g, vocabulary, padding_idx=layer.padding_idx, dtype=dtype, out=out)
    assert got is out
    if layer.padding_idx is not None:
        assert not got[:, layer.padding_idx].any(), "the padding row must stay zero"
    assert_matches_rule({"weight": got}, EmbeddingRule.grad_sample(layer, LayerInput.of(idx), g.double(), trainable_locals(layer)), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_method_on_an_embedding_matches_reference(dtype):
    torch.manual_seed(0)
    layer = nn.Embedding(11, 6, padding_idx=3).to(DEVICE, dtype)
    idx = torch.randint(11, (4, 9), device=DEVICE)
    idx[0, :3] = 3
    y = torch.randn(4, 9, 6, device=DEVICE, dtype=dtype)
    assert assert_method_matches_reference(layer, idx, y) == {"": "triton"}


def test_tokens_spanning_several_row_blocks_and_token_blocks():
    """More tokens than one token block land in one row block, others in the last, partial one."""
    vocabulary, width = 37, 5
    idx = torch.tensor([[0] * 20 + [36] * 3 + [17] * 2], device=DEVICE)
    g = torch.randn(1, idx.shape[1], width, device=DEVICE)
    got = embedding_grads(idx, g, vocabulary, out=poisoned((1, vocabulary, width), torch.float32))
    layer = nn.Embedding(vocabulary, width).to(DEVICE)
    assert_matches_rule({"weight": got}, EmbeddingRule.grad_sample(layer, LayerInput.of(idx), g.double(), trainable_locals(layer)), torch.float32)
