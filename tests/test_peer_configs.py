"""The peers' layer configurations (`persample.conformance.peer_configs`) and their scorer.

The list: unique ids, at least 120 configurations, every family of both peers' suites covered, each
factory building a model that runs forward on its input to one loss per sample, the same build
twice. The scorer: the loop method is right on every configuration (so the runner, the references
and the tolerance are sound). The methods: hooks and expand are never wrong nor fail raw on any
configuration, and are right on at least 90% of them (a refusal is honest, but a layer the peers
test is one users have)."""
from __future__ import annotations

import pytest
import torch

from persample.conformance.peer_configs import BACKPACK, CONFIGS, FAMILIES, OPACUS
from persample.conformance.peer_configs_runner import (
    Outcome,
    counts,
    grouped_reasons,
    reason_key,
    right_fraction,
    score,
)

REQUIRED_FAMILIES = {
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "embedding", "embedding_bag", "layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm_eval",
    "sequence_bias", "rnn", "gru", "lstm", "multihead_attention",
}
RIGHT_FRACTION = 0.9

_SCORES: dict[str, list[Outcome]] = {}


def scored(method: str) -> list[Outcome]:
    """`score(method)` on every configuration, computed once per test session."""
    if method not in _SCORES:
        _SCORES[method] = score(method)
    return _SCORES[method]


def test_ids_are_unique_and_the_list_is_long_enough() -> None:
    ids = [config.id for config in CONFIGS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 120


def test_every_family_of_both_peers_is_covered() -> None:
    assert REQUIRED_FAMILIES <= set(FAMILIES)
    assert {config.family for config in CONFIGS} == set(FAMILIES)
    assert {config.source for config in CONFIGS} == {OPACUS, BACKPACK}
    for config in CONFIGS:
        source, family = config.id.split("/")[:2]
        assert (source, family) == (config.source, config.family), config.id
        assert config.read_from.startswith(("opacus/tests/grad_samples/", "test/")), config.id


def test_every_factory_builds_and_runs_forward_to_one_loss_per_sample() -> None:
    for config in CONFIGS:
        model, inputs, targets = config.build()
        losses = config.loss_fn(model(*inputs) if isinstance(inputs, tuple) else model(inputs), targets)
        assert losses.shape == (targets.shape[0],), config.id
        assert torch.isfinite(losses).all(), config.id
        assert any(p.requires_grad for p in model.parameters()), config.id
        again = config.model()
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())), config.id


def test_reasons_group_refusals_of_one_kind() -> None:
    first = reason_key("hooks: layer 0.rnn (RNN) is called with an input of shape (9, 5) (9 rows on dim 0) in a "
                       "batch of 3: its rule needs the batch on dim 0. Fix: call it batch first")
    second = reason_key("expand: layer layer (GRU) is called with an input of shape (3, 2, 5) (3 rows on dim 0) in a "
                        "batch of 2: its rule needs the batch on dim 0. Fix: call it batch first")
    assert first == second
    assert "Fix" not in first and "RNN" not in first


def test_the_loop_is_right_on_every_configuration() -> None:
    outcomes = scored("loop")
    assert [o for o in outcomes if o.verdict != "right"] == []


@pytest.mark.parametrize("method", ["hooks", "expand"])
def test_no_configuration_is_wrong_or_a_raw_error(method: str) -> None:
    bad = [f"{o.verdict} {o.config}: {o.detail}" for o in scored(method) if o.verdict in ("wrong", "error")]
    assert bad == []


@pytest.mark.parametrize("method", ["hooks", "expand"])
def test_right_on_nine_configurations_in_ten(method: str) -> None:
    outcomes = scored(method)
    refusals = "; ".join(f"{count} × {reason[:120]} [{', '.join(families)}]"
                         for reason, count, families in grouped_reasons(outcomes))
    assert right_fraction(outcomes) >= RIGHT_FRACTION, f"{counts(outcomes)}: {refusals}"
