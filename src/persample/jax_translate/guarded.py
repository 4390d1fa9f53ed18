"""Captured paths as JAX programs, each guarded by the values its branches read.

`capture` records the ATen graph of one sample's path. Here it becomes the same `Translation` the
torch.fx path makes (a `Program` over the weights, trainable ones differentiated, the sample as a
batch of one), so the step is `jax.jit(jax.vmap(jax.value_and_grad(loss of one sample)))` as
before (`compiled.per_sample_gradients`). Each operation's result is cast to the dtype torch
gave it, and its shape checked against torch's, while JAX traces.

Each value the path read (`capture.Read`) becomes a guard: the part of the graph computing the
tested tensor, translated too and vmapped over the batch, gives each sample's value, which must
equal the value the path was recorded with. The example batch is covered path by path: a sample
whose values differ from every path recorded so far is captured itself, up to `MAX_PATHS`
paths. A call then evaluates every path's guards first and gives each sample the path it takes
(the gradient each sample alone would produce, whichever branch it takes); a sample that takes a
path never recorded raises `StaleStep`, so `per_sample_grads` prepares again on that batch. No
gradient is computed on a path its sample does not take.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import fx, nn

from ..assumptions import MATCHES_DEFINITION, TRANSLATABLE
from ..batch import CallArgs
from ..contract import LossFn, trainable_parameters
from ..errors import StaleStep, Unsupported
from . import aten as aten_ops
from .capture import MODULE, WHERE, Capture, Read, capture
from .compiled import ROUND_LIKE_TORCH, per_sample_gradients
from .program import Op, Program, Slot, Weight, template_of
from .step import jax_backend_problem, matmul_precision, needs_x64, to_jax, to_torch
from .tensors import canonical
from .translation import Translation

METHOD = "jax"
MAX_PATHS = 8
"""At most this many paths per prepared step: a branch on a value that differs for almost every
sample (a float read with .item()) is refused rather than compiled once per sample."""


@dataclass(frozen=True)
class Out:
    """What torch computed for a node: a tensor's shape and dtype."""

    shape: tuple
    dtype: torch.dtype


