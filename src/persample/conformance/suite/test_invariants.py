"""What every method must satisfy beyond matching the reference: the definition's consequences.

gᵢ is the gradient sample i would produce alone, unscaled. So Σᵢ gᵢ is the gradient of the summed
loss and (1/B) Σᵢ gᵢ that of the mean loss; a batch of one is plain autograd; sample j cannot
change gᵢ; permuting the batch permutes the gradients; and the model is left as it was found.
"""
from __future__ import annotations

import copy

import pytest
import torch

from persample import LossNotPerSample, Unsupported
from persample.conformance.assertions import assert_grads_close, assert_samples_equal
from persample.conformance.gate import DISCOVERED
from persample.conformance.snapshot import ModelSnapshot
from persample.batch import CallArgs
from persample.contract import trainable_parameters
from persample.reference import tolerance_for
from persample.workloads import BENCH, all_workloads, get_workload
from persample.workloads.adversarial import BUFFER_UPDATE

# The invariants run on one model per layer family: the first benchmarked zoo workload tagged with it
# (registration order), so the choice follows the workloads' tags, not a list of names here.
FAMILIES = ("dense", "conv", "sequence")
REPRESENTATIVE = {
    family: next(w.name for w in all_workloads(without_tags=frozenset({"adversarial"}))
                 if BENCH in w.tags and family in w.tags)
    for family in FAMILIES
}
WORKLOADS = tuple(REPRESENTATIVE.values())


def tagged(tag: str) -> list[str]:
    """Names of the registered workloads tagged `tag` (e.g. "frozen", "tied"), in registration order."""
    return [w.name for w in all_workloads() if tag in w.tags]


def build(method, name: str, device: str, batch_size: int = 6, seed: int = 3):
    """The workload in float64 if the method offers it (exact checks), else float32."""
    dtype = torch.float64 if torch.float64 in method.capabilities.dtypes else torch.float32
    return get_workload(name).build("small", batch_size, seed, device, dtype)


def per_sample(method, problem, inputs=None, targets=None) -> dict[str, torch.Tensor]:
    """`method`'s per-sample gradients {name: (B, *param.shape)} on `problem` (or on other inputs and targets);
    a refusal is skipped when declared, and fails the test when one of our methods refuses a zoo model
    by its checks.
    """
    inputs = problem.inputs if inputs is None else inputs
    targets = problem.targets if targets is None else targets
    try:
        return method.prepare(problem.model, problem.loss_fn, (inputs, targets))(inputs, targets)
    except Unsupported as unsupported:
        skip_if_declared(method, problem, unsupported)


def skip_if_declared(method, problem, unsupported: Unsupported) -> None:
    """Skip a refusal the method declares up front; one of our methods refusing a zoo model by its
    checks on the example batch is a failure, unless it names an assumption the workload declares it
    breaks (`Workload.breaks`: T5's relative attention bias for the rule-based methods)."""
    param = next(p for p in problem.model.parameters() if p.requires_grad)
    declared = method.problem(problem.model, param.device, param.dtype) is not None
    allowed = DISCOVERED | problem.workload.breaks
    if not method.capabilities.peer and not declared and unsupported.assumption not in allowed:
        pytest.fail(f"{method.name} refused, by its checks, a zoo model that breaks no assumption: {unsupported}")
    pytest.skip(f"unsupported: {unsupported}")


def losses_of(problem) -> torch.Tensor:
    """The per-sample losses (B,) of `problem`'s model on its batch."""
    return problem.loss_fn(CallArgs.of(problem.inputs).call(problem.model), problem.targets)


def tolerance(problem):
    """The tolerance for the dtype of `problem`'s model (`reference.tolerance_for`)."""
    return tolerance_for(next(problem.model.parameters()).dtype)


@pytest.mark.invariant
@pytest.mark.parametrize("workload", WORKLOADS)
def test_sum_of_per_sample_gradients_is_the_gradient_of_the_summed_loss(method, workload, device):
    problem = build(method, workload, device)
    summed = {k: g.sum(0) for k, g in per_sample(method, problem).items()}
    params = trainable_parameters(problem.model)
    returned = dict(zip(params, torch.autograd.grad(losses_of(problem).sum(), list(params.values()))))
    assert_grads_close(summed, returned, tolerance(problem), "Σᵢ gᵢ vs autograd.grad(sum loss)")
    twin = copy.deepcopy(problem.model)
    problem.model, original = twin, problem.model
    losses_of(problem).sum().backward()  # accumulates into .grad of the twin
    accumulated = {k: p.grad for k, p in trainable_parameters(twin).items()}
    problem.model = original
    assert_grads_close(summed, accumulated, tolerance(problem), "Σᵢ gᵢ vs sum loss .backward()")


