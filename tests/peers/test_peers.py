"""The peers (Opacus in three modes, torch's ExpandedWeights, BackPACK) as persample methods: held
to our contract on small dense models. Every zoo workload is the conformance suite's job."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import persample
from persample import Unsupported
from persample.conformance.assertions import assert_grads_close, assert_samples_equal
from persample.conformance.snapshot import HOOK_DICTS, ModelSnapshot
from persample.losses import cross_entropy
from persample.methods.registry import get
from persample.reference import compare, reference_grads, tolerance_for

NEEDS = {"opacus-hooks": "opacus", "opacus-functorch": "opacus", "opacus-ew": "opacus", "backpack": "backpack"}
PIP_NAME = {"opacus": "opacus", "backpack": "backpack-for-pytorch"}


def library_of(peer: str) -> pytest.MarkDecorator:
    """Skip, saying what to install, where the peer's library is missing."""
    package = NEEDS.get(peer)
    missing = package is not None and importlib.util.find_spec(package) is None
    return pytest.mark.skipif(missing, reason=f"{peer} needs pip install {PIP_NAME.get(package)}")


def installed(*names: str) -> list:
    return [pytest.param(name, id=name, marks=library_of(name)) for name in names]


PEERS = installed("opacus-hooks", "opacus-functorch", "opacus-ew", "torch-ew", "backpack")
LIBRARY_ATTRIBUTES = ("grad_sample", "grad_batch", "_forward_counter", "_current_grad_sample")


def mlp(dtype=torch.float64, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)


def batch(size: int = 5, dtype=torch.float64, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 6, generator=generator, dtype=dtype), torch.randint(4, (size,), generator=generator)