def expected(value):
    """The `Out` structure of a node's recorded value (tensors, sequences of them, Python values)."""
    if isinstance(value, torch.Tensor):
        return Out(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return tuple(expected(v) for v in value)
    return value


def conform(result, spec, op: str):
    """`result` cast to torch's dtype, its shape checked (a missing output made as zeros)."""
    if isinstance(spec, Out):
        if result is None:
            return jnp.zeros(spec.shape, canonical(spec.dtype))
        result = jnp.asarray(result)
        if tuple(result.shape) != spec.shape:
            raise Unsupported(f"the JAX translation of {op} gave shape {tuple(result.shape)} where torch gave "
                              f"{spec.shape}; the jax method cannot run this operation here", method=METHOD)
        dtype = canonical(spec.dtype)
        return result if result.dtype == dtype else result.astype(dtype)
    if isinstance(spec, tuple):
        return type(result)(conform(r, s, op) for r, s in zip(result, spec)) if isinstance(result, (tuple, list)) \
            else tuple(conform(None, s, op) for s in spec)
    return spec if result is None else result


def run_aten(*args, impl, spec, op, **kwargs):
    """One ATen operation: `impl(*args, **kwargs)`, conformed to what torch computed (`spec`)."""
    return conform(impl(*args, **kwargs), spec, op)


def located(node: fx.Node) -> str:
    """`<module> at <line>` for a captured node, as far as known."""
    module, where = node.meta.get(MODULE), node.meta.get(WHERE)
    parts = ([f"in {module}"] if module else []) + ([f"at {where}"] if where else [])
    return ", ".join(parts) or "in the loss function or the model"


def refuse_op(node: fx.Node, why: str) -> Unsupported:
    """The refusal of one captured operation, naming it and where it was called."""
    module = node.meta.get(MODULE)
    return Unsupported(f"{op_name(node.target)} ({located(node)}) {why}", method=METHOD,
                       layer=module.rsplit(" (", 1)[-1].rstrip(")") if module else op_name(node.target),
                       assumption=TRANSLATABLE.id)


def op_name(target) -> str:
    """`aten.<name>` of an operator."""
    return "aten." + str(target).removeprefix("aten.").split(".")[0] if "aten" in str(target) else str(target)


class AtenTranslator:
    """Turns a `Capture` into `Program`s: the loss, and the values its guards test."""

    def __init__(self, captured: Capture, trainable: set[str], weights: dict[str, torch.Tensor]) -> None:
        self.captured = captured
        self.trainable = trainable
        self.weights = weights
        self.constants: dict[str, torch.Tensor] = {}
        nodes = list(captured.graph.nodes)
        self.placeholders = [n for n in nodes if n.op == "placeholder"]
        self.order = {n: i for i, n in enumerate(nodes)}
        self.check_mutations(nodes)

    def check_mutations(self, nodes: list[fx.Node]) -> None:
        """A forward that writes into a trainable parameter cannot be differentiated as a function of it."""
        names = dict(zip(self.placeholders, self.captured.weights))
        for node in nodes:
            if node.op == "call_function" and str(node.target).startswith("aten.copy_") and node.args[0] in names:
                name = names[node.args[0]]
                if name in self.trainable:
                    raise refuse_op(node, f"writes into the trainable parameter {name} in place; the jax method "
                                    "treats parameters as immutable inputs")

    def needed(self, roots) -> list[fx.Node]:
        """The call and attribute nodes `roots` depend on, in graph order."""
        seen: set[fx.Node] = set()
        todo = _nodes(roots)
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            todo.extend(node.all_input_nodes)
        return sorted((n for n in seen if n.op in ("call_function", "get_attr")), key=self.order.__getitem__)

    def program(self, output) -> Program:
        """The `Program` computing `output` (a structure of graph nodes) from the sample's inputs."""
        refs: dict[fx.Node, Slot | Weight] = {}
        n_weights = len(self.captured.weights)
        for i, node in enumerate(self.placeholders):
            refs[node] = Weight(self.captured.weights[i]) if i < n_weights else Slot(i - n_weights)
        n_inputs = len(self.placeholders) - n_weights
        ops = []
        for node in self.needed(output):
            if node.op == "get_attr":
                key = f"<captured {node.target}>"
                value = getattr(self.captured.module, node.target)
                if not isinstance(value, torch.Tensor):  # e.g. a torch.Generator the forward draws from
                    raise Unsupported(f"the forward reads {type(value).__name__} {node.target!r} ({located(node)}), which "
                                      "has no JAX translation (random numbers drawn in torch cannot be drawn again "
                                      "per sample in JAX); use vmap or loop", method=METHOD, assumption=TRANSLATABLE.id)
                self.constants[key] = value.detach()
                refs[node] = Weight(key)
                continue
            refs[node] = Slot(n_inputs + len(ops))
            ops.append(Op(f"{node.name} ({op_name(node.target)}, {located(node)})", self.impl(node),
                          template_of(tuple(node.args), refs), tuple((k, template_of(v, refs)) for k, v in node.kwargs.items()),
                          n_inputs + len(ops)))
        return Program(n_inputs, tuple(ops), template_of(output, refs))

    def impl(self, node: fx.Node):
        """The JAX implementation of one call node; raises `Unsupported` naming what cannot be translated."""
        target = node.target
        if target is operator.getitem:
            return operator.getitem
        shape_why = aten_ops.data_dependent_shape(target)
        if shape_why is not None:
            raise refuse_op(node, f"{shape_why}: its output shape depends on the values, and one compiled program has "
                            "static shapes; use a torch method (loop, or vmap where it batches)")
        if str(target).startswith(("aten.index.", "aten.index_put")):
            indices = node.args[1] if len(node.args) > 1 else []
            for index in indices:
                value = index.meta.get("val") if isinstance(index, fx.Node) else None
                if value is not None and value.dtype == torch.bool and not str(target).startswith("aten.index_put"):
                    raise refuse_op(node, "indexes with a boolean mask (x[mask]): its output shape depends on the "
                                    "values; use torch.where or masked_fill, or a torch method (loop)")
        impl = aten_ops.lookup(target)
        if impl is None and aten_ops.random(target):  # the translated ones refuse a random draw themselves
            raise refuse_op(node, "draws random numbers, which cannot match torch's draws; put the model in eval mode "
                            "(model.eval()) so that dropout is the identity")
        if impl is None:
            raise refuse_op(node, f"has no JAX translation; the jax method translates {len(aten_ops.ATEN)} ATen "
                            "operators (see persample.jax_translate.aten)")
        return functools.partial(run_aten, impl=impl, spec=expected(node.meta.get("val")), op=op_name(target))


def _nodes(structure) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(structure, lambda n: found.append(n) or n)
    return found


def read_roots(reads: list[Read]):
    """The graph values the guards compute: the tested tensor of each read (both of torch.equal's)."""
    return tuple(tuple(r.node.args[:2]) if r.node.target == torch.ops.aten.equal.default else r.node.args[0]
                 for r in reads)


def read_value(read: Read, value):
    """The Python value a read hands over, from the guard's tensor(s) of one sample."""
    if read.node.target == torch.ops.aten.equal.default:
        a, b = value
        return jnp.array_equal(a, b) if a.shape == b.shape else jnp.asarray(False)
    if read.node.target == torch.ops.aten.is_nonzero.default:
        return value.reshape(()) != 0
    return value.reshape(())


@dataclass
class Arrays:
    """One call's JAX arrays: trainable weights, the model's other weights, the inputs, the targets."""

    trainable: dict
    constants: dict
    inputs: tuple
    targets: object


@dataclass
class Path:
    """One captured path: its `Translation`, its guards' jitted function and the values they must give."""

    translation: Translation
    reads: list[Read]
    values: tuple
    guard: object | None
    row: int
    own: dict | None = None  # its captured constants as JAX arrays, made on first use

    def matches(self, found: tuple[np.ndarray, ...]) -> np.ndarray:
        """(B,) whether each sample's guard values are this path's."""
        batch = found[0].shape[0] if found else 0
        ok = np.ones(batch, bool)
        for value, want in zip(found, self.values):
            ok &= np.asarray(value) == np.asarray(want)
        return ok


def guard_function(program: Program, reads: list[Read]):
    """`f(weights, inputs, targets) -> tuple of (B,) values`: each read's value for each sample."""
    def one(weights, inputs, target):
        tested = program.run(weights, *(x[None] for x in inputs), target[None])
        return tuple(read_value(r, v) for r, v in zip(reads, tested))
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)), compiler_options=ROUND_LIKE_TORCH)


