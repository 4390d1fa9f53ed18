"""Dense models on flat inputs: logistic regression, the MNIST MLP, a large Linear, regression."""
from __future__ import annotations

import torch
from torch import nn

from .. import losses
from .registry import BENCH, QUICK, Workload, register_workload


def _features_and_classes(features: int, classes: int):
    def make_batch(size: str, batch: int, generator: torch.Generator):
        x = torch.randn(batch, features[size] if isinstance(features, dict) else features, generator=generator)
        n_classes = classes[size] if isinstance(classes, dict) else classes
        return x, torch.randint(n_classes, (batch,), generator=generator)

    return make_batch


MLP_WIDTHS = {"small": (64, 32, 16, 10), "full": (784, 512, 256, 10)}


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear layers of the consecutive `widths`, with a ReLU between each pair (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


register_workload(Workload(
    name="logreg",
    description="logistic regression: one Linear layer, softmax cross-entropy",
    make_model=lambda size: nn.Linear(*{"small": (20, 3), "full": (784, 10)}[size]),
    make_batch=_features_and_classes({"small": 20, "full": 784}, {"small": 3, "full": 10}),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"dense"}),
))

register_workload(Workload(
    name="mlp",
    description="MNIST MLP 784-512-256-10 with ReLU",
    make_model=lambda size: mlp(MLP_WIDTHS[size]),
    make_batch=_features_and_classes({s: w[0] for s, w in MLP_WIDTHS.items()}, 10),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"dense", BENCH, QUICK}),
))

LINEAR_SIDE = {"small": 32, "full": 1024}
register_workload(Workload(
    name="linear_large",
    description="a single Linear 1024x1024 (per-sample gradients dominate the work)",
    make_model=lambda size: nn.Linear(LINEAR_SIDE[size], LINEAR_SIDE[size]),
    make_batch=_features_and_classes(LINEAR_SIDE, LINEAR_SIDE),
    loss_fn=losses.cross_entropy,
    tags=frozenset({"dense", BENCH}),
))

REGRESSION_WIDTHS = {"small": (12, 16, 3), "full": (128, 512, 8)}


def _regression_batch(size: str, batch: int, generator: torch.Generator):
    widths = REGRESSION_WIDTHS[size]
    return (
        torch.randn(batch, widths[0], generator=generator),
        torch.randn(batch, widths[-1], generator=generator),
    )


register_workload(Workload(
    name="regression_mse",
    description="MLP regression with a per-sample mean squared error over several outputs",
    make_model=lambda size: nn.Sequential(
        nn.Linear(*REGRESSION_WIDTHS[size][:2]), nn.Tanh(), nn.Linear(*REGRESSION_WIDTHS[size][1:])
    ),
    make_batch=_regression_batch,
    loss_fn=losses.mse,
    tags=frozenset({"dense", "regression"}),
))
