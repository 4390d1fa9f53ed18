"""Assertions for specification tests: they hide their own frames and say what was expected,
what came, and where (parameter, sample index)."""
from __future__ import annotations

import torch

from ..reference import Tolerance, compare


def assert_grads_close(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tolerance: Tolerance, what: str
) -> None:
    """Same parameter names and shapes, and each parameter's tensor within `tolerance.relative` of
    the expected one, as `reference.compare` measures it (each tensor taken whole, as one sample:
    relative Frobenius error, a vanishing parameter's on the scale of the largest, an all-zero
    parameter where the expected one is not reported as missing). Raises AssertionError saying
    what was expected, what came, and where."""
    __tracebackhide__ = True
    if actual.keys() != expected.keys():
        raise AssertionError(f"{what}: parameters {sorted(actual)} but expected {sorted(expected)}")
    for name, want in expected.items():
        got = actual[name]
        if got.shape != want.shape:
            raise AssertionError(f"{what}: {name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    whole = Tolerance(relative=tolerance.relative, per_sample=tolerance.relative)
    comparison = compare({k: v.unsqueeze(0) for k, v in actual.items()}, {k: v.unsqueeze(0) for k, v in expected.items()})
    if not comparison.within(whole):
        raise AssertionError(f"{what}: {comparison.describe(whole).split('; per-sample error')[0]}")


def _tensors(value, name: str) -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {name: value}
    if isinstance(value, (tuple, list)):
        return {key: t for i, v in enumerate(value) for key, t in _tensors(v, f"{name}[{i}]").items()}
    raise AssertionError(f"{name}: {type(value).__name__}, expected a tensor or a tuple of them")


def assert_translates(got, expected, dtype: torch.dtype, what: str = "translation") -> None:
    """A translation's outputs (a tensor, or tuples and lists of them) against torch's: the same
    structure, dtypes and shapes; floating-point tensors within `dtype`'s translation tolerance
    (`persample.modes`) as `reference.compare` measures them, each tensor on its own (its first
    dimension taken as the batch, a 0-dim tensor as a batch of one: a recurrent layer's states are
    not batched along their first dimension as its output is); other tensors equal. Raises
    AssertionError naming the output and the error."""
    __tracebackhide__ = True
    from ..modes import TRANSLATION, tolerance_for

    got, expected = _tensors(got, "output"), _tensors(expected, "output")
    if got.keys() != expected.keys():
        raise AssertionError(f"{what}: outputs {sorted(got)}, torch's {sorted(expected)}")
    tolerance = tolerance_for(dtype, TRANSLATION)
    for name, want in expected.items():
        have = got[name]
        if have.dtype != want.dtype or have.shape != want.shape:
            raise AssertionError(f"{what}: {name} is {have.dtype} {tuple(have.shape)}, torch's {want.dtype} {tuple(want.shape)}")
        if not want.is_floating_point():
            if not torch.equal(have.cpu(), want.cpu()):
                raise AssertionError(f"{what}: {name} differs from torch's in {int((have.cpu() != want.cpu()).sum())} elements")
            continue
        comparison = compare({name: have.reshape(1) if have.dim() == 0 else have},
                             {name: want.reshape(1) if want.dim() == 0 else want})
        if not comparison.within(tolerance):
            raise AssertionError(f"{what}: {comparison.describe(tolerance)}")


def assert_samples_equal(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], samples: list[int], what: str
) -> None:
    """Per-sample gradients of `samples` identical to the last bit (no leakage between samples)."""
    __tracebackhide__ = True
    for name, want in expected.items():
        for i in samples:
            if not torch.equal(actual[name][i], want[i]):
                difference = (actual[name][i].double() - want[i].double()).abs().max().item()
                raise AssertionError(f"{what}: parameter {name!r}, sample {i} changed by up to {difference:.3g}")
