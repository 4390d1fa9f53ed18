"""Sequence models: a text classifier, a Transformer encoder block, an LSTM classifier, a
language-model head with tied weights, and a 1-d convolutional model with instance/RMS norms."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from .registry import BENCH, Workload, register_workload

# vocabulary, width, hidden, sequence length, classes
TEXT = {"small": (50, 16, 32, 8, 4), "full": (10_000, 256, 1024, 64, 4)}


def _tokens(shape: dict[str, tuple], classes_index: int | None = 4, next_token: bool = False):
    def make_batch(size: str, batch: int, generator: torch.Generator):
        vocab, _, _, seq = shape[size][:4]
        tokens = torch.randint(vocab, (batch, seq + int(next_token)), generator=generator)
        if next_token:
            return tokens[:, :-1], tokens[:, 1:]
        return tokens, torch.randint(shape[size][classes_index], (batch,), generator=generator)

    return make_batch


class TextClassifier(nn.Module):
    """Embedding (row 0 = padding), LayerNorm, GELU MLP with a residual, mean pool, classifier."""

    def __init__(self, vocab: int, width: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(tokens))
        h = h + self.down(F.gelu(self.up(h)))
        return self.head(h.mean(1))


register_workload(Workload(
    name="text_classifier",
    description="text classifier: Embedding 10k x 256, LayerNorm, MLP 1024 with GELU, seq 64, mean pool",
    make_model=lambda size: TextClassifier(*(TEXT[size][:3] + TEXT[size][4:])),
    make_batch=_tokens(TEXT),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"embedding", "sequence", "norm", BENCH}),
    cpu_size="small",  # the full model takes seconds per step on a CPU at B=256
))


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder block; attention written with Linear projections."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention of x (B, T, width) with Linear projections: softmax(q·kᵀ/√d)·v per head
        (Vaswani et al. 2017, eq. 1), heads concatenated and projected; same shape.
        """
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        mixed = scores.softmax(-1) @ v  # (batch, heads, seq, head width)
        return self.proj(mixed.transpose(1, 2).reshape(batch, seq, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TransformerClassifier(nn.Module):
    """Embedding, one pre-norm Transformer encoder block, mean over tokens, Linear: (B, T) token ids to (B,
    classes) logits.
    """

    def __init__(self, vocab: int, width: int, hidden: int, classes: int, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.block = EncoderBlock(width, heads, hidden)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens)).mean(1))


# vocabulary, width, hidden, sequence length, classes
TRANSFORMER = {"small": (40, 16, 32, 8, 4), "full": (1_000, 256, 1024, 64, 4)}
register_workload(Workload(
    name="transformer_block",
    description="Transformer encoder block: 4-head attention, LayerNorm, GELU MLP; width 256, seq 64",
    make_model=lambda size: TransformerClassifier(*(TRANSFORMER[size][:3] + TRANSFORMER[size][4:])),
    make_batch=_tokens(TRANSFORMER),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"embedding", "sequence", "attention", "norm", BENCH}),
    cpu_size="small",  # the full model takes seconds per step on a CPU at B=256
))


class LSTMClassifier(nn.Module):
    """Embedding, a batch-first LSTM, Linear on the last state: (B, T) token ids to (B, classes) logits."""

    def __init__(self, vocab: int, width: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embed(tokens))
        return self.head(states[:, -1])


LSTM = {"small": (50, 8, 12, 6, 4), "full": (10_000, 128, 256, 64, 4)}
register_workload(Workload(
    name="lstm_classifier",
    description="LSTM classifier: Embedding, one nn.LSTM layer (hidden 256), last state, classifier",
    make_model=lambda size: LSTMClassifier(*(LSTM[size][:3] + LSTM[size][4:])),
    make_batch=_tokens(LSTM),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"embedding", "sequence", "rnn", BENCH}),
    cpu_size="small",  # the full model takes seconds per step on a CPU at B=256
))


class TiedLanguageModel(nn.Module):
    """Embedding -> RMSNorm -> GELU MLP -> output projection sharing the embedding's weight."""

    def __init__(self, vocab: int, width: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.RMSNorm(width)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.embed.weight  # tied: one parameter, two uses

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.down(F.gelu(self.up(self.norm(h))))
        return self.out(h)


LM = {"small": (40, 16, 32, 8), "full": (10_000, 256, 1024, 64)}
register_workload(Workload(
    name="lm_tied",
    description="language-model head: next-token loss, output projection tied to the embedding",
    make_model=lambda size: TiedLanguageModel(*LM[size][:3]),
    make_batch=_tokens(LM, next_token=True),
    loss_fn=losses.token_cross_entropy,
    tags=frozenset({"embedding", "sequence", "tied", "norm"}),
))


class SpeechConv(nn.Module):
    """Conv1d ('same', dilated) -> InstanceNorm1d (affine) -> Conv1d (strided) -> RMSNorm -> head."""

    def __init__(self, channels: int, classes: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, channels, 5, padding="same", dilation=2)
        self.inorm = nn.InstanceNorm1d(channels, affine=True)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1, padding_mode="reflect")
        self.rms = nn.RMSNorm(channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.inorm(self.conv1(x)))
        h = self.rms(self.conv2(h).transpose(1, 2))
        return self.head(h.mean(1))


SPEECH = {"small": (8, 16), "full": (64, 256)}


def _speech_batch(size: str, batch: int, generator: torch.Generator):
    length = SPEECH[size][1]
    return torch.randn(batch, 4, length, generator=generator), torch.randint(6, (batch,), generator=generator)


register_workload(Workload(
    name="speech_conv1d",
    description="1-d conv net: 'same' dilated Conv1d, InstanceNorm1d, reflect-padded strided Conv1d, RMSNorm",
    make_model=lambda size: SpeechConv(SPEECH[size][0]),
    make_batch=_speech_batch,
    loss_fn=losses.cross_entropy,
    tags=frozenset({"conv", "sequence", "norm"}),
))
