"""The modes and their tolerances are one table (`persample.modes.MODES`), and every comparison is
one function (`persample.reference.compare`).

Every mode a device offers has a tolerance for each quantity compared; the tolerances grow as the
precision falls; a mode added to the table is offered everywhere its devices match (conformance,
CI profile, benchmark grids, calibration, report order) with nothing else edited; and the comparison
judges a vanishing gradient on the scale of the largest while flagging one that is missing.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import persample
from persample import modes
from persample.bench.calibration import calibrated_modes
from persample.bench.grid import get_grid
from persample.conformance.assertions import assert_grads_close, assert_translates
from persample.conformance.cells import cells, declared_modes, modes_for, modes_of
from persample.methods.registry import get
from persample.modes import (FLOAT16, MODES, NORM, QUANTITIES, REFERENCE, SELF_CHECK, TRANSLATION, Mode, Tolerance,
                             get_mode, tolerance_for)
from persample.reference import compare, reference_grads
from persample.report.matrix import dtype_key
from persample.workloads import all_workloads, get_workload

DEVICE_TYPES = ("cpu", "cuda")
CPU = torch.device("cpu")


@pytest.mark.parametrize("device", DEVICE_TYPES)
def test_every_mode_a_device_offers_has_a_tolerance_for_each_quantity(device):
    for name in modes.modes_on(device):
        mode = get_mode(name)
        assert mode.tolerances.guard > 0, name
        for quantity in QUANTITIES:
            tolerance = tolerance_for(name, quantity)
            assert isinstance(tolerance, Tolerance) and 0 < tolerance.relative and 0 < tolerance.per_sample, (name, quantity)
            assert tolerance == mode.tolerance(quantity)


def test_a_dtype_is_judged_as_the_mode_of_that_name_and_tf32_as_its_own():
    assert tolerance_for(torch.bfloat16) == tolerance_for("bfloat16") == tolerance_for("autocast-bf16")
    assert tolerance_for(torch.float32, tf32=True) == tolerance_for("tf32") != tolerance_for(torch.float32)
    assert tolerance_for(torch.float32, NORM) == tolerance_for(torch.float32, REFERENCE)  # derived: see Tolerances.norm


def test_an_unknown_mode_or_quantity_is_refused_by_name():
    with pytest.raises(ValueError, match="no tolerance for 'int64'"):
        tolerance_for(torch.int64)
    with pytest.raises(ValueError, match="unknown quantity 'speed'"):
        tolerance_for(torch.float32, "speed")
    with pytest.raises(ValueError, match="unknown mode 'float8'"):
        get_mode("float8")


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_tolerances_grow_as_the_precision_falls(quantity):
    """float64 < float32 < float16 <= bfloat16 (10 mantissa bits, then 7), for both measures; a
    mode computing below float32 (TF32 matmuls, autocast) is never held tighter than float32."""
    f64, f32, f16, bf16 = (tolerance_for(name, quantity) for name in ("float64", "float32", "float16", "bfloat16"))
    for measure in ("relative", "per_sample"):
        values = [getattr(t, measure) for t in (f64, f32, f16, bf16)]
        assert values[0] < values[1] < values[2] <= values[3], (measure, values)
        for lower in ("tf32", "autocast-bf16"):
            assert getattr(tolerance_for(lower, quantity), measure) >= getattr(f32, measure), (lower, measure)
    guards = [get_mode(name).tolerances.guard for name in ("float64", "float32", "float16", "bfloat16")]
    assert guards[0] < guards[1] < guards[2] <= guards[3]


def test_the_self_check_sits_between_float32_rounding_and_the_discrepancy_it_must_catch():
    """The checks at prepare time compute in float32 or wider whatever the mode, and must catch 5%."""
    assert tolerance_for(torch.float32).relative <= SELF_CHECK.relative < 5e-2
    assert tolerance_for(torch.float32).per_sample <= SELF_CHECK.per_sample < 5e-2


@pytest.fixture
def probe(monkeypatch) -> Mode:
    """A float16 mode for CPUs only, first in the table, in the zoo's CI profile and the CPU grid."""
    mode = Mode("float16-probe", torch.float16, FLOAT16, devices=("cpu",), ci=("zoo",), benchmarked=("cpu",))
    monkeypatch.setattr(modes, "MODES", {mode.name: mode, **MODES})
    return mode


def test_a_mode_added_to_the_table_is_offered_wherever_its_devices_match(probe):
    assert modes_for("cpu")[0] == probe.name and probe.name not in declared_modes("cuda")
    mlp, adversarial = get_workload("mlp"), next(w for w in all_workloads() if "adversarial" in w.tags)
    assert probe.name in modes_of(mlp, "cpu", None)  # the zoo's CI profile
    assert probe.name not in modes_of(adversarial, "cpu", None)
    assert {cell.mode for cell in cells([get("loop")], [mlp], "cpu", ("all",))} == set(modes_for("cpu"))
    assert calibrated_modes(CPU)[0] == probe.name
    assert probe.name in get_grid("cpu").modes and probe.name in get_grid("quick").modes
    assert probe.name in get_grid("all").modes and probe.name not in get_grid("gpu").modes
    assert sorted(["float64", "float32", probe.name], key=dtype_key) == [probe.name, "float32", "float64"]
    assert tolerance_for(probe.name, TRANSLATION) == FLOAT16.translation


