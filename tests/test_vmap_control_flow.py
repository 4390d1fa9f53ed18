"""vmap on forwards with data-dependent Python control flow: right, or a clear refusal.

torch.func's vmap cannot batch a Python branch on a tensor's value (`if x.sum() > 0:`, the sdpa
mask helpers of Hugging Face models testing `attention_mask.all()`): each sample may take its own
branch. The vmap method answers such a read where all the samples batched together read the same
value, and otherwise splits them by the value and batches each group again, so each sample takes
the branch it takes alone (`methods.vmap.by_path`): right against the float64 loop. What it cannot
batch (an operation whose output shape depends on the values) is refused when preparing, with
`Unsupported` naming the module, the reason and the methods that can, never torch's raw error.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from persample import Unsupported, per_sample_grads
from persample.losses import shifted_token_cross_entropy
from persample.reference import compare, reference_grads, tolerance_for
from persample.workloads.huggingface import LogitsOf

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:  # a Python branch on a tensor's value
            return torch.tanh(h)
        return h


class WithBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Branching()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(x))


def tiny_bert() -> nn.Module:
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
                                     num_labels=3)
    return LogitsOf(transformers.BertForSequenceClassification(config).eval())


def tiny_gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0,
                                     embd_pdrop=0, attn_pdrop=0, bos_token_id=1, eos_token_id=2)
    return LogitsOf(transformers.GPT2LMHeadModel(config).eval())


def token_batch(batch: int = 4, length: int = 7, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, -3:] = 0  # one padded sample
    return ids, mask



def right_or_refused(model, inputs, targets, loss_fn, module: str, kind: str):
    """vmap's answer within tolerance of the float64 loop, or `Unsupported` naming `module` (`kind`), the
    reason and the methods that can. Returns the refusal, or None."""
    torch.manual_seed(0)
    model = model.double()
    try:
        grads = per_sample_grads(model, inputs, targets, loss_fn=loss_fn, method="vmap")
    except Unsupported as refused:
        message = str(refused)
        assert "vmap: It looks like" not in message, message  # not torch's raw error
        assert f"layer {module} ({kind})" in message and refused.layer == kind, message
        assert "data-dependent" in message or "depends on a tensor's values" in message, message
        assert refused.method == "vmap" and "loop" in refused.supported_by, message
        return refused
    comparison = compare(grads, reference_grads(model, inputs, targets, loss_fn))
    assert comparison.within(tolerance_for(torch.float64)), comparison.describe(tolerance_for(torch.float64))
    return None


def test_a_branch_on_a_tensor_value_in_a_submodule_gives_each_sample_its_branch():
    torch.manual_seed(0)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(3, (6,))
    model = WithBranch().double()
    signs = torch.stack([model.block.fc(x[i:i + 1]).sum() > 0 for i in range(6)])
    assert 0 < int(signs.sum()) < 6, "the batch must hold samples of both branches"
    assert right_or_refused(model, x, y, None, "block", "Branching") is None


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_the_groups_follow_each_branch_in_chunks_too(chunk_size):
    from persample.methods.vmap import VmapMethod

    torch.manual_seed(1)
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(3, (9,))
    model = WithBranch().double()
    grads = per_sample_grads(model, x, y, method=VmapMethod(chunk_size=chunk_size))
    comparison = compare(grads, reference_grads(model, x, y, None))
    assert comparison.within(tolerance_for(torch.float64)), comparison.describe(tolerance_for(torch.float64))


class DynamicShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return h * torch.nonzero(x > 0).shape[0]  # a shape that depends on the values


class WithDynamicShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = DynamicShape()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(x))


def test_an_output_shape_that_depends_on_the_values_is_refused_naming_the_module():
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(3, (6,))
    with pytest.raises(Unsupported) as refused:
        per_sample_grads(WithDynamicShape().double(), x, y, method="vmap")
    message = str(refused.value)
    assert "vmap: We do not" not in message and refused.value.layer == "DynamicShape", message
    assert "layer block (DynamicShape)" in message and "output shape depends on a tensor's values" in message, message
    assert "torch.nonzero" in message and "loop" in refused.value.supported_by, message


def test_bert_with_a_padded_attention_mask_is_right():
    ids, mask = token_batch()
    assert None is right_or_refused(tiny_bert(), {"input_ids": ids, "attention_mask": mask}, torch.tensor([0, 1, 2, 1]), None,
                     "model.bert", "BertModel")


def test_gpt2_with_a_padded_attention_mask_is_right():
    ids, mask = token_batch()
    assert None is right_or_refused(tiny_gpt2(), {"input_ids": ids, "attention_mask": mask}, ids.masked_fill(mask == 0, -100),
                     shifted_token_cross_entropy, "model.transformer", "GPT2Model")


def test_gpt2_without_a_mask_has_no_branch_and_is_right():
    ids, _ = token_batch()
    assert right_or_refused(tiny_gpt2(), {"input_ids": ids}, ids, shifted_token_cross_entropy, "model.transformer",
                            "GPT2Model") is None
