"""Three models outside persample's zoo, as a user would bring them to `persample check`.

    persample check examples/own_models.py:make_transformer

Each factory returns (model, inputs, targets) or (model, inputs, targets, loss_fn).
"""
from __future__ import annotations

import torch
from torch import nn


class GroupNormCNN(nn.Module):
    """Two convolutions with GroupNorm (per-sample statistics, so DP-SGD-safe) and a linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm1 = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.norm2 = nn.GroupNorm(4, 16)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        x = torch.relu(self.norm2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


class TinyTransformer(nn.Module):
    """Token embedding, learned positions, one pre-norm block of nn.MultiheadAttention (batch first)
    and an MLP, mean-pooled into a classifier."""

    def __init__(self, vocab: int = 50, width: int = 16, heads: int = 2, length: int = 10, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.1)
        self.norm1 = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class GRUClassifier(nn.Module):
    """A batch-first GRU over feature sequences; the last hidden state is classified."""

    def __init__(self, features: int = 6, hidden: int = 12, classes: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(x)
        return self.head(last[-1])


def make_cnn(batch: int = 8):
    torch.manual_seed(0)
    return GroupNormCNN(), torch.randn(batch, 3, 12, 12), torch.randint(5, (batch,))


def make_transformer(batch: int = 8):
    torch.manual_seed(0)
    return TinyTransformer(), torch.randint(50, (batch, 10)), torch.randint(3, (batch,))


def make_gru(batch: int = 8):
    torch.manual_seed(0)
    return GRUClassifier(), torch.randn(batch, 7, 6), torch.randint(4, (batch,))
