"""Hugging Face `transformers` models: GPT-2, BERT, DistilBERT, RoBERTa, T5, ViT, Llama, and GPT-2
with a `peft` LoRA adapter.

Registered only when `transformers` (and, for the LoRA workload, `peft`) is installed: the extra
`persample[hf]`. Without it this module registers nothing and imports nothing. The packages are
imported when a model is built (`make_model`), not when `persample.workloads` is imported:
importing `transformers`' model classes takes seconds.

Each model is built from a configuration object with random, seeded weights (nothing is
downloaded), with every dropout probability set to 0 and transformers' default attention
implementation ("sdpa", scaled-dot-product attention, what a user gets without asking for one),
and wrapped in `LogitsOf`: keyword inputs in, the output's `.logits` out. The decoders (GPT-2,
T5, Llama) are configured with `use_cache=False`: a training step builds no key/value cache. Text
batches are right padded: `attention_mask` marks each sample's tokens (sample 0 full length, sample
1 the shortest); padded positions hold the pad token and, in the language models' labels, -100.
transformers refuses a batch of none (its attention reshapes with `view(0, T, -1, d)`).

    >>> from persample.workloads import get_workload                    # doctest: +SKIP
    >>> problem = get_workload("hf_bert").build("small", batch_size=3)   # doctest: +SKIP
    >>> sorted(problem.inputs), problem.model(**problem.inputs).shape      # doctest: +SKIP
    (['attention_mask', 'input_ids'], torch.Size([3, 3]))
"""
from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import losses
from ..assumptions import BATCH_FIRST
from .registry import BENCH, HUGGING_FACE, Workload, register_workload

HF_TAG = HUGGING_FACE
ATTENTION = "sdpa"
"""The attention implementation transformers picks by default for these models on torch >= 2.1
(`config._attn_implementation` of a model built from a configuration without asking): recorded in
each workload's description; `tests/test_huggingface_family.py` checks the models use it."""
SEQUENCE = {"small": 6, "full": 128}
"""Tokens per sample (the longest sample; shorter ones are right padded)."""
FIRST_TOKEN = 3
"""Token ids are drawn from [FIRST_TOKEN, vocab): below it sit the special tokens (pad, bos, eos)."""


def installed(*packages: str) -> bool:
    """Whether every one of `packages` can be imported (found, not imported: no import cost)."""
    return all(importlib.util.find_spec(package) is not None for package in packages)


class LogitsOf(nn.Module):
    """A Hugging Face model called with keyword inputs, giving its logits.

    `forward(**inputs)` calls `model(**inputs, return_dict=True)` and returns the `.logits` of the
    `ModelOutput`: (B, T, vocab) for a language model (T5: the decoder's positions), (B, classes)
    for a classifier.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The logits of `model(**inputs, return_dict=True)`."""
        return self.model(**inputs, return_dict=True).logits


def without_dropout(config):
    """`config` with every dropout probability set to 0: each attribute whose name holds "drop"
    ("dropout", "pdrop", "hidden_dropout_prob", "classifier_dropout", ...), a float or None (a
    classifier dropout of None falls back to the hidden dropout); returns the same object."""
    for name, value in list(config.to_dict().items()):
        if "drop" in name and (value is None or isinstance(value, float)):
            setattr(config, name, 0.0)
    return config


# ---- batches ----------------------------------------------------------------------------------


def lengths(batch: int, seq: int, generator: torch.Generator) -> torch.Tensor:
    """Each sample's number of tokens, (batch,) int64 in [2, seq]: sample 0 has `seq` (full length),
    sample 1 the shortest (2, padded), the others drawn; a batch of one is full length."""
    drawn = torch.randint(2, seq + 1, (batch,), generator=generator)
    if batch:
        drawn[0] = seq
    if batch > 1:
        drawn[1] = 2
    return drawn


