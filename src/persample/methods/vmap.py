"""`vmap`: torch.func's vmap over grad of the single-sample loss of a functional call.

Write the loss of one sample as a function of the parameters, differentiate it with `grad`, and
let `vmap` batch that over the samples; `chunk_size` bounds memory by batching chunks at a time.
What torch.func cannot batch (fused RNN kernels, custom autograd Functions without a vmap rule,
some ops under autocast) is found when preparing, by running the step on a few samples, and
refused naming the layer; buffers the forward updates get a copy per sample; sparse embeddings
run dense (the same gradient values). A Python branch on a tensor's value (`if mask.all():`, as
Hugging Face models' attention-mask helpers have), which vmap cannot batch, is answered where all
the samples batched together read the same value; where they differ, the samples are split by
that value and each group is batched again (`by_path`), so each takes the branch it takes alone.
An operation whose output shape depends on the values (nonzero, boolean-mask indexing) is refused
naming the module and the line.

    >>> import torch, persample
    >>> from persample.methods.vmap import VmapMethod
    >>> model = torch.nn.Linear(4, 3)
    >>> grads = persample.per_sample_grads(model, torch.randn(8, 4), torch.randint(3, (8,)), method=VmapMethod(chunk_size=4))
    >>> grads["bias"].shape
    torch.Size([8, 3])
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode

from .. import checks
from ..assumptions import BATCHING_RULES, MATCHES_DEFINITION
from ..batch import CallArgs
from ..capabilities import Capabilities, Finding, Refusal, refusal
from ..contract import Batch, LossFn, trainable_parameters
from ..observe import module_stack
from .base import Method

# torch.func has no batching rule for the fused RNN kernels; its generic fallback works only for
# the oneDNN float32 CPU LSTM kernel (nn.RNN and nn.GRU fail with a broadcast error, and so does
# every other dtype; CUDA's cuDNN RNN is not batched either). Measured with torch 2.13.
RNN_SUPPORTED = frozenset({(nn.LSTM, "cpu", torch.float32)})


def _unbatched_rnn(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Finding | None:
    for qualname, module in model.named_modules():
        if isinstance(module, nn.RNNBase) and (type(module), device.type, dtype) not in RNN_SUPPORTED:
            return Finding(
                f"has no vmap batching rule in torch.func for {type(module).__name__} in "
                f"{str(dtype).removeprefix('torch.')} on {device.type} (its generic fallback only works for "
                "nn.LSTM in float32 on the CPU)", qualname, module)
    return None


@contextmanager
def dense_embeddings(model: nn.Module) -> Iterator[None]:
    """Embedding(sparse=True) run with sparse=False: the same gradient, in a layout vmap batches."""
    sparse = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]
    for module in sparse:
        module.sparse = False
    try:
        yield
    finally:
        for module in sparse:
            module.sparse = True


def tensor_slots(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """(slots, names) for `model`'s parameters and buffers: `slots` maps one qualified name per
    (module, attribute) slot to the name `named_parameters()`/`named_buffers()` give the tensor it
    holds (its canonical name); `names` maps every qualified name (`remove_duplicate=False`) to it.

    A module registered under two names (`nn.Sequential(l, act, l)`, `self.b = self.a`) is one slot
    under two names: swapping a tensor into it once per name, as `functional_call(tie_weights=True)`
    does, restores the second name's swap last and leaves torch.func's tensor in the model in
    place of the Parameter. One tensor held by two modules (a tied embedding and output layer) is
    two slots with one canonical name: both get the same value, as tying requires."""
    canonical: dict[int, str] = {}
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        canonical.setdefault(id(tensor), name)
    slots: dict[str, str] = {}
    names: dict[str, str] = {}
    seen: set[tuple[int, str]] = set()
    for qualname, module in model.named_modules(remove_duplicate=False):
        for kind in (module._parameters, module._buffers):
            for local, tensor in kind.items():
                if tensor is None or id(tensor) not in canonical:
                    continue
                name = f"{qualname}.{local}" if qualname else local
                names[name] = canonical[id(tensor)]
                if (id(module), local) not in seen:
                    seen.add((id(module), local))
                    slots[name] = canonical[id(tensor)]
    return slots, names


def per_sample_function(model: nn.Module, loss_fn: LossFn, call: CallArgs, mutated: frozenset[str], chunk_size: int | None):
    """`f(params, call, targets) -> {name: (B, *shape)}`; buffers in `mutated` are copied per sample.
    Frozen parameters and buffers are read when called (their current values and dtypes). Each
    (module, attribute) slot is swapped once (`tensor_slots`), so a module registered under two
    names gets its parameters' gradients summed over its calls, as autograd gives them."""
    positional = [isinstance(a, torch.Tensor) for a in call.args]
    keywords = {k: isinstance(v, torch.Tensor) for k, v in call.kwargs.items()}
    layout: list[dict[str, str]] = [{}]  # the slots of the model as called: set by `run`

    def sample_loss(params, state, own_buffers, args, kwargs, target):
        one = CallArgs(
            tuple(a.unsqueeze(0) if batched else a for a, batched in zip(args, positional)),
            {k: v.unsqueeze(0) if keywords[k] else v for k, v in kwargs.items()},
        )
        values = {**params, **state, **own_buffers}
        swapped = {slot: values[name] for slot, name in layout[0].items() if name in values}
        outputs = functional_call(model, swapped, one.args, one.kwargs, tie_weights=False)
        return loss_fn(outputs, target.unsqueeze(0))[0]

    in_dims = (None, None, 0, tuple(0 if b else None for b in positional), {k: 0 if b else None for k, b in keywords.items()}, 0)
    batched = vmap(grad(sample_loss), in_dims=in_dims, chunk_size=chunk_size, randomness="different")
    unchunked = vmap(grad(sample_loss), in_dims=in_dims, randomness="different")
    reads_values = [False]  # set once the forward is seen to branch on a tensor's value

    def run(params, call: CallArgs, targets: torch.Tensor):
        batch = targets.shape[0]
        layout[0], names = tensor_slots(model)
        copied = {names[n] for n in mutated if n in names}  # the canonical names of buffers updated in place
        buffers = dict(model.named_buffers())
        state = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        state.update({n: b for n, b in buffers.items() if n not in copied})
        def own(size: int) -> dict[str, torch.Tensor]:
            return {n: buffers[n].unsqueeze(0).expand(size, *buffers[n].shape).clone() for n in copied if n in buffers}

        with dense_embeddings(model):
            if not reads_values[0]:
                try:
                    return batched(params, state, own(batch), call.args, call.kwargs, targets)
                except RuntimeError as error:
                    if not any(marker in str(error) for marker in _VALUE_READ):
                        raise
                    reads_values[0] = True
            return by_path(lambda rows: unchunked(params, state, own(len(rows)), *_rows(call, rows), targets[rows]),
                           batch, chunk_size)

    return run


