"""The public API: `per_sample_grads`, `per_sample_grad_norms`, `available_methods`, method
resolution and plugins, and the errors bad input gets (each names the problem and the fix)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import persample
from persample import LossNotPerSample, Unsupported
from persample.methods.registry import get, load_object, registered

ROOT = Path(__file__).resolve().parents[1]


def linear_problem(batch: int = 5):
    torch.manual_seed(0)
    return nn.Linear(4, 3), torch.randn(batch, 4), torch.randint(3, (batch,))


def test_per_sample_grads_returns_one_unscaled_gradient_per_sample_and_parameter():
    model, x, y = linear_problem()
    grads = persample.per_sample_grads(model, x, y)
    assert {k: tuple(v.shape) for k, v in grads.items()} == {"weight": (5, 3, 4), "bias": (5, 3)}
    alone = persample.per_sample_grads(model, x[2:3], y[2:3], method="loop")
    torch.testing.assert_close(grads["weight"][2], alone["weight"][0])


def test_per_sample_grad_norms_are_the_norms_over_all_parameters():
    model, x, y = linear_problem()
    grads = persample.per_sample_grads(model, x, y, method="hooks")
    expected = (grads["weight"].flatten(1).square().sum(1) + grads["bias"].square().sum(1)).sqrt()
    torch.testing.assert_close(persample.per_sample_grad_norms(model, x, y, method="hooks"), expected)


def test_auto_picks_a_method_that_supports_the_model():
    """Which one depends on the measured data (tests/report/test_auto.py); that it can run does not."""
    cpu = torch.device("cpu")
    linear = nn.Linear(4, 3)
    assert persample.api.resolve_method("auto", linear, torch.randn(2, 4)).problem(linear, cpu, torch.float32) is None
    lstm = nn.LSTM(4, 3, batch_first=True)  # no per-layer rule: hooks cannot, so auto looks further
    chosen = persample.api.resolve_method("auto", lstm, torch.randn(2, 5, 4))
    assert chosen.name != "hooks" and chosen.problem(lstm, cpu, torch.float32) is None


def test_unknown_method_names_the_registered_ones():
    model, x, y = linear_problem()
    with pytest.raises(ValueError, match="unknown method 'nope'.*loop"):
        persample.per_sample_grads(model, x, y, method="nope")


def test_available_methods_says_why_a_method_cannot_run(monkeypatch):
    import importlib.util

    method = get("loop")
    monkeypatch.setattr(type(method), "capabilities", persample.Capabilities(
        name="loop", summary="x", requires=(("no_such_module_here", "no-such-package"),)))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install no-such-package" in persample.available_methods()["loop"]


def test_a_scalar_loss_is_refused_with_an_explanation_of_reduction():
    model, x, y = linear_problem()
    with pytest.raises(LossNotPerSample, match=r"already reduced.*reduction='none'") as raised:
        persample.per_sample_grads(model, x, y, loss_fn=nn.CrossEntropyLoss(), method="hooks")
    assert isinstance(raised.value, ValueError)


def test_a_loss_with_extra_dimensions_is_refused():
    model, x, _ = linear_problem()
    with pytest.raises(LossNotPerSample, match=r"one loss per sample: for (\d) samples, shape \(\1,\); got \(\1, 3\)"):
        persample.per_sample_grads(model, x, torch.randn(5, 3), loss_fn=nn.MSELoss(reduction="none"), method="vmap")


def test_inputs_in_another_dtype_than_the_model_are_refused_with_the_cast_to_make():
    model, x, y = linear_problem()
    with pytest.raises(ValueError, match=r"input 0 is torch.float64.*torch.float32.*cast"):
        persample.per_sample_grads(model, x.double(), y, method="hooks")


def test_targets_must_match_the_batch():
    model, x, y = linear_problem()
    with pytest.raises(ValueError, match="targets must be batch first with 5 rows"):
        persample.per_sample_grads(model, x, y[:3], method="hooks")


def test_a_model_without_trainable_parameters_is_refused():
    model, x, y = linear_problem()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        persample.per_sample_grads(model, x, y, method="hooks")


class Gated(nn.Module):
    """Owns a parameter and branches on its input's values (as Hugging Face's mask code does): the
    same branch for every batch, but nothing torch.func can batch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.scale if torch.isfinite(x).all() else x - self.scale