def padded_tokens(batch: int, seq: int, vocab: int, pad: int, generator: torch.Generator):
    """Right-padded token ids and their mask: `input_ids` (batch, seq) int64 drawn from
    [FIRST_TOKEN, vocab) with `pad` after each sample's length, `attention_mask` (batch, seq) int64,
    1 on tokens and 0 on padding (see `lengths`)."""
    ids = torch.randint(FIRST_TOKEN, vocab, (batch, seq), generator=generator)
    mask = (torch.arange(seq) < lengths(batch, seq, generator)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


def causal_lm_batch(vocab: dict[str, int], pad: int = 0) -> Callable:
    """A `make_batch` for a causal language model: inputs {"input_ids", "attention_mask"}, both
    (B, T) int64, and targets the labels (B, T) int64: the input ids, -100 on padding."""

    def make_batch(size: str, batch: int, generator: torch.Generator):
        ids, mask = padded_tokens(batch, SEQUENCE[size], vocab[size], pad, generator)
        return {"input_ids": ids, "attention_mask": mask}, ids.masked_fill(mask == 0, -100)

    return make_batch


def classifier_batch(vocab: dict[str, int], classes: dict[str, int], pad: int = 0) -> Callable:
    """A `make_batch` for a sequence classifier: inputs {"input_ids", "attention_mask"}, both (B, T)
    int64, and targets the class labels (B,) int64."""

    def make_batch(size: str, batch: int, generator: torch.Generator):
        ids, mask = padded_tokens(batch, SEQUENCE[size], vocab[size], pad, generator)
        return {"input_ids": ids, "attention_mask": mask}, torch.randint(classes[size], (batch,), generator=generator)

    return make_batch


def seq2seq_batch(vocab: dict[str, int], pad: int = 0, start: int = 0) -> Callable:
    """A `make_batch` for an encoder-decoder: inputs {"input_ids", "attention_mask" (encoder),
    "decoder_input_ids", "decoder_attention_mask"}, each (B, T) int64, and targets the decoder's
    labels (B, T) int64 (-100 on padding). The decoder's inputs are the labels shifted right behind
    the start token, as `T5ForConditionalGeneration` makes them from `labels`."""

    def make_batch(size: str, batch: int, generator: torch.Generator):
        seq = SEQUENCE[size]
        ids, mask = padded_tokens(batch, seq, vocab[size], pad, generator)
        targets, target_mask = padded_tokens(batch, seq, vocab[size], pad, generator)
        decoder_ids = torch.cat([torch.full((batch, 1), start), targets[:, :-1]], 1)
        inputs = {"input_ids": ids, "attention_mask": mask,
                  "decoder_input_ids": decoder_ids, "decoder_attention_mask": target_mask}
        return inputs, targets.masked_fill(target_mask == 0, -100)

    return make_batch


def image_batch(side: dict[str, int], classes: dict[str, int]) -> Callable:
    """A `make_batch` for an image classifier: inputs {"pixel_values": (B, 3, side, side)} float
    (standard normal), targets the class labels (B,) int64."""

    def make_batch(size: str, batch: int, generator: torch.Generator):
        pixels = torch.randn(batch, 3, side[size], side[size], generator=generator)
        return {"pixel_values": pixels}, torch.randint(classes[size], (batch,), generator=generator)

    return make_batch


# ---- models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """How to build one transformers model: the class names (in `transformers`) and the
    configuration's fields per size."""

    model_class: str
    config_class: str
    config: dict[str, dict]

    def build(self, size: str) -> nn.Module:
        """The model at `size` ("small" or "full"), random weights from torch's generator, dropout 0,
        the default attention implementation; the transformers model itself, not wrapped."""
        import transformers

        config = without_dropout(getattr(transformers, self.config_class)(**self.config[size]))
        return getattr(transformers, self.model_class)(config)


def wrapped(spec: Spec) -> Callable[[str], nn.Module]:
    """A `make_model`: `LogitsOf(spec.build(size))`."""
    return lambda size: LogitsOf(spec.build(size))


def gpt2_lora(size: str) -> nn.Module:
    """`LogitsOf` GPT-2 with a peft LoRA adapter on the attention's `c_attn` (a transformers Conv1D:
    r=4, alpha 8, lora_dropout 0, fan_in_fan_out=True): only the adapter's A and B are trainable.
    Both are drawn at random (`init_lora_weights=False`): with peft's default B = 0, every per-sample
    gradient of A is 0, and a method returning zeros for it would pass."""
    import peft

    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"],
                             fan_in_fan_out=True, init_lora_weights=False, bias="none")
    model = GPT2.build(size)
    with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return LogitsOf(peft.get_peft_model(model, config))


