"""The errors persample raises: each names the problem and the fix."""
from __future__ import annotations

from collections.abc import Iterable


class Unsupported(Exception):
    """A method cannot handle this model, dtype or device (or its package is missing).

    Carries the method, the offending layer (if any) and the methods that can handle it, so a
    conformance cell or a benchmark can record *why* and a user knows what to use instead.
    """

    def __init__(
        self,
        reason: str,
        *,
        method: str | None = None,
        layer: str | None = None,
        supported_by: Iterable[str] = (),
    ) -> None:
        self.reason = reason
        self.method = method
        self.layer = layer
        self.supported_by = tuple(supported_by)
        message = f"{method}: {reason}" if method else reason
        if self.supported_by:
            message += f" (methods that can: {', '.join(self.supported_by)})"
        super().__init__(message)


class LossNotPerSample(ValueError):
    """The loss returned something other than one loss per sample (shape `(B,)`)."""
