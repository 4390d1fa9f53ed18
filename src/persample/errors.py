"""The errors persample raises: each names the problem and the fix."""
from __future__ import annotations

from collections.abc import Iterable


class Unsupported(Exception):
    """A method cannot handle this model, dtype or device (or its package is missing).

    Carries the method, the offending layer (if any), the assumption that failed (an id of
    `persample.assumptions`, if any) and the methods that can handle the model, so a conformance
    cell or a benchmark can record *why* and a user knows what to use instead.
    """

    def __init__(
        self,
        reason: str,
        *,
        method: str | None = None,
        layer: str | None = None,
        supported_by: Iterable[str] = (),
        assumption: str | None = None,
    ) -> None:
        self.reason = reason
        self.method = method
        self.layer = layer
        self.assumption = assumption
        self.supported_by = tuple(supported_by)
        message = f"{method}: {reason}" if method else reason
        if self.supported_by:
            message += f" (methods that can: {', '.join(self.supported_by)})"
        super().__init__(message)

    def naming(self, *, method: str | None = None, supported_by: Iterable[str] = ()) -> Unsupported:
        """The same refusal, attributed to `method` and listing the methods that can."""
        return Unsupported(self.reason, method=method or self.method, layer=self.layer,
                           supported_by=supported_by, assumption=self.assumption)


class LossNotPerSample(ValueError):
    """The loss is not one loss per sample: reduced over the batch, or depending on the batch."""


class StaleStep(Unsupported):
    """A prepared step's guard found the model behaving otherwise than on the batch it was prepared
    with (a data-dependent branch, a changed attribute): prepare again on this batch.
    `per_sample_grads` does so by itself."""