def _both(small: dict, full: dict, **shared) -> dict[str, dict]:
    return {"small": {**shared, **small}, "full": {**shared, **full}}


CLASSES = {"small": 3, "full": 2}
SMALL_SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
USE_CACHE = dict(use_cache=False)  # a training step: no key/value cache to build

GPT2 = Spec("GPT2LMHeadModel", "GPT2Config", _both(
    dict(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=37, **SMALL_SPECIAL),
    dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),  # GPT-2 small
    **USE_CACHE))
BERT = Spec("BertForSequenceClassification", "BertConfig", _both(
    dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
         max_position_embeddings=32, num_labels=3, pad_token_id=0),
    dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
         intermediate_size=3072, num_labels=2)))  # BERT-base
DISTILBERT = Spec("DistilBertForSequenceClassification", "DistilBertConfig", _both(
    dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=32,
         num_labels=3, pad_token_id=0),
    dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, num_labels=2)))  # DistilBERT-base
ROBERTA = Spec("RobertaForSequenceClassification", "RobertaConfig", _both(
    # position ids count from pad_token_id + 1: max_position_embeddings >= seq + 2
    dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
         max_position_embeddings=34, num_labels=3, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
         intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, num_labels=2,
         pad_token_id=1, bos_token_id=0, eos_token_id=2)))  # RoBERTa-base
T5 = Spec("T5ForConditionalGeneration", "T5Config", _both(
    dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
         relative_attention_num_buckets=8, eos_token_id=1),
    dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),  # t5-small
    pad_token_id=0, decoder_start_token_id=0, **USE_CACHE))
VIT = Spec("ViTForImageClassification", "ViTConfig", _both(
    dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16,
         patch_size=4, num_labels=3),
    dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
         image_size=224, patch_size=16, num_labels=1000)))  # ViT-Base/16
LLAMA = Spec("LlamaForCausalLM", "LlamaConfig", _both(
    dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, max_position_embeddings=32, **SMALL_SPECIAL),
    dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
         num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=2048,
         pad_token_id=0, bos_token_id=1, eos_token_id=2),
    **USE_CACHE))

TEXT_TAGS = frozenset({HF_TAG, "sequence", BENCH})
VISION_TAGS = frozenset({HF_TAG, "vision", BENCH})
_CPU = "small"  # the full models take seconds per step on a CPU


NAMES = ("hf_gpt2", "hf_bert", "hf_distilbert", "hf_roberta", "hf_t5", "hf_vit", "hf_llama", "hf_gpt2_lora")
"""The family's workload names, registered or not (without `transformers` none is; without `peft`, the LoRA one is
not): what a deviations entry may name in an environment without the `hf` extra."""


