"""Assertions for specification tests: they hide their own frames and say what was expected,
what came, and where (parameter, sample index)."""
from __future__ import annotations

import torch

from ..reference import Tolerance


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def assert_grads_close(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tolerance: Tolerance, what: str
) -> None:
    """Same parameter names and shapes, and relative error per parameter within tolerance."""
    __tracebackhide__ = True
    if actual.keys() != expected.keys():
        raise AssertionError(f"{what}: parameters {sorted(actual)} but expected {sorted(expected)}")
    for name, want in expected.items():
        got = actual[name]
        if got.shape != want.shape:
            raise AssertionError(f"{what}: {name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        error = relative_error(got, want)
        if not error <= tolerance.relative:
            raise AssertionError(
                f"{what}: parameter {name!r} is {error:.3g} away (relative), tolerance {tolerance.relative:g}"
            )


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