def _rows(call: CallArgs, rows: list[int]) -> tuple[tuple, dict]:
    index = torch.tensor(rows)
    selected = call.map(lambda t: t[index.to(t.device)])
    return selected.args, selected.kwargs


class Divergent(Exception):
    """Raised inside vmap where the samples being batched read different values from a tensor."""

    def __init__(self, values: list) -> None:
        super().__init__("the samples read different values")
        self.values = values


_FUNCTORCH = torch._C._functorch


def _per_sample(tensor: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
    """(the plain tensor under torch.func's wrappers, with the vmapped dim first, whether it is batched),
    or None when more than one vmap level batches it (a vmap nested in the model)."""
    inner, bdims = tensor, []
    while _FUNCTORCH.maybe_get_level(inner) != -1:
        if _FUNCTORCH.is_batchedtensor(inner):
            bdims.append(_FUNCTORCH.maybe_get_bdim(inner))
        inner = _FUNCTORCH.get_unwrapped(inner)
    if len(bdims) > 1:
        return None
    return (inner.movedim(bdims[0], 0), True) if bdims else (inner, False)


def _hashable(value):
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


class _SamplesAlone(TorchFunctionMode):
    """Under vmap: answers a read of a tensor's value (`bool`, `.item()`, `int`, `float`, `.tolist()`,
    `torch.equal`) when every sample being batched reads the same value, which is then what each
    sample alone reads; raises `Divergent` with each sample's value otherwise."""

    READS: ClassVar[dict] = {torch.Tensor.__bool__: lambda t: bool(t.reshape(-1)[0]) if t.numel() == 1 else t.__bool__(),
                             torch.Tensor.item: lambda t: t.item(), torch.Tensor.__int__: lambda t: int(t),
                             torch.Tensor.__index__: lambda t: t.__index__(), torch.Tensor.__float__: lambda t: float(t),
                             torch.Tensor.tolist: lambda t: t.tolist()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.READS and isinstance(args[0], torch.Tensor) and _FUNCTORCH.maybe_get_level(args[0]) != -1:
            found = _per_sample(args[0])
            if found is not None:
                inner, batched = found
                with torch._C._DisableFuncTorch():
                    values = [self.READS[func](t) for t in inner] if batched else [self.READS[func](inner)]
                return _uniform(values)
        if func in (torch.equal, torch.Tensor.equal) and any(
                isinstance(a, torch.Tensor) and _FUNCTORCH.maybe_get_level(a) != -1 for a in args[:2]):
            found = [_per_sample(a) for a in args[:2]]
            if all(f is not None for f in found):
                (a, a_batched), (b, b_batched) = found
                size = a.shape[0] if a_batched else b.shape[0] if b_batched else 1
                with torch._C._DisableFuncTorch():
                    values = [torch.equal(a[i] if a_batched else a, b[i] if b_batched else b) for i in range(size)]
                return _uniform(values)
        return func(*args, **kwargs)


def _uniform(values: list):
    if len({_hashable(v) for v in values}) > 1:
        raise Divergent(values)
    return values[0]


def by_path(compute, batch: int, chunk_size: int | None) -> dict[str, torch.Tensor]:
    """`{name: (B, ...)}` from `compute(rows)` (vmap over those rows) run so that every read of a
    tensor's value is the same for all the rows batched together: the rows are split by the value
    where they differ (`Divergent`), and each group runs again, until every group reads alike.
    Each sample thus takes the branch it takes alone. Chunks of `chunk_size` rows at most."""
    pieces: list[tuple[list[int], dict[str, torch.Tensor]]] = []

    def solve(rows: list[int]) -> None:
        try:
            with _SamplesAlone():
                pieces.append((rows, compute(rows)))
        except Divergent as divergent:
            groups: dict = {}
            for row, value in zip(rows, divergent.values):
                groups.setdefault(_hashable(value), []).append(row)
            if len(groups) < 2:  # cannot happen (the values differ), but must never loop
                raise RuntimeError("vmap: data-dependent control flow the samples could not be grouped by") from None
            for group in groups.values():
                solve(group)

    step = chunk_size or batch
    for start in range(0, batch, step):
        solve(list(range(start, min(start + step, batch))))
    first = pieces[0][1]
    out = {name: values.new_empty(batch, *values.shape[1:]) for name, values in first.items()}
    for rows, grads in pieces:
        index = torch.tensor(rows, device=next(iter(grads.values())).device)
        for name, values in grads.items():
            out[name][index] = values
    return out


# vmap's own words for what it cannot batch because it depends on a tensor's values (torch 2.x):
# `.item()`, `bool(tensor)` (an `if` on a tensor) and operations whose output shape depends on the
# values (nonzero, boolean-mask indexing, masked_select).
_VALUE_READ = ("It looks like you're", "calling .item() on a Tensor", "data-dependent control flow")
_DYNAMIC_SHAPE = ("output dynamic shape", "support dynamic shape", "Attempted to vmap over `mask`")


def _innermost(model: nn.Module, stack: list[str]) -> tuple[str | None, nn.Module | None]:
    """(qualified name, module) of the innermost module being called (`module_stack`'s last entry,
    "name (Type)"), or (None, None) outside any module's forward."""
    if not stack:
        return None, None
    name = stack[-1].rsplit(" (", 1)[0]
    try:
        return name, model.get_submodule("" if name == "<root>" else name)
    except AttributeError:
        return name, None


def data_dependent_reason(error: BaseException) -> str | None:
    """The reason, in words, when `error` is vmap refusing to depend on a tensor's values; else None."""
    text = str(error)
    if not text.startswith("vmap:") and "vmap" not in text[:40]:
        return None
    if any(marker in text for marker in _VALUE_READ):
        return ("data-dependent control flow: a Python branch on a tensor's value (`if tensor:`, "
                "`bool(...)`, `.item()`, `.all()`/`.any()` tested in Python), which torch.func's vmap cannot "
                "batch, since each sample may take another branch")
    if any(marker in text for marker in _DYNAMIC_SHAPE):
        return ("an operation whose output shape depends on a tensor's values (nonzero, indexing with a "
                "boolean mask, masked_select), which torch.func's vmap cannot batch, since each sample may "
                "get another shape")
    return None


def source_line(error: BaseException) -> str:
    """`, at file:line in function: code` for the innermost frame of the traceback outside torch
    (the model's own code that read the value), or ''."""
    import linecache
    import os
    import traceback

    torch_dir = os.path.dirname(torch.__file__) + os.sep
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(torch_dir)
              and os.sep + "persample" + os.sep not in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    code = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
    path = frame.filename
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f", at {path}:{frame.lineno} in {frame.name}" + (f" (`{code[:120]}`)" if code else "")


class VmapMethod(Method):
    """`vmap`: torch.func's vmap(grad(loss of one sample)) over a functional call; `chunk_size` bounds memory
    by batching that many samples at a time.
    """

    capabilities = Capabilities(
        name="vmap",
        summary="torch.func: vmap(grad(loss of one sample)) over a functional call",
        relies_on=(BATCHING_RULES.id, MATCHES_DEFINITION.id),
        refusals=(Refusal(BATCHING_RULES.id, "nn.RNN and nn.GRU; nn.LSTM except float32 on the CPU", _unbatched_rnn),),
        notes="Also refused when found on the example batch: operations torch.func cannot batch here "
        "(custom autograd Functions without setup_context or a vmap rule, some ops under autocast, "
        "operations whose output shape depends on the values). Python branches on tensor values are "
        "batched per group of samples reading the same value.",
    )
    takes_call_args = True

    def __init__(self, chunk_size: int | None = None) -> None:
        self.chunk_size = chunk_size

    def _prepare(self, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        return self._step(model, loss_fn, example_batch[0], frozenset())

    def _step(self, model: nn.Module, loss_fn: LossFn, call: CallArgs, mutated: frozenset[str]):
        trainable = trainable_parameters(model)
        run = per_sample_function(model, loss_fn, call, mutated, self.chunk_size)

        def step(call: CallArgs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            return run({n: p.detach() for n, p in trainable.items()}, call, targets)

        return step

    def _build(self, context: checks.CheckContext, model: nn.Module, loss_fn: LossFn, example_batch: Batch):
        """The step, tried on a few samples in the model's own dtype and autocast state: torch.func's
        errors become refusals naming the layer."""
        call, targets = example_batch
        step = self._step(model, loss_fn, call, context.mutated_buffers)
        rows = torch.tensor(context.rows, device=targets.device)
        self._try(step, model, call.select(rows), targets[rows], context)
        return step

    def _try(self, step, model: nn.Module, call: CallArgs, targets: torch.Tensor, context: checks.CheckContext):
        with module_stack(model) as stack:
            try:
                return step(call, targets)
            except (RuntimeError, NotImplementedError, TypeError, ValueError, AssertionError) as error:
                where = stack[-1] if stack else "the loss function or the backward pass (outside any module's forward)"
                data_dependent = data_dependent_reason(error)
                if data_dependent is not None:
                    qualname, module = _innermost(model, stack)
                    raise refusal(Finding(f"has, in its forward{source_line(error)}, {data_dependent}", qualname, module),
                                  BATCHING_RULES.id, self.name) from None
                first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
                functions = context.observation().autograd_functions
                extra = f" (the forward applies the custom autograd Function {', '.join(functions)})" if functions else ""
                autocast = " under autocast" if torch.is_autocast_enabled(next(model.parameters()).device.type) else ""
                raise refusal(Finding(
                    f"torch.func cannot batch this model{autocast}: in {where}{extra}, torch raised "
                    f"{type(error).__name__}: {first}"), BATCHING_RULES.id, self.name) from None

    def _self_check(self, context: checks.CheckContext, raw) -> None:
        per_sample = self._try(raw, context.model, context.check_call, context.check_targets, context)
        checks.definition_check(context, per_sample)
