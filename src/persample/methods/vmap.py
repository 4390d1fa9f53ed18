"""`vmap`: torch.func's vmap over grad of the single-sample loss of a functional call.

Write the loss of one sample as a function of the parameters, differentiate it with `grad`, and
let `vmap` batch that over the samples; `chunk_size` bounds memory by batching chunks at a time.
What torch.func cannot batch (fused RNN kernels, custom autograd Functions without a vmap rule,
some ops under autocast) is found when preparing, by running the step on a few samples, and
refused naming the layer; buffers the forward updates get a copy per sample; sparse embeddings
run dense (the same gradient values).

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

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

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

    def run(params, call: CallArgs, targets: torch.Tensor):
        batch = targets.shape[0]
        layout[0], names = tensor_slots(model)
        copied = {names[n] for n in mutated if n in names}  # the canonical names of buffers updated in place
        buffers = dict(model.named_buffers())
        state = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        state.update({n: b for n, b in buffers.items() if n not in copied})
        own = {n: buffers[n].unsqueeze(0).expand(batch, *buffers[n].shape).clone() for n in copied if n in buffers}
        with dense_embeddings(model):
            return batched(params, state, own, call.args, call.kwargs, targets)

    return run


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
        "(custom autograd Functions without setup_context or a vmap rule, some ops under autocast).",
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
