"""The model zoo: `Workload(name, make_model, make_batch, loss_fn, tags)`, registered by name.

Sizes are a parameter: "small" keeps the conformance suite fast on a CPU, "full" is the
realistic model the benchmarks time.

    >>> from persample.workloads import get_workload
    >>> problem = get_workload("mlp").build(size="small", batch_size=4)
    >>> problem.inputs.shape
    torch.Size([4, 64])
"""
import importlib
import pkgutil

from .registry import (
    BENCH, ENTRY_POINT_GROUP, QUICK, SIZES, Problem, Workload, all_workloads, get_workload, register_workload,
)


def discover() -> list[str]:
    """Import every public module of this package (each registers its workloads), in name order.

    Returns the modules' names. A workload area is one file here: nothing lists the modules. The
    zoo is `misc`, `text`, `vision`; `adversarial` holds the models that break the methods'
    assumptions on purpose. Workloads of other packages come through the `persample.workloads`
    entry point group (`registry.load_plugins`)."""
    names = [info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")]
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


discover()

__all__ = ["BENCH", "ENTRY_POINT_GROUP", "QUICK", "SIZES", "Problem", "discover", "Workload", "all_workloads", "get_workload", "register_workload"]
