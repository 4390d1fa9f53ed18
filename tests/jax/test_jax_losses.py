"""Loss functions and loss modules translate to torch's values, options and reductions included."""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from persample import losses
from persample.conformance.assertions import assert_translates
from persample.jax_translate.eager import evaluate

torch.manual_seed(0)
CLASS_WEIGHTS = torch.rand(5, dtype=torch.float64) + 0.5
POSITIVE_WEIGHTS = torch.rand(4, dtype=torch.float64) + 0.5
ELEMENT_WEIGHTS = torch.rand(6, 3, dtype=torch.float64)


def logits(*shape):
    return lambda: torch.randn(*shape, dtype=torch.float64)


def classes(count, *shape, ignored=None):
    def make():
        target = torch.randint(count, shape)
        if ignored is not None:
            target.view(-1)[::3] = ignored
        return target
    return make


def probabilities(*shape):
    return lambda: torch.softmax(torch.randn(*shape, dtype=torch.float64), 1)


def log_probabilities(*shape):
    return lambda: torch.log_softmax(torch.randn(*shape, dtype=torch.float64), 1)


def bits(*shape):
    return lambda: torch.randint(2, shape).double()


pytestmark = pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")

CASES = {
    "cross-entropy": (partial(F.cross_entropy, reduction="none"), logits(6, 5), classes(5, 6)),
    "cross-entropy-weight-ignore-smoothing": (
        partial(F.cross_entropy, weight=CLASS_WEIGHTS, ignore_index=1, label_smoothing=0.2, reduction="none"),
        logits(6, 5), classes(5, 6, ignored=1)),
    "cross-entropy-spatial": (partial(F.cross_entropy, reduction="none"), logits(3, 5, 4), classes(5, 3, 4)),
    "cross-entropy-probabilities": (
        partial(F.cross_entropy, weight=CLASS_WEIGHTS, label_smoothing=0.1, reduction="none"), logits(6, 5), probabilities(6, 5)),
    "cross-entropy-mean-weighted-ignore": (
        partial(F.cross_entropy, weight=CLASS_WEIGHTS, ignore_index=0), logits(6, 5), classes(5, 6, ignored=0)),
    "cross-entropy-sum": (partial(F.cross_entropy, reduction="sum"), logits(6, 5), classes(5, 6)),
    "token-cross-entropy": (losses.token_cross_entropy, logits(3, 4, 5), classes(5, 3, 4)),
    "nll-weighted": (partial(F.nll_loss, weight=CLASS_WEIGHTS, reduction="none"), log_probabilities(6, 5), classes(5, 6)),
    "nll-mean-ignore": (partial(F.nll_loss, ignore_index=2), log_probabilities(6, 5), classes(5, 6, ignored=2)),
    "mse-per-sample": (losses.mse, logits(6, 3, 2), logits(6, 3, 2)),
    "mse-legacy-reduce-false": (partial(F.mse_loss, reduce=False), logits(6, 3), logits(6, 3)),
    "mse-weighted-sum": (partial(F.mse_loss, reduction="sum", weight=ELEMENT_WEIGHTS), logits(6, 3), logits(6, 3)),
    "l1": (partial(F.l1_loss, reduction="none"), logits(6, 3), logits(6, 3)),
    "bce-with-logits": (
        partial(F.binary_cross_entropy_with_logits, weight=POSITIVE_WEIGHTS, pos_weight=POSITIVE_WEIGHTS.flip(0), reduction="none"),
        logits(6, 4), bits(6, 4)),
    "cross-entropy-module": (
        nn.CrossEntropyLoss(weight=CLASS_WEIGHTS, ignore_index=3, label_smoothing=0.1, reduction="none"),
        logits(6, 5), classes(5, 6, ignored=3)),
    "nll-module": (nn.NLLLoss(weight=CLASS_WEIGHTS), log_probabilities(6, 5), classes(5, 6)),
    "mse-module": (nn.MSELoss(reduction="none"), logits(6, 3), logits(6, 3)),
    "l1-module": (nn.L1Loss(reduction="sum"), logits(6, 3), logits(6, 3)),
    "bce-with-logits-module": (nn.BCEWithLogitsLoss(pos_weight=POSITIVE_WEIGHTS, reduction="none"), logits(6, 4), bits(6, 4)),
}


@pytest.mark.parametrize("case", CASES)
def test_translated_loss_computes_torch_values(case):
    loss_fn, make_outputs, make_targets = CASES[case]
    torch.manual_seed(1)
    outputs, targets = make_outputs(), make_targets()
    expected = loss_fn(outputs, targets)
    got = evaluate(nn.Identity(), outputs, loss_fn=loss_fn, targets=targets, compiled=True)
    assert_translates(got, expected, torch.float64, case)
