"""The jax method on forwards torch.fx cannot trace: captured on real samples, one program per
path, each guarded by the values its Python branches read.

Hugging Face models branch on tensor values (the sdpa mask helpers test `attention_mask.all()`),
so torch.fx stops; the jax method then records each path's ATen graph with `make_fx` on a real
sample (`persample.jax_translate.capture`) and guards it (`guarded`). Checked here: tiny
random-weight Hugging Face models given a padded attention mask, against the float64 loop; a
step prepared on one path and called on a batch taking another raises `StaleStep`, and
`per_sample_grads` prepares again and is right; what the capture cannot translate or guard is
refused by name, and the jax method's other refusals hold on this path too.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from persample import LossNotPerSample, StaleStep, Unsupported, per_sample_grads
from persample.jax_translate.guarded import GuardedStep
from persample.methods.jax import JaxMethod
from persample.methods.registry import get
from persample.losses import cross_entropy, seq2seq_token_cross_entropy, shifted_token_cross_entropy
from persample.reference import compare, reference_grads, tolerance_for
from persample.workloads.huggingface import LogitsOf

QUICK = JaxMethod(optimize=False)


def assert_right(grads, model, inputs, targets, loss_fn=None, dtype=torch.float64):
    __tracebackhide__ = True
    reference = reference_grads(model, inputs, targets, loss_fn or (lambda o, t: F.cross_entropy(o, t, reduction="none")))
    comparison = compare(grads, reference)
    tolerance = tolerance_for(dtype)
    assert comparison.within(tolerance), comparison.describe(tolerance)


# ---- small models with Python branches on tensor values --------------------------------------

class MaskedPooling(nn.Module):
    """`if mask.all():` a fast path (every position counts) else the masked mean: the same function
    (with `equal`, the test is `torch.equal(mask, ones)`)."""

    def __init__(self, equal: bool = False) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(20, 8), nn.Linear(8, 3)
        self.equal = equal

    def forward(self, ids, mask):
        h = torch.tanh(self.embed(ids))
        if (torch.equal(mask, torch.ones_like(mask)) if self.equal else mask.all()):
            pooled = h.mean(1)
        else:
            weights = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * weights).sum(1) / weights.sum(1)
        return self.head(pooled)


class SignBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:  # each sample alone takes its own branch
            h = torch.tanh(h)
        else:
            h = 2 * torch.sigmoid(h)
        return self.head(h)


class Branched(nn.Module):
    """A branch on a value (so torch.fx cannot trace), then `then(self, h)`."""

    def __init__(self, then=None) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(5, 6), nn.Linear(6, 3)
        self.then = then

    def forward(self, x):
        h = self.fc(x)
        if h.abs().sum() > 0:
            h = torch.tanh(h)
        return self.head(self.then(self, h) if self.then else h)


def token_batch(batch: int = 4, length: int = 6, padded: bool = True, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if padded:
        mask[-1, -2:] = 0
        mask[1, -3:] = 0
    return {"ids": ids, "mask": mask}, torch.randint(3, (batch,), generator=generator)


def test_a_model_torch_fx_cannot_trace_is_prepared_by_capture_and_right():
    torch.manual_seed(0)
    model = SignBranch().double()
    x = torch.randn(8, 5, dtype=torch.float64)
    x[::2] = x[::2].abs() * 3  # samples on both sides of the branch
    y = torch.randint(3, (8,))
    step = QUICK.prepare(model, None, (x, y))
    assert isinstance(step.raw.compiled, GuardedStep) and len(step.raw.compiled.paths) == 2
    assert_right(step(x, y), model, x, y)


def test_a_step_prepared_on_one_path_raises_stale_step_on_a_batch_taking_another():
    torch.manual_seed(0)
    model = MaskedPooling().double()
    unpadded, y = token_batch(padded=False)
    padded, _ = token_batch(padded=True)
    step = QUICK.prepare(model, None, (unpadded, y))
    assert len(step.raw.compiled.paths) == 1
    with pytest.raises(StaleStep, match=r"sample 1 of this batch takes a path .* not prepared for.*mask.all\(\)") as stale:
        step(padded, y)
    assert stale.value.method == "jax"
    assert_right(step(unpadded, y), model, unpadded, y)  # the path it was prepared for still serves


def test_per_sample_grads_prepares_again_on_the_stale_batch_and_is_right():
    torch.manual_seed(0)
    model = MaskedPooling().double()
    unpadded, y = token_batch(padded=False)
    padded, _ = token_batch(padded=True)
    assert_right(per_sample_grads(model, unpadded, y, method=QUICK), model, unpadded, y)
    grads = per_sample_grads(model, padded, y, method=QUICK)  # the cached step is stale: prepared again
    assert_right(grads, model, padded, y)


@pytest.mark.parametrize("equal", [False, True], ids=["all", "torch.equal"])
def test_the_guards_give_each_sample_its_own_path_in_a_mixed_batch(equal):
    torch.manual_seed(0)
    model = MaskedPooling(equal).double()
    padded, y = token_batch(batch=6, padded=True)
    step = QUICK.prepare(model, None, (padded, y))
    assert [p.row for p in step.raw.compiled.paths] == [0, 1]  # row 1 is the first padded one
    assert_right(step(padded, y), model, padded, y)
    other, y2 = token_batch(batch=6, padded=True, seed=1)
    assert_right(step(other, y2), model, other, y2)


# ---- what the capture refuses, and the jax method's refusals on this path ----------------------

class Nonzero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:
            h = h + 1
        return h + torch.nonzero(x > 0).sum()


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        if x.sum() > -1e3:  # a branch on a value: torch.fx cannot trace past it
            x = x + 0
        return self.fc(x) / x.abs().max().item()  # a float read: a path per sample


class ReadsNumpy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return self.fc(x) * float(x.detach().numpy().std())


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def no_grad_part(module, h):
    with torch.no_grad():
        scale = h.norm()
    return h / scale


REFUSED = {
    "data-dependent-shape": (Nonzero, r"aten.nonzero \(in <root> \(Nonzero\), at .*test_jax_real_capture.py.*\) returns as many rows"),
    "too-many-paths": (Scaled, r"more than 8 paths .*tensor value read at .*x.abs\(\).max\(\).item\(\)"),
    "numpy-read": (ReadsNumpy, r"reads a tensor's values with Tensor.numpy\(\) in <root> \(ReadsNumpy\)"),
    "autograd-function": (lambda: Branched(lambda m, h: Double.apply(h)), r"custom autograd Function Double"),
    "no-grad": (lambda: Branched(no_grad_part), r"runs under torch.no_grad\(\)"),
    "training-dropout": (lambda: Branched(lambda m, h: F.dropout(h, 0.5, training=True)), r"dropout|random"),
    "hook": (lambda: _hooked(Branched()), r"forward hooks, which the JAX translation would not run"),
}


def _hooked(model):
    model.fc.register_forward_hook(lambda module, args, output: output * 2)
    return model


@pytest.mark.parametrize("case", REFUSED)
def test_what_the_capture_cannot_translate_or_guard_is_refused_by_name(case):
    make, message = REFUSED[case]
    torch.manual_seed(0)
    x, y = torch.randn(10, 5), torch.randint(3, (10,))
    with pytest.raises(Unsupported, match=message) as refused:
        get("jax").prepare(make(), None, (x, y))
    assert refused.value.method == "jax" and "loop" in refused.value.supported_by, str(refused.value)


def test_an_index_out_of_range_is_a_value_error_and_int64_beyond_int32_too():
    torch.manual_seed(0)
    model = MaskedPooling()
    batch, y = token_batch(padded=False)
    step = QUICK.prepare(model, None, (batch, y))
    bad = {"ids": batch["ids"].clone(), "mask": batch["mask"]}
    bad["ids"][2, 0] = 25  # beyond the 20 rows of the embedding
    with pytest.raises(ValueError, match=r"non-finite loss for samples \[2\]"):
        step(bad, y)
    bad["ids"][2, 0] = 1 << 40
    with pytest.raises(ValueError, match="beyond ±2\\*\\*31"):
        step(bad, y)


def test_a_loss_that_reduces_the_batch_is_rejected():
    x, y = torch.randn(6, 5), torch.randint(3, (6,))
    with pytest.raises(LossNotPerSample):
        QUICK(SignBranch(), x, y, F.cross_entropy)


def test_the_static_check_leaves_an_untraceable_forward_to_the_capture():
    assert get("jax").problem(SignBranch(), torch.device("cpu"), torch.float32) is None


# ---- tiny random-weight Hugging Face models with a padded attention mask ------------------------

transformers = None


def hf_tokens(batch: int = 4, length: int = 7):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, -3:] = 0  # one padded sample
    return ids, mask





def causal_lm(model):
    ids, mask = hf_tokens()
    return LogitsOf(model.eval()), {"input_ids": ids, "attention_mask": mask}, ids.masked_fill(mask == 0, -100), shifted_token_cross_entropy


def classifier(model, pad_id=None):
    ids, mask = hf_tokens()
    if pad_id is not None:
        ids = ids.masked_fill(mask == 0, pad_id)
    return LogitsOf(model.eval()), {"input_ids": ids, "attention_mask": mask}, torch.tensor([0, 1, 2, 1]), cross_entropy


def gpt2():
    config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0,
                                     embd_pdrop=0, attn_pdrop=0, bos_token_id=1, eos_token_id=2)
    return causal_lm(transformers.GPT2LMHeadModel(config))


def bert():
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
                                     num_labels=3)
    return classifier(transformers.BertForSequenceClassification(config))


def distilbert():
    config = transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, dropout=0,
                                           attention_dropout=0, seq_classif_dropout=0, num_labels=3,
                                           max_position_embeddings=32)
    return classifier(transformers.DistilBertForSequenceClassification(config))


def roberta():
    config = transformers.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=37, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
                                        num_labels=3, max_position_embeddings=40, pad_token_id=1)
    return classifier(transformers.RobertaForSequenceClassification(config), pad_id=1)


def t5():
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, dropout_rate=0, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    ids, mask = hf_tokens()
    labels = torch.randint(3, 99, (4, 5), generator=torch.Generator().manual_seed(1))
    labels[-1, -2:] = -100
    decoder_ids = torch.cat([torch.zeros(4, 1, dtype=torch.long), labels[:, :-1].clamp_min(0)], 1)
    decoder_mask = torch.cat([torch.ones(4, 1, dtype=torch.long), (labels[:, :-1] != -100).long()], 1)
    inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids,
              "decoder_attention_mask": decoder_mask}
    return LogitsOf(transformers.T5ForConditionalGeneration(config).eval()), inputs, labels, seq2seq_token_cross_entropy


def vit():
    config = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=37, hidden_dropout_prob=0,
                                    attention_probs_dropout_prob=0, num_labels=3)
    pixels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return LogitsOf(transformers.ViTForImageClassification(config).eval()), {"pixel_values": pixels}, \
        torch.tensor([0, 1, 2, 1]), cross_entropy


def llama():
    config = transformers.LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return causal_lm(transformers.LlamaForCausalLM(config))


def gpt2_lora():
    peft = pytest.importorskip("peft")
    model, inputs, labels, loss = gpt2()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], lora_dropout=0.0,
                             fan_in_fan_out=True)
    adapted = peft.get_peft_model(model.model, config)
    for name, param in adapted.named_parameters():
        if "lora_B" in name:  # non-zero, so the adapter's gradients are not trivially zero
            nn.init.normal_(param, std=0.1)
    return LogitsOf(adapted).eval(), inputs, labels, loss


HF_MODELS = {"gpt2": gpt2, "bert": bert, "distilbert": distilbert, "roberta": roberta, "t5": t5, "vit": vit,
             "llama": llama, "gpt2-lora": gpt2_lora}
FLOAT32_NORMS = {"t5", "llama"}
"""T5LayerNorm and LlamaRMSNorm compute in float32 whatever the model's dtype (`.to(torch.float32)`), so
a float64 model carries float32 rounding there: held to float32's tolerance (measured 3e-7, 2e-7)."""


@pytest.fixture(scope="module")
def hf():
    global transformers
    transformers = pytest.importorskip("transformers")
    return transformers


@pytest.mark.parametrize("name", HF_MODELS)
def test_tiny_hugging_face_models_with_padding_match_the_float64_loop(hf, name):
    torch.manual_seed(0)
    model, inputs, targets, loss = HF_MODELS[name]()
    model = model.double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    grads = per_sample_grads(model, inputs, targets, loss_fn=loss, method=QUICK)
    assert_right(grads, model, inputs, targets, loss, torch.float32 if name in FLOAT32_NORMS else torch.float64)


def test_tiny_gpt2_in_float32_is_within_float32_tolerance(hf):
    torch.manual_seed(0)
    model, inputs, targets, loss = gpt2()
    step = get("jax").prepare(model, loss, (inputs, targets))
    assert len(step.raw.compiled.paths) == 2  # the unpadded samples skip the mask, the padded one does not
    assert_right(step(inputs, targets), model, inputs, targets, loss, torch.float32)