def _register() -> None:
    """Register the family's workloads (transformers is installed; peft for the LoRA one)."""
    attention = f"attention {ATTENTION} (transformers' default)"
    vocab = lambda full: {"small": 99, "full": full}  # noqa: E731
    register_workload(Workload(
        name="hf_gpt2",
        description=f"transformers GPT2LMHeadModel (GPT-2 small: 768, 12 layers, 12 heads, seq 128): Conv1D layers, "
                    f"head tied to the token embedding, next-token loss over right-padded sequences; {attention}",
        make_model=wrapped(GPT2), make_batch=causal_lm_batch(vocab(50257)),
        loss_fn=losses.shifted_token_cross_entropy, tags=TEXT_TAGS, cpu_size=_CPU))
    register_workload(Workload(
        name="hf_bert",
        description=f"transformers BertForSequenceClassification (BERT-base, seq 128, 2 classes), "
                    f"right-padded sequences; {attention}",
        make_model=wrapped(BERT), make_batch=classifier_batch(vocab(30522), CLASSES),
        loss_fn=losses.cross_entropy, tags=TEXT_TAGS, cpu_size=_CPU))
    register_workload(Workload(
        name="hf_distilbert",
        description=f"transformers DistilBertForSequenceClassification (DistilBERT-base: 6 layers, seq 128, "
                    f"2 classes), right-padded sequences; {attention}",
        make_model=wrapped(DISTILBERT), make_batch=classifier_batch(vocab(30522), CLASSES),
        loss_fn=losses.cross_entropy, tags=TEXT_TAGS, cpu_size=_CPU))
    register_workload(Workload(
        name="hf_roberta",
        description=f"transformers RobertaForSequenceClassification (RoBERTa-base, seq 128, 2 classes): "
                    f"position ids from the padding, right-padded sequences; {attention}",
        make_model=wrapped(ROBERTA), make_batch=classifier_batch(vocab(50265), CLASSES, pad=1),
        loss_fn=losses.cross_entropy, tags=TEXT_TAGS, cpu_size=_CPU))
    register_workload(Workload(
        name="hf_t5",
        description=f"transformers T5ForConditionalGeneration (t5-small: 512, 6+6 layers, seq 128 in and out): "
                    f"encoder-decoder, relative position bias, T5 RMS LayerNorm, decoder_input_ids given, "
                    f"loss on the decoder's logits; {attention}",
        make_model=wrapped(T5), make_batch=seq2seq_batch(vocab(32128)),
        loss_fn=losses.seq2seq_token_cross_entropy, tags=TEXT_TAGS, cpu_size=_CPU,
        # the relative attention bias is an Embedding looked up with (T, T) bucket ids every sample
        # shares, with no batch dimension: per-layer rules cannot split its gradient by sample
        breaks=frozenset({BATCH_FIRST.id})))
    register_workload(Workload(
        name="hf_vit",
        description=f"transformers ViTForImageClassification (ViT-Base/16 at 224, 1000 classes): patch "
                    f"Conv2d, CLS token, position embeddings; {attention}",
        make_model=wrapped(VIT), make_batch=image_batch({"small": 16, "full": 224}, {"small": 3, "full": 1000}),
        loss_fn=losses.cross_entropy, tags=VISION_TAGS, cpu_size=_CPU))
    register_workload(Workload(
        name="hf_llama",
        description=f"transformers LlamaForCausalLM (1024, 8 layers, 16 heads, 8 key/value heads, vocab 32000, "
                    f"seq 128): RMSNorm, rotary embeddings, SwiGLU, untied head, next-token loss over "
                    f"right-padded sequences; {attention}",
        make_model=wrapped(LLAMA), make_batch=causal_lm_batch(vocab(32000)),
        loss_fn=losses.shifted_token_cross_entropy, tags=TEXT_TAGS, cpu_size=_CPU))
    if installed("peft"):
        register_workload(Workload(
            name="hf_gpt2_lora",
            description=f"hf_gpt2 with a peft LoRA adapter (r=4, fan_in_fan_out) on c_attn, A and B random: "
                        f"only the adapter trainable; {attention}",
            make_model=gpt2_lora, make_batch=causal_lm_batch(vocab(50257)),
            loss_fn=losses.shifted_token_cross_entropy, tags=TEXT_TAGS, cpu_size=_CPU))


if installed("transformers"):
    _register()
