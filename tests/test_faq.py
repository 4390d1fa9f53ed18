"""The README's FAQ, as checks: each answer is a test that would fail if the answer were wrong."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import persample


def problem(batch: int = 6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    return model, torch.randn(batch, 5, dtype=torch.float64), torch.randint(3, (batch,))


def batch_gradient(model, x, y, reduction: str) -> list[torch.Tensor]:
    return list(torch.autograd.grad(F.cross_entropy(model(x), y, reduction=reduction), list(model.parameters())))


def test_sum_gradient_over_b_is_the_mean_gradient_and_neither_is_per_sample():
    model, x, y = problem()
    total, mean = batch_gradient(model, x, y, "sum"), batch_gradient(model, x, y, "mean")
    for s, m in zip(total, mean):
        torch.testing.assert_close(s / len(x), m)
    per_sample = persample.per_sample_grads(model, x, y, method="loop")
    first = per_sample["0.weight"]
    assert not any(torch.allclose(first[i], mean[0]) or torch.allclose(first[i], total[0]) for i in range(len(x)))
    torch.testing.assert_close(first.sum(0), total[0])  # the per-sample gradients sum to the sum gradient
    torch.testing.assert_close(first.mean(0), mean[0])  # and average to the mean gradient


def test_softmax_cross_entropy_gradient_by_hand_is_softmax_minus_one_hot():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(3, (6,))
    (by_autograd,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)
    by_hand = logits.detach().softmax(-1) - F.one_hot(y, 3).double()
    torch.testing.assert_close(by_autograd, by_hand)
    (mean_grad,) = torch.autograd.grad(F.cross_entropy(logits, y), logits)
    torch.testing.assert_close(mean_grad, by_hand / 6)  # reduction="mean" divides every row by B


def test_autograd_grad_returns_gradients_while_backward_accumulates_into_dot_grad():
    model, x, y = problem()
    weight = model[0].weight
    (returned,) = torch.autograd.grad(F.cross_entropy(model(x), y), [weight])
    assert weight.grad is None  # autograd.grad touched nothing
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(weight.grad, 2 * returned)  # two backward() calls: twice the gradient


def test_autograd_averages_a_minibatch_by_scaling_each_samples_gradient_by_one_over_b():
    model, x, y = problem(batch=8)
    per_sample = persample.per_sample_grads(model, x, y, method="hooks")
    mean = batch_gradient(model, x, y, "mean")
    for (name, g), m in zip(per_sample.items(), mean):
        torch.testing.assert_close((g / len(x)).sum(0), m)
    # DP-SGD's pitfall: per-sample gradients of the *mean* loss are each B times too small, so
    # clipping them to norm C clips nothing that should be clipped.
    x.requires_grad_(False)
    scaled = persample.per_sample_grads(model, x, y, method="loop", loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none") / len(x))
    torch.testing.assert_close(scaled["0.weight"] * len(x), per_sample["0.weight"])
