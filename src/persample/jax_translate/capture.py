"""The second way to see a model: run it on one real sample and record the ATen operations.

torch.fx traces with placeholders, so it stops at the first Python branch on a tensor's value
(`if attention_mask.all():`, the sdpa mask helpers of Hugging Face models). Here the model and
its loss run on one sample of the example batch, with real values, under
`make_fx(functionalize(...), tracing_mode="real")`: every branch takes that sample's path, and
the graph holds the ATen operations of that path, without mutation or aliasing, weights as
placeholders (`functional_call`).

What made the path is recorded too. A `TorchDispatchMode` under the tracer sees every value a
tensor hands to Python (`aten._local_scalar_dense` behind `.item()`, `bool(tensor)`, `if tensor:`;
`aten.equal` behind `torch.equal`), each with the module being called and the model's own line
that read it: the `Read`s. The value's graph node stays in the graph, so the computation of the
tested value can be replayed on another sample (`guarded`: the guards). Reads that bypass the
dispatcher (`Tensor.numpy()`, `.tolist()`, `__array__`) cannot be replayed and are refused.
Each recorded operation is tagged with its module and line, so a refusal can name them.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.func import functional_call, functionalize
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..batch import CallArgs
from ..contract import LossFn
from ..errors import Unsupported
from ..observe import module_stack
from . import aten as aten_ops
from .tracing import fill, tensor_inputs

METHOD = "jax"
WHERE = "persample_where"
MODULE = "persample_module"
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_SKIPPED = (_TORCH_DIR, _OWN_DIR, os.path.dirname(os.__file__) + os.sep + "contextlib.py",
            os.path.dirname(os.__file__) + os.sep + "functools.py")
HOST_READS = {torch.Tensor.numpy: "Tensor.numpy()", torch.Tensor.tolist: "Tensor.tolist()",
              torch.Tensor.__array__: "numpy.asarray(tensor)"}


@dataclass
class Read:
    """One value a tensor handed to Python while the sample ran: its graph node, torch's value, the
    line that read it and the module being called."""

    node: fx.Node
    value: object
    where: str
    module: str | None

    def describe(self) -> str:
        """`the value read at <line> (in <module>)`."""
        inside = f" (in {self.module})" if self.module else ""
        return f"the tensor value read at {self.where}{inside}"


@dataclass
class Capture:
    """The ATen graph of one sample's path (`module`, a GraphModule holding the captured constants):
    its placeholders are the `weights` by name, then `n_inputs` tensor inputs and the targets; the
    `Read`s in order, and the example row it was recorded on."""

    module: fx.GraphModule
    weights: list[str]
    n_inputs: int
    reads: list[Read] = field(default_factory=list)
    row: int = 0

    @property
    def graph(self) -> fx.Graph:
        """The captured ATen graph."""
        return self.module.graph


def caller() -> str:
    """`file:line in function (`code`)` of the innermost frame outside torch and persample."""
    import linecache

    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame = frame.f_back
    if frame is None:
        return "an unknown line"
    path, line = frame.f_code.co_filename, frame.f_lineno
    code = linecache.getline(path, line).strip()
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{line} in {frame.f_code.co_name}" + (f" (`{code[:100]}`)" if code else "")


class _Recorder(TorchDispatchMode):
    """Under the tracer: records value reads, and tags each new graph node with its module and line."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.reads: list[tuple[object, str, str | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        where, module = caller(), (self.stack[-1] if self.stack else None)
        if func in aten_ops.VALUE_READS:
            self.reads.append((out, where, module))
        from torch.fx.experimental.proxy_tensor import get_proxy_mode

        proxy = get_proxy_mode()
        if proxy is not None:
            for node in reversed(proxy.tracer.graph.nodes):
                if node.op == "placeholder" or WHERE in node.meta:
                    break
                node.meta[WHERE], node.meta[MODULE] = where, module
        return out


class _HostReads(TorchFunctionMode):
    """Refuses reads of a tensor's values that bypass the dispatcher: they cannot be guarded."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            inside = f" in {self.stack[-1]}" if self.stack else ""
            raise Unsupported(
                f"the forward reads a tensor's values with {HOST_READS[func]}{inside}, at {caller()}, which the "
                "jax method can neither translate nor guard (its branch would be fixed silently); use .item() or "
                "a torch operation, or a torch method (loop)", method=METHOD,
                layer=self.stack[-1].rsplit(" (", 1)[-1].rstrip(")") if self.stack else None, assumption="translatable")
        return func(*args, **(kwargs or {}))


def decompositions() -> dict:
    """Core ATen decompositions of the operators `aten` does not translate whole (value reads kept)."""
    from torch._decomp import core_aten_decompositions

    return {op: fn for op, fn in core_aten_decompositions().items()
            if aten_ops.lookup(op) is None and op not in aten_ops.VALUE_READS}


def capture(model: nn.Module, loss_fn: LossFn, call: CallArgs, targets: torch.Tensor, row: int,
            weights: dict[str, torch.Tensor]) -> Capture:
    """The ATen graph of `loss_fn(model(sample), target)` for example row `row`, run with real values.

    `weights`: `{name: tensor}` swapped into the model (`functional_call`), placeholders in that
    order, then the sample's tensor inputs (`tracing.tensor_inputs` order) and its target. Raises
    `Unsupported` when the forward cannot be run so (a read that bypasses the dispatcher, an error
    raised while tracing)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    one = call.select(row)
    inputs = tensor_inputs(one)
    names = list(weights)

    with module_stack(model) as stack:
        recorder = _Recorder(stack)

        def run(*flat):
            swapped = dict(zip(names, flat[: len(names)]))
            data = fill(one, flat[len(names): -1])
            with _HostReads(stack), recorder:
                outputs = functional_call(model, swapped, data.args, data.kwargs, tie_weights=True, strict=False)
                return loss_fn(outputs, flat[-1])

        flat = [*weights.values(), *inputs, targets[row: row + 1]]
        try:
            module = make_fx(functionalize(run, remove="mutations_and_views"), decomposition_table=decompositions(),
                             tracing_mode="real", _error_on_data_dependent_ops=False)(*flat)
        except Unsupported:
            raise
        except Exception as error:
            where = f" in {stack[-1]}" if stack else ""
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise Unsupported(
                f"running the model on one sample under make_fx (the jax method's capture with real values, used "
                f"where torch.fx cannot trace) failed{where}: {type(error).__name__}: {first}; use a torch method "
                "(vmap, loop)", method=METHOD, assumption="translatable") from error
    nodes = [n for n in module.graph.nodes if n.op == "call_function" and n.target in aten_ops.VALUE_READS]
    if len(nodes) != len(recorder.reads):
        raise Unsupported(f"the capture recorded {len(recorder.reads)} tensor values read by Python but its graph has "
                          f"{len(nodes)}; the jax method cannot guard this forward", method=METHOD)
    reads = [Read(node, value, where, inside) for node, (value, where, inside) in zip(nodes, recorder.reads)]
    return Capture(module, names, len(inputs), reads, row)
