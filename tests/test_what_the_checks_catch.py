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


@pytest.mark.parametrize("method", ["hooks", "kernel", "expand"])
def test_a_rare_use_of_one_embedding_row_on_a_later_batch_is_caught(method):
    """The per-call guard compares the whole batch gradient, so a use of a single row is not missed."""
    unknown = 7

    class Unknown(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(200, 16), nn.Linear(16, 3)

        def forward(self, ids):
            h = self.embed(ids).mean(1)
            rare = ids == unknown
            if rare.any():
                h = h + rare.float().mean(1, keepdim=True) * self.embed.weight[unknown]
            return self.head(h)

    torch.manual_seed(0)
    model = Unknown()
    generator = torch.Generator().manual_seed(0)
    ids, y = torch.randint(8, 200, (8, 5), generator=generator), torch.randint(3, (8,), generator=generator)
    step = get(method).prepare(model, None, (ids, y))
    later = ids.clone()
    later[3, 1] = later[6, 2] = unknown
    with pytest.raises(persample.StaleStep):
        step(later, y)


class Capacity(nn.Module):
    """Rows past a capacity of 4 are dropped: a sample's row depends on its place in the batch
    (alone, a sample is always kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        kept = (torch.arange(x.shape[0], device=x.device) < 4).to(h.dtype)[:, None]
        return self.b(h * kept)


class HiddenPeak(nn.Module):
    """Rescales when a hidden unit of any sample passes 6: a batch extreme of an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 2), nn.Linear(2, 3)

    def forward(self, x):
        h = self.a(x)
        peak = h.abs().amax()
        if peak > 6.0:
            h = h * (6.0 / peak)
        return self.b(torch.tanh(h))


@pytest.mark.parametrize("make", [Capacity, HiddenPeak], ids=["capacity", "hidden-peak"])
@pytest.mark.parametrize("method", RULES)
def test_a_coupling_that_shows_only_in_the_whole_batch_is_refused(make, method):
    torch.manual_seed(0)
    model, (x, y) = make(), samples(16)
    if make is HiddenPeak:  # sample 9 drives the peak, but the largest input is sample 2's
        weight = model.a.weight.detach()
        x[9] = 8 * weight[0] / weight[0].square().sum()
        x[2] = 50 * torch.linalg.svd(weight, full_matrices=True).Vh[-1]  # a direction the layer ignores
    with pytest.raises(Unsupported) as refused:
        persample.per_sample_grads(model, x, y, method=method)
    assert refused.value.assumption == "batch-first-layers"
    assert_right(persample.per_sample_grads(model, x, y), truth(model, x, y))


def test_a_time_major_output_whose_length_equals_the_batch_is_not_taken_for_a_batch_loss():
    class TimeMajorOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 4)

        def forward(self, x):
            return self.a(x).t()  # (4, B)

    loss = lambda o, t: F.cross_entropy(o.t(), t, reduction="none")  # noqa: E731
    model, (x, y) = TimeMajorOutput(), samples(4)
    y = y % 4
    assert_right(persample.per_sample_grads(model, x, y, loss_fn=loss, method="hooks"), truth(model, x, y, loss))


def test_every_global_random_state_is_left_as_found():
    import random

    import numpy as np

    class LayerDrop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 3)

        def forward(self, x):
            random.uniform(0, 1)
            np.random.rand()
            return self.a(x)

    model, (x, y) = LayerDrop(), samples(8)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    for method in ("loop", "hooks", "vmap", "jax", "auto"):
        persample.per_sample_grads(model, x, y, method=method)
    assert random.getstate() == states[0]
    assert (np.random.get_state()[1] == states[1]).all() and torch.equal(torch.get_rng_state(), states[2])


def test_inference_mode_is_refused_with_the_fix():
    model, (x, y) = nn.Linear(6, 3), samples(8)
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode.*no_grad"):
        persample.per_sample_grads(model, x, y)
    with torch.inference_mode():
        frozen_x = x.clone()
    with pytest.raises(ValueError, match="created under torch.inference_mode"):
        persample.per_sample_grads(model, frozen_x, y)


def test_a_compiled_model_is_computed_through_the_module_it_wraps():
    torch.manual_seed(0)
    plain, (x, y) = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)), samples(8)
    compiled = torch.compile(plain, backend="eager")
    for method in ("hooks", "auto"):
        grads = persample.per_sample_grads(compiled, x, y, method=method)
        assert sorted(grads) == sorted(n for n, _ in compiled.named_parameters())
        assert_right({n.removeprefix("_orig_mod."): g for n, g in grads.items()}, truth(plain, x, y))


