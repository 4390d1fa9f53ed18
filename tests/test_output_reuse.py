"""`PreparedStep.reuse_outputs()`: a prepared step may write its per-sample gradients into buffers
it keeps instead of new memory on every call. The tensors a call returns are then overwritten by
the next call; their values are right at each call; a batch of another size gets fresh buffers.
hooks and expand offer it; every other method refuses it with `Unsupported`, naming the reason."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from persample import Unsupported
from persample.methods.registry import get


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def batch(size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 6, generator=generator), torch.randint(3, (size,), generator=generator)


def expected(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    return get("loop").prepare(model, None, (x, y))(x, y)


@pytest.mark.parametrize("method", ["hooks", "expand"])
def test_the_next_step_overwrites_the_returned_tensors_and_each_step_is_right(method):
    model = mlp()
    first_batch, second_batch = batch(8, 1), batch(8, 2)
    step = get(method).prepare(model, None, first_batch).reuse_outputs()
    assert step.reusing_outputs
    first = step(*first_batch)
    torch.testing.assert_close(first, expected(model, *first_batch))
    kept = {name: g.clone() for name, g in first.items()}
    second = step(*second_batch)
    torch.testing.assert_close(second, expected(model, *second_batch))
    # the weights' per-sample gradients live in the same memory: the first result now holds the second
    for name in ("0.weight", "2.weight"):
        assert second[name].data_ptr() == first[name].data_ptr()
        torch.testing.assert_close(first[name], second[name])
        assert not torch.equal(first[name], kept[name])


@pytest.mark.parametrize("method", ["hooks", "expand"])
def test_a_batch_of_another_size_gets_fresh_buffers_and_right_values(method):
    model = mlp()
    step = get(method).prepare(model, None, batch(8, 1)).reuse_outputs()
    eight = step(*batch(8, 1))
    three = step(*batch(3, 2))
    torch.testing.assert_close(three, expected(model, *batch(3, 2)))
    assert three["0.weight"].shape == (3, 5, 6) and three["0.weight"].data_ptr() != eight["0.weight"].data_ptr()
    torch.testing.assert_close(eight, expected(model, *batch(8, 1)))  # untouched by the smaller batch
    again = step(*batch(3, 4))
    assert again["0.weight"].data_ptr() == three["0.weight"].data_ptr()  # the new buffers are reused in turn


def test_without_the_option_every_step_returns_new_tensors():
    model = mlp()
    step = get("hooks").prepare(model, None, batch(8, 1))
    assert not step.reusing_outputs
    first = step(*batch(8, 1))
    kept = first["0.weight"].clone()
    step(*batch(8, 2))
    assert torch.equal(first["0.weight"], kept)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_methods_that_allocate_their_own_results_refuse_it(method):
    step = get(method).prepare(mlp(), None, batch(4, 1))
    with pytest.raises(Unsupported, match="reused output buffers"):
        step.reuse_outputs()