class GuardedStep:
    """`step(inputs, targets) -> {name: (B, *param.shape)}` over the captured paths of a model."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, call: CallArgs, targets: torch.Tensor, device: torch.device,
                 optimize: bool = True) -> None:
        problem = jax_backend_problem(device)
        if problem:
            raise Unsupported(problem, method=METHOD)
        self.model, self.loss_fn, self.device, self.optimize = model, loss_fn, device, optimize
        self.trainable = trainable_parameters(model)
        self.weights = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        from .tracing import tensor_inputs

        inputs = tensor_inputs(call)
        self.x64 = needs_x64([*self.weights.values(), *inputs, targets])
        self.precision = matmul_precision(self.trainable.values())
        self.paths: list[Path] = []
        self.cover(call, targets, inputs)

    # -- preparing -----------------------------------------------------------------------------

    def cover(self, call: CallArgs, targets: torch.Tensor, inputs) -> None:
        """Capture paths until every sample of the example batch takes one of them."""
        left = list(range(targets.shape[0]))
        while left:
            if len(self.paths) == MAX_PATHS:
                read = varying_read(self.paths)
                what = f" ({read.describe()} differs between them)" if read else ""
                raise Unsupported(
                    f"the samples of the example batch take more than {MAX_PATHS} paths through the forward's Python "
                    f"branches on tensor values{what}; the jax method compiles one program per path. Branch on fewer "
                    "distinct values (torch.where instead of .item()), or use a torch method (loop)",
                    method=METHOD, assumption=TRANSLATABLE.id)
            row = left[0]
            path = self.path(capture(self.model, self.loss_fn, call, targets, row, self.weights), row)
            self.paths.append(path)
            with self.scope():
                taken = self.assign(self.arrays(inputs, targets))
            if taken[row] < 0:
                mismatched = self.describe_mismatch(path, inputs, targets, row)
                raise Unsupported(
                    f"the jax translation computes {mismatched} differently from torch on sample {row} (so it would take "
                    "another branch); use a torch method (loop)", method=METHOD, assumption=TRANSLATABLE.id)
            left = [r for r in left if taken[r] < 0]

    def path(self, captured: Capture, row: int) -> Path:
        """The `Path` of one capture: the loss program, the guard program and the values read."""
        translator = AtenTranslator(captured, set(self.trainable), self.weights)
        output = next(n for n in captured.graph.nodes if n.op == "output").args[0]
        program = translator.program(output)
        guard = None
        if captured.reads:
            guard = guard_function(translator.program(read_roots(captured.reads)), captured.reads)
        constants = {n: t.detach() for n, t in self.weights.items() if n not in self.trainable}
        constants.update(translator.constants)
        translation = Translation(program, dict(self.trainable), constants)
        values = tuple(_python(r.value) for r in captured.reads)
        return Path(translation, captured.reads, values, guard, row)

    def describe_mismatch(self, path: Path, inputs, targets, row: int) -> str:
        """Which read of `path` JAX computes otherwise than torch did on the row it was captured on."""
        with self.scope():
            found = self.guard_values(path, self.arrays(inputs, targets))
        for read, value, want in zip(path.reads, found, path.values):
            if np.asarray(value)[row] != want:
                return f"{read.describe()} as {np.asarray(value)[row]!r} where torch read {want!r}"
        return "a tested value"

    # -- calling -------------------------------------------------------------------------------

    def scope(self):
        """JAX's x64 mode and matmul precision for this step's arrays."""
        from contextlib import ExitStack

        stack = ExitStack()
        stack.enter_context(jax.enable_x64(self.x64))
        stack.enter_context(jax.default_matmul_precision(self.precision))
        return stack

    def arrays(self, inputs, targets) -> Arrays:
        """JAX views (zero-copy) of the weights, the inputs and the targets, made once per call (in `scope`)."""
        x64 = self.x64
        return Arrays({n: to_jax(p, x64) for n, p in self.trainable.items()},
                      {n: to_jax(t, x64) for n, t in self.weights.items() if n not in self.trainable},
                      tuple(to_jax(x, x64) for x in inputs), to_jax(targets, x64))

    def constants(self, path: Path, arrays: Arrays) -> dict:
        """The path's constants: the model's frozen weights and buffers, and what its capture holds."""
        if path.own is None:  # captured values, fixed when prepared: converted once
            path.own = {n: to_jax(t, self.x64) for n, t in path.translation.constants.items() if n not in self.weights}
        return {**arrays.constants, **path.own}

    def guard_values(self, path: Path, arrays: Arrays) -> tuple:
        """Each read's value for each sample, on `path`'s guard function: (B,) arrays."""
        return jax.device_get(path.guard({**self.constants(path, arrays), **arrays.trainable}, arrays.inputs,
                                         arrays.targets))

    def assign(self, arrays: Arrays) -> np.ndarray:
        """(B,) the index of the path each sample takes, -1 where none (paths tried in order, each only
        while some sample has none)."""
        batch = arrays.targets.shape[0]
        taken = np.full(batch, -1)
        for k, path in enumerate(self.paths):
            if (taken >= 0).all():
                break
            ok = np.ones(batch, bool) if path.guard is None else path.matches(self.guard_values(path, arrays))
            taken[(taken < 0) & ok] = k
        return taken

    def stale(self, taken: np.ndarray, arrays: Arrays) -> StaleStep:
        """The `StaleStep` for the first sample no path takes, naming the read whose value changed."""
        sample = int(np.flatnonzero(taken < 0)[0])
        path = self.paths[0]
        detail = ""
        for read, value, want in zip(path.reads, self.guard_values(path, arrays), path.values):
            now = np.asarray(value)[sample]
            if now != want:
                detail = f": {read.describe()} is {now.item()!r}, where the paths prepared read {want!r}"
                break
        return StaleStep(
            f"sample {sample} of this batch takes a path through the forward's Python branches that the step was not "
            f"prepared for{detail}. Prepare again on this batch (per_sample_grads does so by itself)", method=METHOD,
            assumption=MATCHES_DEFINITION.id)

    def __call__(self, inputs: tuple, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.scope():
            arrays = self.arrays(inputs, targets)
            taken = self.assign(arrays)
            if (taken < 0).any():
                raise self.stale(taken, arrays)
            used = sorted(set(taken.tolist()))
            if len(used) == 1:
                return self.compute(self.paths[used[0]], arrays, None)
            grads = {n: torch.empty(targets.shape[0], *p.shape, dtype=p.dtype, device=self.device)
                     for n, p in self.trainable.items()}
            for k in used:
                rows = np.flatnonzero(taken == k)
                index = torch.as_tensor(rows, device=self.device)
                for name, grad in self.compute(self.paths[k], arrays, rows).items():
                    grads[name][index] = grad[: len(rows)].to(grads[name].dtype)
            return grads

    def compute(self, path: Path, arrays: Arrays, rows: np.ndarray | None) -> dict[str, torch.Tensor]:
        """The path's per-sample gradients for `rows` (all samples when None), padded to a power of two
        (by repeating the first row) so that few batch sizes are compiled."""
        inputs, targets = arrays.inputs, arrays.targets
        if rows is not None:
            size = min(targets.shape[0], 1 << int(np.ceil(np.log2(len(rows)))))
            index = jnp.asarray(np.concatenate([rows, np.full(size - len(rows), rows[0])]))
            inputs, targets = tuple(jnp.take(x, index, axis=0) for x in inputs), jnp.take(targets, index, axis=0)
        gradients = per_sample_gradients(path.translation, self.optimize)
        losses, grads = gradients(arrays.trainable, self.constants(path, arrays), inputs, targets)
        grads = jax.block_until_ready(grads)
        finite = np.isfinite(np.asarray(losses))
        if rows is not None:
            finite = finite[: len(rows)]
        if not finite.all():
            bad = np.flatnonzero(~finite)
            samples = (rows[bad] if rows is not None else bad).tolist()
            raise ValueError(
                f"the jax step computed a non-finite loss for samples {samples[:10]}: JAX does not raise on an "
                "index out of range (a target class or token id beyond its table), it computes NaN there, where "
                "torch raises IndexError; check those samples' indices (or the model's loss is not finite for them)")
        return {name: to_torch(grads[name], self.device) for name in self.trainable}


def varying_read(paths: list[Path]) -> Read | None:
    """The first read whose value differs between the paths (the first read when none does)."""
    first = paths[0].reads
    for i, read in enumerate(first):
        if len({p.values[i] for p in paths if len(p.values) > i}) > 1:
            return read
    return first[0] if first else None


def _python(value):
    """A read's value as a plain Python scalar."""
    return value.item() if hasattr(value, "item") else value