@pytest.mark.invariant
@pytest.mark.parametrize("workload", WORKLOADS)
def test_mean_of_per_sample_gradients_is_the_gradient_of_the_mean_loss(method, workload, device):
    problem = build(method, workload, device)
    grads = per_sample(method, problem)
    params = trainable_parameters(problem.model)
    mean_grad = dict(zip(params, torch.autograd.grad(losses_of(problem).mean(), list(params.values()))))
    assert_grads_close({k: g.mean(0) for k, g in grads.items()}, mean_grad, tolerance(problem),
                       "mean of gᵢ vs gradient of the mean loss")


@pytest.mark.invariant
def test_a_batch_of_one_equals_plain_autograd(method, device):
    problem = build(method, REPRESENTATIVE["conv"], device, batch_size=1)
    grads = per_sample(method, problem)
    params = trainable_parameters(problem.model)
    plain = dict(zip(params, torch.autograd.grad(losses_of(problem)[0], list(params.values()))))
    assert_grads_close({k: g[0] for k, g in grads.items()}, plain, tolerance(problem), "B=1 vs autograd")


@pytest.mark.invariant
@pytest.mark.parametrize("workload", WORKLOADS)
def test_changing_one_sample_leaves_every_other_gradient_unchanged(method, workload, device):
    problem = build(method, workload, device)
    before = per_sample(method, problem)
    j = 2
    inputs = CallArgs.of(problem.inputs).map(torch.clone)
    first = inputs.tensors()[0][1]
    first[j] = first[(j + 1) % len(first)]
    after = per_sample(method, problem, inputs.to_user())
    others = [i for i in range(problem.batch_size) if i != j]
    assert_grads_close({k: v[others] for k, v in after.items()}, {k: v[others] for k, v in before.items()},
                       tolerance(problem), f"gradients of samples other than {j} after changing sample {j}")
    assert any(not torch.allclose(after[k][j], before[k][j]) for k in before), "sample j's own gradient did not change"


@pytest.mark.invariant
def test_permuting_the_batch_permutes_the_gradients(method, device):
    problem = build(method, REPRESENTATIVE["dense"], device)
    grads = per_sample(method, problem)
    order = torch.randperm(problem.batch_size, generator=torch.Generator().manual_seed(0))
    permuted = per_sample(method, problem, problem.inputs[order], problem.targets[order])
    assert_grads_close(permuted, {k: v[order] for k, v in grads.items()}, tolerance(problem), "permuted batch")


@pytest.mark.invariant
@pytest.mark.parametrize("workload", (REPRESENTATIVE["dense"], REPRESENTATIVE["sequence"]))
def test_the_model_is_left_as_it_was_found(method, workload, device):
    problem = build(method, workload, device)
    for p in problem.model.parameters():
        p.grad = torch.full_like(p, 7.0)  # a sentinel a method must neither replace nor add to
    problem.model.eval()
    snapshot = ModelSnapshot.of(problem.model)
    per_sample(method, problem)
    assert snapshot.differences(problem.model) == []


@pytest.mark.invariant
def test_calling_a_prepared_step_twice_gives_the_same_gradients(method, device):
    problem = build(method, REPRESENTATIVE["dense"], device)
    try:
        step = method.prepare(problem.model, problem.loss_fn, (problem.inputs, problem.targets))
    except Unsupported as unsupported:
        pytest.skip(f"unsupported: {unsupported}")
    first, second = step(problem.inputs, problem.targets), step(problem.inputs, problem.targets)
    assert_samples_equal(second, first, list(range(problem.batch_size)), "second call of the step")


@pytest.mark.invariant
@pytest.mark.parametrize("workload", tagged("frozen"))
def test_frozen_parameters_are_absent(method, workload, device):
    problem = build(method, workload, device)
    grads = per_sample(method, problem)
    frozen = [name for name, p in problem.model.named_parameters() if not p.requires_grad]
    trainable = [name for name, p in problem.model.named_parameters() if p.requires_grad]
    assert frozen and trainable, "the workload must freeze some parameters and train others"
    assert sorted(grads) == sorted(trainable), f"frozen parameters {frozen} must be absent"


