"""`persample check`: the conformance suite and the benchmarks on the user's own model.

    >>> import torch, persample
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> report = persample.check(model, torch.randn(8, 4), torch.randint(3, (8,)),
    ...                          methods=["loop", "vmap"], quick=True, record=False)
    >>> [(r.method, r.status) for r in report.ranked("float32")][0][1]
    'correct'

Modules: `subject` (the user's model, its copies, resampled batches), `judge` (reference and
verdict), `invariants`, `measure` (time and memory), `report` (the ranked result, JSON), `page`
(the HTML page), `run` (`check`), `commands` (the CLI).
"""
from .report import CheckReport, MethodResult
from .run import check

__all__ = ["CheckReport", "MethodResult", "check"]
