"""The README's FAQ, as checks: each answer is a test that would fail if the answer were wrong."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import persample
from persample.methods.registry import get


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


def peak_bytes(run) -> int:
    """Most bytes torch's CPU allocator held while `run` ran (the benchmarks' memory measure)."""
    from persample.bench.memory import TorchCpuProbe

    probe = TorchCpuProbe()
    probe.start()
    result = run()
    peak = probe.stop()
    del result
    return peak


def test_per_sample_gradients_cost_b_times_the_parameters_whatever_the_method():
    """The output is B copies of the model: B·P·itemsize bytes, against P·itemsize for the ordinary
    gradient. On an MLP (tiny activations) that is all any method needs, within 10% (loop also
    holds one sample's gradient, 1/B of the output)."""
    from persample.workloads import get_workload

    batch = 32
    problem = get_workload("mlp").build("full", batch, 0, "cpu", torch.float32)
    params = [p for p in problem.model.parameters() if p.requires_grad]
    output_bytes = batch * sum(p.numel() for p in params) * 4
    ordinary = peak_bytes(lambda: torch.autograd.grad(problem.loss_fn(problem.model(problem.inputs), problem.targets).sum(), params))
    assert ordinary < output_bytes / (batch / 2)  # the batch gradient is ~B times smaller
    for name in ("loop", "hooks", "expand", "vmap"):
        step = get(name).prepare(problem.model, problem.loss_fn, (problem.inputs, problem.targets))
        peak = peak_bytes(lambda: step(problem.inputs, problem.targets))
        assert output_bytes <= peak <= 1.1 * output_bytes, f"{name}: {peak / output_bytes:.2f}x the output"


def test_hooks_on_a_convolution_also_hold_its_unfolded_input():
    """Goodfellow's trick for a convolution contracts the output gradient with the input unfolded
    to (C·k², L) per sample (im2col): k² times the layer's input, held next to the output."""
    from persample.workloads import get_workload

    batch = 16
    problem = get_workload("cifar_cnn").build("small", batch, 0, "cpu", torch.float32)
    output_bytes = batch * sum(p.numel() for p in problem.model.parameters() if p.requires_grad) * 4
    unfolded = []

    def unfolded_bytes(module, args, out):
        kernel, positions = torch.tensor(module.kernel_size).prod(), torch.tensor(out.shape[2:]).prod()
        unfolded.append(int(args[0].shape[0] * args[0].shape[1] * kernel * positions) * 4)

    convs = [m for m in problem.model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_hook(unfolded_bytes) for m in convs]
    problem.model(problem.inputs)
    for handle in handles:
        handle.remove()
    step = get("hooks").prepare(problem.model, problem.loss_fn, (problem.inputs, problem.targets))
    peak = peak_bytes(lambda: step(problem.inputs, problem.targets))
    assert peak >= output_bytes + max(unfolded)
    assert max(unfolded) > 4 * output_bytes  # here the unfolded inputs, not the gradients, dominate


def test_the_clipped_sum_needs_only_the_norms_and_one_reweighted_backward():
    """DP-SGD: Σᵢ min(1, C/‖gᵢ‖) gᵢ from the norms alone, by one backward of Σᵢ cᵢ ℓᵢ."""
    model, x, y = problem(8)
    clip = 0.5
    grads = persample.per_sample_grads(model, x, y, method="loop")
    norms = persample.per_sample_grad_norms(model, x, y, method="hooks")
    torch.testing.assert_close(norms, torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1))
    factors = (clip / norms).clamp(max=1.0)
    clipped_sum = {name: torch.einsum("b,b...->...", factors, g) for name, g in grads.items()}
    reweighted = (factors.detach() * F.cross_entropy(model(x), y, reduction="none")).sum()
    one_backward = torch.autograd.grad(reweighted, list(model.parameters()))
    for (name, expected), got in zip(clipped_sum.items(), one_backward):
        torch.testing.assert_close(got, expected, msg=name)
    assert (factors < 1).any(), "the clipping bound must bite for the test to mean anything"