def test_an_unsupported_layer_names_the_layer_and_the_methods_that_can():
    model = nn.Sequential(nn.Linear(4, 4), Gated(), nn.Linear(4, 3))
    _, x, y = linear_problem()
    with pytest.raises(Unsupported, match=r"layer 1 \(Gated\).*torch.func.*methods that can: loop") as raised:
        persample.per_sample_grads(model, x, y, method="hooks")
    assert raised.value.layer == "Gated" and "loop" in raised.value.supported_by


@pytest.mark.parametrize("method", ["hooks", "expand"])
def test_a_layer_without_a_rule_runs_on_the_torch_func_fallback(method):
    """PReLU has no closed-form rule: its own weight's per-sample gradient comes from torch.func over
    the captured call, and the step's placement says so."""
    model = nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 3))
    _, x, y = linear_problem()
    expected = persample.per_sample_grads(model, x, y, method="loop")
    got = persample.per_sample_grads(model, x, y, method=method)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    step = get(method).prepare(model, None, (x, y))
    assert step.placement == {"0": "rules", "1": "torch.func", "2": "rules"}


def test_a_subclass_that_overrides_forward_does_not_inherit_the_layer_rule():
    """Linear's formula would be wrong for Doubled: it runs on the torch.func fallback, which
    differentiates its own forward."""
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    _, x, y = linear_problem()
    model = Doubled(4, 3)
    expected = persample.per_sample_grads(model, x, y, method="loop")
    got = persample.per_sample_grads(model, x, y, method="expand")
    torch.testing.assert_close(got["weight"], expected["weight"])
    assert get("expand").prepare(model, None, (x, y)).placement == {"": "torch.func"}


def test_a_subclass_that_keeps_forward_uses_the_layer_rule():
    class Tagged(nn.Linear):
        pass

    torch.manual_seed(0)
    model, (_, x, y) = Tagged(4, 3), linear_problem()
    torch.testing.assert_close(persample.per_sample_grads(model, x, y, method="hooks")["weight"],
                               persample.per_sample_grads(model, x, y, method="loop")["weight"])


def test_hooks_refuse_a_layer_output_modified_in_place():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 3))
    _, x, y = linear_problem()
    with pytest.raises(Unsupported, match=r"modified in place.*inplace=False"):
        persample.per_sample_grads(model, x, y, method="hooks")


@pytest.mark.parametrize("option, message", [("scale_grad_by_freq", "frequency in the whole batch"), ("max_norm", "in place")])
def test_embedding_options_that_break_per_sample_gradients_are_refused(option, message):
    layer = nn.Embedding(10, 3, **{option: True if option == "scale_grad_by_freq" else 1.0})
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(6, 2))
    with pytest.raises(Unsupported, match=message):
        persample.per_sample_grads(model, torch.randint(10, (4, 2)), torch.randint(2, (4,)), method="vmap")


def test_a_method_given_as_module_and_object_is_loaded_and_registered():
    method = load_object("examples/torch_func_plugin.py:method")
    assert registered()["my-vmap"] is method
    model, x, y = linear_problem()
    torch.testing.assert_close(method(model, x, y)["weight"], get("loop")(model, x, y)["weight"])


def test_the_conformance_matrix_runs_against_a_plugin_method(tmp_path):
    command = [sys.executable, "-m", "pytest", "conformance/test_matrix.py", "conformance/test_invariants.py", "-q",
               "--method", "examples/torch_func_plugin.py:method", "--workload", "mlp", "--workload", "lm_tied",
               "--results", str(tmp_path / "results.json")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "my-vmap" in done.stdout and " passed" in done.stdout
