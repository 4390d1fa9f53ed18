"""Convolutional models: the DP-SGD MNIST CNN, a CIFAR-10 CNN and a residual block with
GroupNorm, a frozen backbone, and the BatchNorm model every method must refuse."""
from __future__ import annotations

import torch
from torch import nn

from .. import losses
from .registry import BENCH, QUICK, Workload, register_workload


def _images(channels: int, side: dict[str, int], classes: int = 10):
    def make_batch(size: str, batch: int, generator: torch.Generator):
        x = torch.randn(batch, channels, side[size], side[size], generator=generator)
        return x, torch.randint(classes, (batch,), generator=generator)

    return make_batch


def mnist_cnn(size: str) -> nn.Sequential:
    """The CNN of the DP-SGD literature (Papernot et al. 2020; Opacus's MNIST example)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


register_workload(Workload(
    name="mnist_cnn",
    description="DP-SGD MNIST CNN: conv 16 8x8 s2 p3, maxpool 2/1, conv 32 4x4 s2, maxpool 2/1, fc 32, fc 10",
    make_model=mnist_cnn,
    make_batch=_images(1, {"small": 28, "full": 28}),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"conv", BENCH, QUICK}),
))

CIFAR_WIDTHS = {"small": (8, 16), "full": (32, 64, 128)}
CIFAR_SIDE = {"small": 16, "full": 32}


def cifar_cnn(size: str) -> nn.Sequential:
    """A CIFAR-style CNN of the `size`'s widths: per stage two 3x3 Conv2d + GroupNorm(4) + ReLU, then
    AvgPool2d(2); global average pooling and Linear to 10 classes.
    """
    layers: list[nn.Module] = []
    channels = 3
    for width in CIFAR_WIDTHS[size]:
        layers += [
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
            nn.AvgPool2d(2),
        ]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


register_workload(Workload(
    name="cifar_cnn",
    description="CIFAR-10 CNN with GroupNorm (the DP-friendly replacement for BatchNorm)",
    make_model=cifar_cnn,
    make_batch=_images(3, CIFAR_SIDE),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"conv", "norm", BENCH}),
    cpu_size="small",  # the full model takes seconds per step on a CPU at B=256
))


class ResidualBlock(nn.Module):
    """conv-GN-ReLU-conv(dilated, grouped)-GN plus the identity, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding="same", bias=False)
        self.norm1 = nn.GroupNorm(4, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=2, dilation=2, groups=2, bias=False)
        self.norm2 = nn.GroupNorm(4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(y)))


RES_CHANNELS = {"small": 8, "full": 64}
RES_SIDE = {"small": 8, "full": 32}


def resblock(size: str) -> nn.Sequential:
    """A strided 3x3 Conv2d + GroupNorm + ReLU stem, one residual block, global average pooling and Linear to
    10 classes.
    """
    c = RES_CHANNELS[size]
    return nn.Sequential(
        nn.Conv2d(3, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.ReLU(),
        ResidualBlock(c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10),
    )


register_workload(Workload(
    name="resblock",
    description="residual conv block with GroupNorm, a 'same'-padded conv and a dilated grouped conv",
    make_model=resblock,
    make_batch=_images(3, RES_SIDE),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"conv", "norm", "residual"}),
))


def frozen_backbone(size: str) -> nn.Sequential:
    """The `size`'s MNIST CNN with every layer but the last frozen (requires_grad False): only the head has
    per-sample gradients.
    """
    model = mnist_cnn(size)
    for layer in list(model)[:-1]:
        layer.requires_grad_(False)
    return model


register_workload(Workload(
    name="frozen_backbone",
    description="the MNIST CNN with every layer frozen but the classifier (fine-tuning)",
    make_model=frozen_backbone,
    make_batch=_images(1, {"small": 28, "full": 28}),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"conv", "frozen"}),
))


def batchnorm_cnn(size: str) -> nn.Sequential:
    """Conv2d, BatchNorm2d (training mode: couples the samples), ReLU, global average pooling, Linear to 10
    classes.
    """
    width = {"small": 4, "full": 32}[size]
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


register_workload(Workload(
    name="batchnorm_cnn",
    description="a CNN with BatchNorm in training mode: couples samples, so every method refuses it",
    make_model=batchnorm_cnn,
    make_batch=_images(3, {"small": 8, "full": 32}),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"conv", "batchnorm", "refused"}),
))
