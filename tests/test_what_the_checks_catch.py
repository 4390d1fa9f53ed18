"""Models next to the adversarial family, found by trying the library as a user would: each is
answered right or refused clearly, and the model and random state are left as found."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import persample
from persample import LossNotPerSample, Unsupported
from persample.methods.registry import get

RULES = ("hooks", "expand", "kernel")


def truth(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None) -> dict[str, torch.Tensor]:
    """Each sample alone, in float64, on a copy of the model as found: what `.backward()` puts into
    `.grad` (independent of the library)."""
    loss_fn = loss_fn or (lambda o, t: F.cross_entropy(o, t, reduction="none"))
    rows: dict[str, list] = {}
    for i in range(len(y)):
        twin = copy.deepcopy(model).double()
        params = {n: p for n, p in twin.named_parameters() if p.requires_grad}
        loss_fn(twin(x[i : i + 1].double()), y[i : i + 1])[0].backward()
        for name, param in params.items():
            rows.setdefault(name, []).append(torch.zeros_like(param) if param.grad is None else param.grad)
    return {name: torch.stack(grads) for name, grads in rows.items()}


def assert_right(got: dict, want: dict, tolerance: float = 1e-4) -> None:
    for name, expected in want.items():
        error = ((got[name].double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()
        assert error < tolerance, f"{name}: relative error {error:.3g}"


class CausalShift(nn.Module):
    """Written for (T, B, D) and fed (B, T, D): each "time step" reads the previous one, which is the
    previous *sample*: sample i depends on sample i - 1 only (a one-way coupling)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        previous = torch.cat([torch.zeros_like(x[:1]), x[:-1]], 0)
        return self.out(torch.tanh(self.inp(x + 0.5 * previous)).mean(1))


