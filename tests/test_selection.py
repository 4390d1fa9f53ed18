"""`auto` returns only a method that is right for this model: never one whose known deviation
applies to the model's features, nor one whose checks refuse it, nor a peer whose answer on the
example batch disagrees with autograd; and `explain_choice` says why each was passed over."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import persample
import persample.methods
from persample import selection
from persample.deviations import Deviation, Feature, load_deviations, packaged_deviations
from persample.workloads import get_workload

CPU = torch.device("cpu")


class PaddedText(nn.Module):
    """Embedding(3000, 128, padding_idx=0) -> mean over tokens -> Linear (the issue's model)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(3000, 128, padding_idx=0), nn.Linear(128, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


def padded_batch(batch: int = 100):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 3000, (batch, 12), generator=generator)
    tokens[:, -3:] = 0
    return tokens, torch.randint(4, (batch,), generator=generator)


def test_auto_never_picks_a_method_whose_known_deviation_applies(monkeypatch):
    monkeypatch.setattr(selection, "candidates", lambda *a, **k: (["torch-ew", "opacus-ew", "hooks"], "test order"))
    model, (tokens, y) = PaddedText(), padded_batch()
    choice = selection.explain_choice(model, CPU, torch.float32, 100, example_batch=(tokens, y))
    assert choice.method.name == "hooks"
    assert any(line.startswith("torch-ew: known deviation") and "padding_idx" in line for line in choice.passed_over)
    grads = choice.step(tokens, y)
    assert grads["embed.weight"][:, 0].abs().max() == 0, "autograd gives the padding row no gradient"


def test_a_candidate_whose_checks_refuse_hands_over_to_the_next(monkeypatch):
    monkeypatch.setattr(selection, "measured_ranking", lambda *a: (["hooks", "vmap"], "measured: test"))
    workload = get_workload("time_major_linear")
    problem = workload.build("small", seed=0)
    choice = selection.explain_choice(problem.model, CPU, torch.float32, 4, example_batch=(problem.inputs, problem.targets))
    assert choice.method.name == "vmap"
    assert choice.passed_over[0].startswith("hooks: layer lin (Linear)")


def test_methods_that_guard_themselves_come_before_peers_measured_faster(monkeypatch):
    monkeypatch.setattr(selection, "measured_ranking", lambda *a: (["opacus-ew", "torch-ew", "vmap", "hooks"], "measured: test"))
    names, _ = selection.candidates(nn.Linear(4, 3), CPU, torch.float32, 8)
    assert names[:2] == ["vmap", "hooks"] and names.index("opacus-ew") > names.index("expand")
    assert names[-1] == "loop"


class Switchable(nn.Module):
    """Once `extra` is switched on, a weight is also used outside its layer (F.linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)
        self.extra = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.extra:
            h = h + 0.5 * nn.functional.linear(torch.tanh(h), self.a.weight)
        return self.b(torch.tanh(h))


def test_a_peer_auto_picked_is_guarded_on_every_call_and_auto_chooses_again_when_it_is_wrong(monkeypatch):
    monkeypatch.setattr(selection, "candidates", lambda *a, **k: (["opacus-ew", "loop"], "test order"))
    torch.manual_seed(0)
    model, x, y = Switchable(), torch.randn(8, 6), torch.randint(3, (8,))
    step = persample.methods.get("auto").prepare(model, None, (x, y))
    assert step.method == "opacus-ew"  # right as prepared
    first = step.choice
    model.extra = True  # the prepared step misses the new use of a.weight: Σᵢ gᵢ is not the batch gradient
    got, want = step(x, y), persample.methods.get("loop")(model, x, y)
    assert step.choice is not first  # chosen again, on this batch, where it is verified
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_a_peer_that_is_wrong_on_the_example_batch_is_passed_over(monkeypatch):
    monkeypatch.setattr(selection, "candidates", lambda *a, **k: (["opacus-ew", "loop"], "test order"))
    problem = get_workload("energy_gradient").build("small", seed=0)
    choice = selection.explain_choice(problem.model, CPU, torch.float32, 8, example_batch=(problem.inputs, problem.targets))
    assert choice.method.name != "opacus-ew"
    assert "opacus-ew" in choice.describe()


def test_without_a_batch_auto_still_passes_over_known_deviations():
    choice = selection.explain_choice(PaddedText(), CPU, torch.float32, 100)
    assert choice.method.name not in {"torch-ew", "opacus-ew", "opacus-hooks"}


def test_the_prepared_step_of_auto_says_what_it_chose_and_why():
    model, (tokens, y) = PaddedText(), padded_batch(8)
    step = persample.methods.get("auto").prepare(model, None, (tokens, y))
    assert step.choice.method.name == step.method and step.choice.basis


@pytest.mark.parametrize("text, present", [
    ("Embedding.padding_idx is not None", True),
    ("Embedding.padding_idx is None", False),
    ("Linear", True),
    ("_ConvNd", False),
    ("Linear.in_features >= 128", True),
    ("Linear.in_features in (1, 2)", False),
])
def test_a_model_feature_is_a_layer_type_or_an_attribute_compared_with_a_literal(text, present):
    assert Feature.parse(text).present(PaddedText()) is present


def test_a_malformed_feature_is_a_clear_error():
    with pytest.raises(ValueError, match="Layer.attribute <op> literal"):
        Feature.parse("Embedding.padding_idx ~ 3")


@pytest.mark.parametrize("deviation", packaged_deviations(), ids=lambda d: d.source.rpartition("#")[2] + "-" + d.method)
def test_auto_avoids_every_packaged_deviation_on_the_workloads_it_is_recorded_on(deviation):
    """By the model's features where the entry names them, else by holding the peer's answer
    against autograd on the example batch."""
    for name in deviation.workloads:
        problem = get_workload(name).build("small", 8, seed=0)
        if deviation.applies_when:
            assert deviation.applies_to(problem.model), f"{deviation.source}: applies_when does not hold on {name}"
            continue
        assert deviation.seen_on_example_batch
        with pytest.raises(Exception) as caught:
            selection.verified_step(persample.methods.get(deviation.method), problem.model, problem.loss_fn,
                                    (problem.inputs, problem.targets))
        assert not isinstance(caught.value, persample.LossNotPerSample), caught.value


def test_a_deviation_covers_the_checks_workloads_modes_and_devices_it_names(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[deviation]]\nmethod = "my-method"\nchecks = ["matrix", "sum_*"]\nworkloads = ["mlp"]\n'
                    'modes = ["float32"]\napplies_when = ["Linear"]\nreason = "mine"\n')
    (entry,) = load_deviations(path)
    assert isinstance(entry, Deviation) and entry.covers("my-method", "sum_of_per_sample_gradients", "mlp", "float32", "cpu")
    assert not entry.covers("my-method", "matrix", "mlp", "bfloat16", "cpu")
    assert not entry.covers("other", "matrix", "mlp", "float32", "cpu")