def tied_names(model: torch.nn.Module) -> tuple[str, str]:
    """(first, second) name of a parameter the model holds under two names (a tied weight)."""
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            return first_name[id(param)], name
        first_name[id(param)] = name
    raise AssertionError("the workload is tagged 'tied' but ties no parameter")


@pytest.mark.invariant
@pytest.mark.parametrize("workload", tagged("tied"))
def test_tied_weights_get_the_sum_of_both_uses(method, workload, device):
    problem = build(method, workload, device)
    tied = per_sample(method, problem)
    first, second = tied_names(problem.model)
    untied = copy.deepcopy(problem.model)
    owner, _, attribute = second.rpartition(".")
    setattr(untied.get_submodule(owner), attribute, torch.nn.Parameter(untied.get_parameter(first).detach().clone()))
    from persample.methods.registry import get

    separate = get("loop")(untied, problem.inputs, problem.targets, problem.loss_fn)
    both = separate[first] + separate[second]
    assert second not in tied, "a tied parameter is listed once, under its first name"
    assert_grads_close({first: tied[first]}, {first: both}, tolerance(problem),
                       f"tied weight vs sum of the gradients of its two uses ({first}, {second})")


@pytest.mark.invariant
def test_results_have_each_parameters_dtype_device_and_batch_shape(method, device):
    problem = build(method, REPRESENTATIVE["dense"], device)
    grads = per_sample(method, problem)
    for name, param in trainable_parameters(problem.model).items():
        grad = grads[name]
        assert (grad.shape, grad.dtype, grad.device) == ((problem.batch_size, *param.shape), param.dtype, param.device), name


@pytest.mark.invariant
def test_softmax_cross_entropy_gradient_is_softmax_minus_one_hot(method, device):
    """For logistic regression, ∂ℓᵢ/∂b = softmax(zᵢ) − onehot(yᵢ) and ∂ℓᵢ/∂W = (softmax − onehot) xᵢᵀ."""
    problem = build(method, "logreg", device)
    grads = per_sample(method, problem)
    logits = problem.model(problem.inputs)
    by_hand = logits.softmax(-1) - torch.nn.functional.one_hot(problem.targets, logits.shape[-1]).to(logits.dtype)
    expected = {"bias": by_hand.detach(), "weight": torch.einsum("no,ni->noi", by_hand, problem.inputs).detach()}
    assert_grads_close(grads, expected, tolerance(problem), "per-sample gradient vs softmax − one-hot")


@pytest.mark.invariant
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_reduced_loss_is_refused_with_an_explanation(method, device, reduction):
    problem = build(method, REPRESENTATIVE["dense"], device)
    reduced = lambda outputs, targets: torch.nn.functional.cross_entropy(outputs, targets, reduction=reduction)  # noqa: E731
    with pytest.raises(LossNotPerSample, match="one loss per sample.*reduction='none'"):
        try:
            method.prepare(problem.model, reduced, (problem.inputs, problem.targets))
        except Unsupported as unsupported:
            pytest.skip(f"unsupported: {unsupported}")


@pytest.mark.invariant
@pytest.mark.parametrize("workload", tagged("batchnorm"))
def test_batchnorm_in_training_mode_is_refused_with_the_fix(method, workload, device):
    problem = get_workload(workload).build("small", 4, 0, device, torch.float32)
    with pytest.raises(Unsupported, match="BatchNorm2d.*GroupNorm.*eval"):
        method.prepare(problem.model, problem.loss_fn, (problem.inputs, problem.targets))


@pytest.mark.invariant
@pytest.mark.parametrize("workload", tagged(BUFFER_UPDATE))
def test_buffers_and_the_random_state_are_left_as_found_whatever_the_outcome(method, workload, device):
    """A forward that updates buffers (a counter, spectral norm's power iteration, running
    statistics): after computing, or refusing, the buffers and the global random state are as found."""
    problem = get_workload(workload).build("small", 6, 0, device, torch.float32)
    snapshot, state = ModelSnapshot.of(problem.model), torch.get_rng_state()
    try:
        method.prepare(problem.model, problem.loss_fn, (problem.inputs, problem.targets))(problem.inputs, problem.targets)
    except Exception:  # a refusal, or a peer's crash (recorded as a deviation): the state must still be as found
        pass
    assert snapshot.differences(problem.model) == []
    assert torch.equal(torch.get_rng_state(), state), "the global random state changed"
