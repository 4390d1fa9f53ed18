"""The model zoo: `Workload(name, make_model, make_batch, loss_fn, tags)`, registered by name.

Sizes are a parameter: "small" keeps the conformance suite fast on a CPU, "full" is the
realistic model the benchmarks time.

    >>> from persample.workloads import get_workload
    >>> problem = get_workload("mlp").build(size="small", batch_size=4)
    >>> problem.inputs.shape
    torch.Size([4, 64])
"""
from .registry import SIZES, Problem, Workload, all_workloads, get_workload, register_workload
from . import misc, vision, text  # noqa: F401,E402  (register the zoo)
from . import adversarial  # noqa: F401,E402  (models that break the methods' assumptions on purpose)

__all__ = ["SIZES", "Problem", "Workload", "all_workloads", "get_workload", "register_workload"]