def test_jax_refuses_integers_that_would_not_survive_narrowing():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.randint(10, (5, 2)), torch.randint(3, (5,))
    step = get("jax").prepare(model, None, (x, y))
    with pytest.raises(ValueError, match="2\\*\\*31"):
        step(x + (1 << 33), y)


class BatchSized(nn.Module):
    """Scales by the batch size in forward: in a batch of B, row i is B× what sample i alone gives."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.a, self.head, self.drop = nn.Linear(6, 8), nn.Linear(8, 3), nn.Dropout(dropout)

    def forward(self, x):
        return self.head(self.drop(torch.tanh(self.a(x)) * x.shape[0]))


class GradientOnlyCoupling(nn.Module):
    """Rows 6 and 7 exchange gradient, the values unchanged (s - s.detach() is zero): past the first four
    samples, and invisible to any comparison of forward values."""

    def __init__(self, branch: bool = False, rows: tuple[int, int] = (6, 7)) -> None:
        super().__init__()
        self.a, self.head, self.branch, self.rows = nn.Linear(6, 8), nn.Linear(8, 3), branch, list(rows)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if not self.branch or h.shape[0] >= 8:  # a branch on the batch size: torch.fx cannot trace it
            rows = torch.tensor(self.rows)[torch.tensor(self.rows) < h.shape[0]]  # none for a sample alone
            s = h[rows].sum(0, keepdim=True)
            h = h.index_add(0, rows, (s - s.detach()).expand(len(rows), -1))
        return self.head(h)


class CentredInGradientOnly(nn.Module):
    """Value-neutral centring over the batch: h - mean + mean.detach() has h's values, and every row's
    gradient flows to every other row."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.head(h - h.mean(0) + h.mean(0).detach())


@pytest.mark.parametrize("method", RULES)
def test_a_forward_that_depends_on_the_batch_size_is_refused_by_the_rules(method):
    torch.manual_seed(0)
    model, (x, y) = BatchSized(), samples(5)
    with pytest.raises(Unsupported, match="otherwise in a batch of 5 than alone") as refused:
        persample.per_sample_grads(model, x, y, method=method)
    assert refused.value.assumption == "batch-first-layers"
    assert {"vmap", "jax", "loop"} <= set(refused.value.supported_by)


@pytest.mark.parametrize("method", ["vmap", "auto"])
def test_a_forward_that_depends_on_the_batch_size_gets_each_sample_alone(method):
    torch.manual_seed(0)
    model, (x, y) = BatchSized(), samples(5)
    assert_right(persample.per_sample_grads(model, x, y, method=method), truth(model, x, y))


def test_a_batch_size_dependence_is_seen_through_dropout_in_training_mode():
    torch.manual_seed(0)
    model, (x, y) = BatchSized(dropout=0.1).train(), samples(5)
    with pytest.raises(Unsupported, match="otherwise in a batch of 5 than alone"):
        persample.per_sample_grads(model, x, y, method="hooks")
    assert model.training and model.drop.training  # the eval-mode comparison leaves the modes as found


@pytest.mark.parametrize("make", [GradientOnlyCoupling, CentredInGradientOnly], ids=["rows-6-7", "centred"])
@pytest.mark.parametrize("method", RULES)
def test_a_coupling_only_the_gradient_shows_is_refused_naming_the_layer(make, method):
    torch.manual_seed(0)
    model, (x, y) = make(), samples(8)
    with pytest.raises(Unsupported, match="gradient from other samples' losses") as refused:
        persample.per_sample_grads(model, x, y, method=method)
    assert refused.value.assumption == "batch-first-layers" and "layer a (Linear)" in str(refused.value)


def test_auto_answers_a_gradient_only_coupling_that_jax_cannot_trace_right():
    torch.manual_seed(0)
    model, (x, y) = GradientOnlyCoupling(branch=True), samples(8)
    assert_right(persample.per_sample_grads(model, x, y), truth(model, x, y))


def test_a_peer_auto_would_run_is_held_to_the_weighted_sum_over_every_row():
    from persample.batch import CallArgs
    from persample.checks import CheckContext, verify_answer
    from persample.checks.context import check_rows

    x, y = samples(8)
    others = [i for i in range(8) if i not in check_rows(CallArgs.of(x), 4)]
    torch.manual_seed(0)
    model = GradientOnlyCoupling(rows=(others[0], others[1]))  # rows the check rows do not include
    loss = lambda o, t: F.cross_entropy(o, t, reduction="none")  # noqa: E731
    with pytest.raises(Unsupported, match="Σᵢ wᵢ gᵢ"):
        verify_answer(CheckContext("torch-ew", model, loss, CallArgs.of(x), y), get("torch-ew"))
