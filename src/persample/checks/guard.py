"""What a rule-based step checks on every call, cheaply: that nothing changed since it was prepared.

The checks at prepare time see the example batch. A model can take another path on a later batch
(a branch on a batch-level value) or after a Python attribute changed, and use a parameter outside
its layer there. Every call of hooks and kernel therefore also computes the batch gradient in
the same backward pass and compares Σᵢ gᵢ with it on a few sampled elements of each parameter
(a rounding-sound measure: the difference over Σᵢ |gᵢ|); expand asks autograd for the gradient
reaching each parameter outside its expanded layer calls, which must be none. A failure raises
`StaleStep`, and `per_sample_grads` prepares again on that batch (so its checks refuse, or `auto`
picks another method).
"""
from __future__ import annotations

import torch
from torch import nn

from ..assumptions import MATCHES_DEFINITION
from ..errors import StaleStep
from ..reference import VANISHING_FRACTION

SAMPLED = 32  # elements of each parameter compared per call
TOLERANCE = {torch.float64: 1e-4, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
FIX = ("the model behaves otherwise than on the batch this step was prepared with (a branch on the "
       "batch's values, or an attribute changed since): prepare again on this batch, or use vmap, jax or loop")


class SumGuard:
    """Σᵢ gᵢ against the batch gradient, on `SAMPLED` fixed elements of each parameter."""

    def __init__(self, params: dict[str, nn.Parameter], method: str) -> None:
        generator = torch.Generator().manual_seed(0)
        self.method = method
        self.names = list(params)
        self.indices = [torch.randperm(p.numel(), generator=generator)[:SAMPLED].to(p.device) for p in params.values()]
        self.segments = torch.cat([torch.full((len(i),), n) for n, i in enumerate(self.indices)]).to(
            self.indices[0].device if self.indices else "cpu")

    def check(self, per_sample: dict[str, torch.Tensor], batch_grads: dict[str, torch.Tensor | None]) -> None:
        grads = [per_sample[name] for name in self.names]
        rows = torch.cat([g.reshape(g.shape[0], -1)[:, i].double() for g, i in zip(grads, self.indices)], 1)
        expected = torch.cat([
            torch.zeros(len(i), dtype=torch.float64, device=rows.device) if batch_grads.get(name) is None
            else _dense(batch_grads[name]).reshape(-1)[i].double() for name, i in zip(self.names, self.indices)
        ])
        count = len(self.names)
        difference = torch.zeros(count, dtype=torch.float64, device=rows.device).index_add_(
            0, self.segments, (rows.sum(0) - expected).square()).sqrt()
        scale = torch.zeros(count, dtype=torch.float64, device=rows.device).index_add_(
            0, self.segments, rows.abs().sum(0).square()).sqrt()
        tolerance = torch.tensor([self._tolerance(g) for g in grads], dtype=torch.float64, device=rows.device)
        # A vanishing gradient (a bias before a normalisation) is rounding noise on both sides:
        # judge it against a floor tied to the largest parameter's scale, as the reference does.
        scale = torch.maximum(scale, VANISHING_FRACTION * scale.max()) if count else scale
        ratios = difference / (scale.clamp_min(1e-30) * tolerance)
        if count and ratios.max().item() > 1:
            worst = int(ratios.argmax())
            raise StaleStep(
                f"on this batch Σᵢ gᵢ of parameter {self.names[worst]} differs from the batch gradient by "
                f"{(difference[worst] / scale[worst].clamp_min(1e-30)).item():.3g} of Σᵢ |gᵢ| (or of its floor): {FIX}",
                method=self.method, assumption=MATCHES_DEFINITION.id)

    @staticmethod
    def _tolerance(grads: torch.Tensor) -> float:
        tolerance = TOLERANCE.get(grads.dtype, 3e-2)
        if torch.is_autocast_enabled(grads.device.type):
            tolerance = max(tolerance, TOLERANCE[torch.bfloat16])
        return tolerance


def _dense(grad: torch.Tensor) -> torch.Tensor:
    return grad if grad.layout == torch.strided else grad.to_dense()  # Embedding(sparse=True)


def check_no_gradient_outside(grads: dict[str, torch.Tensor | None], method: str) -> None:
    """Gradients that reached parameters outside their layers' expanded calls must be none."""
    for name, grad in grads.items():
        if grad is not None and grad.abs().max().item() > 0:
            raise StaleStep(f"on this batch parameter {name} receives gradient outside its layer's calls: {FIX}",
                            method=method, assumption=MATCHES_DEFINITION.id)