class OutlierBranch(nn.Module):
    """A branch on a batch-level value that uses a weight outside its layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.abs().max() > 4:
            h = h + 0.1 * F.linear(torch.tanh(h), self.a.weight)
        return self.b(torch.tanh(h))


def samples(batch: int = 8, outlier: int | None = None, steps: int | None = None):
    generator = torch.Generator().manual_seed(0)
    shape = (batch, 6) if steps is None else (batch, steps, 6)
    x = torch.randn(*shape, generator=generator)
    if outlier is not None:
        x[outlier] *= 20
    return x, torch.randint(3, (batch,), generator=generator)


@pytest.mark.parametrize("method", RULES)
def test_a_one_way_coupling_along_the_batch_is_refused(method):
    x, y = samples(6, steps=5)
    with pytest.raises(Unsupported, match="rows of other samples changed") as refused:
        persample.per_sample_grads(CausalShift(), x, y, method=method)
    assert refused.value.assumption == "batch-first-layers"


def test_auto_answers_a_one_way_coupling_right():
    torch.manual_seed(0)
    model, (x, y) = CausalShift(), samples(6, steps=5)
    assert_right(persample.per_sample_grads(model, x, y), truth(model, x, y))


@pytest.mark.parametrize("method", RULES)
def test_a_branch_taken_for_a_sample_beyond_the_first_four_is_checked(method):
    torch.manual_seed(0)
    model, (x, y) = OutlierBranch(), samples(8, outlier=6)
    with pytest.raises(Unsupported, match="outside the forward of the layer that owns it"):
        persample.per_sample_grads(model, x, y, method=method)


@pytest.mark.parametrize("method", ["hooks", "expand", "auto"])
def test_a_branch_taken_only_on_a_later_batch_is_caught_when_it_comes(method):
    torch.manual_seed(0)
    model = OutlierBranch()
    clean, y = samples(8)
    persample.per_sample_grads(model, clean, y, method=method)
    later, _ = samples(8, outlier=6)
    if method == "auto":
        assert_right(persample.per_sample_grads(model, later, y), truth(model, later, y))
    else:
        with pytest.raises(Unsupported, match="outside the forward of the layer that owns it"):
            persample.per_sample_grads(model, later, y, method=method)


def test_a_prepared_step_guards_itself_and_says_to_prepare_again():
    torch.manual_seed(0)
    model, (clean, y) = OutlierBranch(), samples(8)
    step = get("hooks").prepare(model, None, (clean, y))
    with pytest.raises(persample.StaleStep, match="prepare again on this batch"):
        step(samples(8, outlier=6)[0], y)


def test_a_flag_switched_between_calls_is_noticed():
    class Switchable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.deep = nn.Linear(6, 6), nn.Linear(6, 3), False

        def forward(self, x):
            h = torch.tanh(self.a(x))
            if self.deep:
                h = torch.tanh(F.linear(h, self.a.weight))
            return self.b(h)

    torch.manual_seed(0)
    model, (x, y) = Switchable(), samples(8)
    persample.per_sample_grads(model, x, y, method="hooks")
    model.deep = True
    with pytest.raises(Unsupported, match="outside the forward"):
        persample.per_sample_grads(model, x, y, method="hooks")
    assert_right(persample.per_sample_grads(model, x, y), truth(model, x, y))


def test_a_loss_that_keeps_the_hardest_samples_of_the_batch_is_not_per_sample():
    def hardest(outputs, targets):
        losses = F.cross_entropy(outputs, targets, reduction="none")
        keep = torch.zeros_like(losses, dtype=torch.bool)
        keep[losses.topk(round(0.75 * len(losses))).indices] = True
        return losses * keep

    x, y = samples(8)
    with pytest.raises(LossNotPerSample, match="depends on the batch"):
        persample.per_sample_grads(nn.Linear(6, 3), x, y, loss_fn=hardest, method="hooks")


@pytest.mark.parametrize("method", RULES)
def test_a_half_precision_model_is_checked_with_its_own_parameters(method):
    """The checks widen the model in place: a loss that reads a parameter through a closure, or a
    hook on a parameter, is seen as it will run."""
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.bfloat16)
    x, y = samples(8)
    closure = lambda o, t: F.cross_entropy(o.float(), t, reduction="none") + model[2].weight.float().pow(2).sum()  # noqa: E731
    with pytest.raises(Unsupported):
        persample.per_sample_grads(model, x.to(torch.bfloat16), y, loss_fn=closure, method=method)
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["loop", "vmap", "jax", "auto"])
def test_a_zero_dimensional_parameter_gets_a_gradient_of_shape_b(method):
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.logit_scale = nn.Linear(6, 3), nn.Parameter(torch.tensor(0.3))

        def forward(self, x):
            return self.lin(x) * self.logit_scale.exp()

    torch.manual_seed(0)
    model, (x, y) = Scaled(), samples(8)
    grads = persample.per_sample_grads(model, x, y, method=method)
    assert grads["logit_scale"].shape == (8,)
    assert_right(grads, truth(model, x, y))


def test_reentrant_checkpointing_of_a_function_is_computed_by_loop_and_refused_by_hooks():
    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.b(checkpoint(torch.tanh, self.a(x), use_reentrant=True))

    torch.manual_seed(0)
    model, (x, y) = Checkpointed(), samples(8)
    want = truth(model, x, y)
    assert_right(persample.per_sample_grads(model, x, y, method="loop"), want)
    assert_right(persample.per_sample_grads(model, x, y), want)
    with pytest.raises(Unsupported) as refused:
        persample.per_sample_grads(model, x, y, method="hooks")
    assert refused.value.assumption == "output-gradients"


@pytest.mark.parametrize("method", ["loop", "hooks", "expand", "vmap", "auto"])
def test_a_buffer_updated_on_a_rare_path_is_restored(method):
    class CountsOutliers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 3)
            self.register_buffer("outliers", torch.zeros((), dtype=torch.long))

        def forward(self, x):
            if x.abs().max() > 10:
                self.outliers += 1
            return self.lin(x)

    model = CountsOutliers()
    clean, y = samples(8)
    for x in (clean, samples(8, outlier=6)[0]):
        try:
            persample.per_sample_grads(model, x, y, method=method)
        except Unsupported:  # vmap refuses the data-dependent branch: the buffer must be restored all the same
            assert method == "vmap"
    assert model.outliers.item() == 0


def test_auto_leaves_grad_alone_when_the_loss_reads_a_parameter():
    torch.manual_seed(0)
    model, (x, y) = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)), samples(8)
    loss = lambda o, t: F.cross_entropy(o, t, reduction="none") + 0.01 * model[2].weight.pow(2).sum()  # noqa: E731
    persample.per_sample_grads(model, x, y, loss_fn=loss)
    assert all(p.grad is None for p in model.parameters())


def test_plain_attributes_a_forward_sets_are_left_as_found():
    class Remembers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.calls = nn.Linear(6, 3), 0

        def forward(self, x):
            self.calls += 1
            self.last = x.detach()
            return self.lin(x)

    model, (x, y) = Remembers(), samples(8)
    for method in ("loop", "hooks", "vmap", "auto"):
        persample.per_sample_grads(model, x, y, method=method)
    assert model.calls == 0 and not hasattr(model, "last")


def test_jax_reports_an_index_out_of_range_where_torch_raises():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.randint(10, (5, 2)), torch.randint(3, (5,))
    step = get("jax").prepare(model, None, (x, y))
    for targets in (torch.tensor([0, 1, 7, 2, 0]), torch.tensor([0, 1, -1, 2, 0])):
        with pytest.raises(ValueError, match=r"non-finite loss for samples \[2\].*index out of range"):
            step(x, targets)