def peer_grads(name: str, model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    return get(name).prepare(model, cross_entropy, (x, y))(x, y)


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_each_peer_matches_the_float64_reference(name, dtype):
    model, (x, y) = mlp(dtype), batch(dtype=dtype)
    grads = peer_grads(name, model, x, y)
    assert all(grads[n].dtype == p.dtype and grads[n].shape == (5, *p.shape) for n, p in model.named_parameters())
    comparison = compare(grads, reference_grads(model, x, y, cross_entropy))
    assert comparison.within(tolerance_for(dtype)), comparison.describe(tolerance_for(dtype))


@pytest.mark.parametrize("name", PEERS)
def test_peer_gradients_are_unscaled_like_the_loop_method(name):
    """Neither multiplied nor divided by the batch size: each equals the sample's gradient alone."""
    model, (x, y) = mlp(), batch(size=7)
    expected = get("loop")(model, x, y, cross_entropy)
    assert_grads_close(peer_grads(name, model, x, y), expected, tolerance_for(torch.float64), f"{name} vs loop")
    single = peer_grads(name, model, x[3:4], y[3:4])
    assert_grads_close({k: v[0] for k, v in single.items()}, {k: v[3] for k, v in expected.items()},
                       tolerance_for(torch.float64), f"{name} on a batch of one vs loop's sample 3")


@pytest.mark.parametrize("name", PEERS)
def test_the_model_is_untouched_after_prepare_and_each_step(name):
    model, (x, y) = mlp(), batch()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    snapshot = ModelSnapshot.of(model)
    step = get(name).prepare(model, cross_entropy, (x, y))
    for _ in range(2):
        step(x, y)
        assert snapshot.differences(model) == []
        assert all(len(getattr(m, hooks)) == 0 for m in model.modules() for hooks in HOOK_DICTS)
        assert not [a for p in model.parameters() for a in LIBRARY_ATTRIBUTES if hasattr(p, a)]
        assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
        assert all(m.training for m in model.modules())


@pytest.mark.parametrize("name", PEERS)
def test_the_step_is_repeatable_and_keeps_no_state_between_calls(name):
    model, (x, y) = mlp(), batch(size=5)
    other_x, other_y = batch(size=3, seed=9)
    step = get(name).prepare(model, cross_entropy, (x, y))
    first = step(x, y)
    step(other_x, other_y)  # a different batch, and size, in between must leave no trace
    again = step(x, y)
    assert_samples_equal(again, first, list(range(5)), f"{name}: the same batch after another one")


@pytest.mark.parametrize("name", PEERS)
def test_the_step_follows_the_model_between_calls(name):
    """An optimizer's in-place update, a replaced `.data` and train/eval are seen by the next step."""
    model, (x, y) = mlp(), batch()
    step = get(name).prepare(model, cross_entropy, (x, y))
    with torch.no_grad():
        model[0].weight.mul_(0.5)
    model[2].weight.data = model[2].weight.data * 2 + 0.1
    comparison = compare(step(x, y), reference_grads(model, x, y, cross_entropy))
    assert comparison.within(tolerance_for(torch.float64)), comparison.describe(tolerance_for(torch.float64))


@pytest.mark.parametrize("name", installed("opacus-hooks", "opacus-functorch"))
def test_opacus_hook_modes_refuse_eval_mode_since_their_hooks_record_nothing_there(name):
    model, (x, y) = mlp().eval(), batch()
    with pytest.raises(Unsupported, match="eval mode"):
        peer_grads(name, model, x, y)


@pytest.mark.parametrize("name", installed("opacus-ew", "torch-ew", "backpack"))
def test_other_peers_work_in_eval_mode(name):
    model, (x, y) = mlp().eval(), batch()
    comparison = compare(peer_grads(name, model, x, y), reference_grads(model, x, y, cross_entropy))
    assert comparison.within(tolerance_for(torch.float64)), comparison.describe(tolerance_for(torch.float64))


class ScaledLinear(nn.Linear):
    """A Linear subclass: Opacus's hooks dispatch on the exact type, so they would not apply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


REFUSALS = [
    ("opacus-hooks", lambda: nn.Sequential(ScaledLinear(6, 4)), "opacus-functorch"),
    ("opacus-hooks", lambda: nn.Sequential(nn.Linear(6, 8), nn.LSTM(8, 4)), "DPLSTM"),
    ("backpack", lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8)), "LayerNorm"),
    ("backpack", lambda: nn.Sequential(nn.Embedding(10, 4, padding_idx=0)), "padding_idx"),
    ("torch-ew", lambda: nn.Sequential(nn.Linear(6, 8), nn.RMSNorm(8)), "RMSNorm"),
    ("opacus-ew", lambda: nn.Sequential(nn.Linear(6, 8), nn.RMSNorm(8)), "RMSNorm"),
]


@pytest.mark.parametrize("name, make_model, named", [
    pytest.param(*case, id=f"{case[0]}-{case[2]}", marks=library_of(case[0])) for case in REFUSALS
])
def test_a_layer_the_library_cannot_handle_is_refused_by_name(name, make_model, named):
    problem = get(name).problem(make_model(), torch.device("cpu"), torch.float32)
    assert isinstance(problem, Unsupported) and problem.method == name
    assert named in str(problem)


@library_of("opacus-functorch")
def test_opacus_functorch_handles_the_subclass_its_hooks_mode_refuses():
    torch.manual_seed(0)
    model, (x, y) = nn.Sequential(ScaledLinear(6, 4)).double(), batch()
    comparison = compare(peer_grads("opacus-functorch", model, x, y), reference_grads(model, x, y, cross_entropy))
    assert comparison.within(tolerance_for(torch.float64)), comparison.describe(tolerance_for(torch.float64))


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_a_missing_package_is_reported_with_its_install_command(name, monkeypatch):
    package = NEEDS[name]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real_find_spec(n, *a))
    hint = f"pip install {PIP_NAME[package]}"
    assert hint in persample.available_methods()[name]
    model, (x, y) = mlp(), batch()
    with pytest.raises(Unsupported, match=hint):
        peer_grads(name, model, x, y)


@library_of("opacus-hooks")
def test_capabilities_are_derived_from_the_libraries():
    from opacus.grad_sample import GradSampleModule
    from torch.nn.utils._expanded_weights.expanded_weights_impl import HANDLED_FUNCTIONS

    assert get("opacus-hooks").capabilities.layers == tuple(GradSampleModule.GRAD_SAMPLERS)
    assert get("opacus-functorch").capabilities.layers is None
    ew_layers = get("torch-ew").capabilities.layers
    assert nn.Linear in ew_layers and nn.LSTM in ew_layers
    assert (torch.nn.functional.rms_norm in HANDLED_FUNCTIONS) == (nn.RMSNorm in ew_layers)
    assert get("opacus-ew").capabilities.layers == ew_layers
    for name in ("opacus-hooks", "opacus-functorch", "opacus-ew", "torch-ew", "backpack"):
        caps = get(name).capabilities
        assert caps.peer and caps.name == name and "unscaled" in caps.notes