def test_the_display_order_is_the_tables():
    assert sorted(reversed(list(MODES)), key=dtype_key) == list(MODES)
    assert sorted(["unknown", "float64", "float32"], key=dtype_key) == ["float32", "float64", "unknown"]
    assert declared_modes("cuda") == tuple(MODES)


def two_parameters(big: torch.Tensor, small: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"big": big, "small": small}


def test_the_comparison_judges_a_vanishing_gradient_on_the_scale_of_the_largest():
    torch.manual_seed(0)
    reference = two_parameters(torch.randn(4, 10, dtype=torch.float64), 1e-9 * torch.randn(4, 3, dtype=torch.float64))
    # The vanishing parameter entirely wrong (its own size), the other exact: rounding-sized next to
    # the largest gradient, so within float32's tolerance; measured on its own norm it would be ~1.
    got = two_parameters(reference["big"].clone(), reference["small"] + 1e-9 * torch.randn(4, 3, dtype=torch.float64))
    comparison = compare(got, reference)
    assert comparison.max_relative < 1e-6 and comparison.max_per_sample < 1e-6
    assert comparison.within(tolerance_for(torch.float32))
    # A parameter above the floor is judged on its own norm: 1% off is far outside float32's.
    got = two_parameters(reference["big"] * 1.01, reference["small"].clone())
    comparison = compare(got, reference)
    assert comparison.relative["big"] == pytest.approx(1e-2) and not comparison.within(tolerance_for(torch.float32))
    assert "worst in parameter 'big'" in comparison.describe(tolerance_for(torch.float32))


def test_the_comparison_flags_an_all_zero_parameter_as_missing_even_below_the_floor():
    torch.manual_seed(0)
    reference = two_parameters(torch.randn(4, 10, dtype=torch.float64), 1e-4 * torch.randn(4, 3, dtype=torch.float64))
    comparison = compare(two_parameters(reference["big"].clone(), torch.zeros(4, 3)), reference)
    assert not comparison.within(tolerance_for(torch.bfloat16))
    assert any("small" in p and "left out of the computation" in p for p in comparison.problems)
    comparison = compare({"big": reference["big"]}, reference)
    assert not comparison.within(tolerance_for(torch.bfloat16)) and "missing gradients for ['small']" in comparison.problems[0]


def test_the_specification_assertions_measure_with_the_same_comparison():
    torch.manual_seed(0)
    expected = {"big": torch.randn(10, dtype=torch.float64), "small": 1e-9 * torch.randn(3, dtype=torch.float64)}
    assert_grads_close({"big": expected["big"], "small": -expected["small"]}, expected,
                       tolerance_for(torch.float32), "a vanishing parameter's sign flipped")
    with pytest.raises(AssertionError, match="left out of the computation"):
        assert_grads_close({"big": expected["big"], "small": torch.zeros(3, dtype=torch.float64)},
                           {"big": expected["big"], "small": 1e-4 * expected["small"] / expected["small"].norm()},
                           tolerance_for(torch.bfloat16), "a parameter left out")
    with pytest.raises(AssertionError, match="relative error 0.01 .*'big'"):
        assert_grads_close({"big": 1.01 * expected["big"], "small": expected["small"]}, expected,
                           tolerance_for(torch.float32), "1% off")


def test_per_sample_gradient_norms_are_within_the_norm_tolerance_of_the_references():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(8, 6), torch.randint(3, (8,))
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    norms = persample.per_sample_grad_norms(model, x, y, loss_fn=loss_fn, method="hooks")
    reference = torch.cat([g.flatten(1) for g in reference_grads(model, x, y, loss_fn).values()], 1).norm(dim=1)
    assert norms.shape == (8,) and norms.dtype == torch.float32
    comparison = compare({"norm": norms.unsqueeze(1)}, {"norm": reference.unsqueeze(1)})
    assert comparison.within(tolerance_for(torch.float32, NORM)), comparison.describe(tolerance_for(torch.float32, NORM))


def test_a_translation_is_held_to_its_precisions_translation_tolerance_by_the_same_comparison():
    torch.manual_seed(0)
    out = torch.randn(4, 5, dtype=torch.float64)
    state = (torch.randn(2, 4, 3, dtype=torch.float64), torch.arange(4))
    assert_translates((out, state), (out.clone(), (state[0] * (1 + 1e-12), state[1].clone())), torch.float64)
    off = out.clone()
    off[3, 4] += 1e-6 * out.norm()  # one element of one sample, far below float32's bound
    with pytest.raises(AssertionError, match=r"output\[0\]"):
        assert_translates((off, state), (out, state), torch.float64)
    assert_translates(off.float(), out.float(), torch.float32)
    with pytest.raises(AssertionError, match="differs from torch's in 1 elements"):
        assert_translates((out, (state[0], state[1] + (torch.arange(4) == 2))), (out, state), torch.float64)
    with pytest.raises(AssertionError, match="torch.float32 .* torch's torch.float64"):
        assert_translates(out.float(), out, torch.float64)
