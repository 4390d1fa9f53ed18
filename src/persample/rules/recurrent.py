"""RNN (tanh, relu), GRU, LSTM. Indices: n batch (the sample), t step, g gate rows (gates × hidden),
i a layer's input features, h hidden (p the projection's size, LSTM's proj_size, else h).

Each layer and direction runs, per step and sample, gates_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
(GRU keeps the hidden part of its candidate apart: n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)));
torch's gate order is RNN (1), GRU (r, z, n), LSTM (i, f, g, o), and LSTM with proj_size projects
h_t = W_hr (o ⊙ tanh c_t). No weight is shared between samples, so sample n's gradient is that of
its own unrolled recurrence (Werbos 1990, backpropagation through time), and each weight's is a sum
of outer products over the steps (Goodfellow 2015):

    gW_ih[n] = Σ_t ∂gates[n,t] ⊗ x[n,t]      gb_ih[n] = Σ_t ∂gates[n,t]
    gW_hh[n] = Σ_t ∂hgates[n,t] ⊗ h[n,t-1]   gb_hh[n] = Σ_t ∂hgates[n,t]
    gW_hr[n] = Σ_t ∂h[n,t] ⊗ (o ⊙ tanh c)[n,t]

with ∂hgates = ∂gates except GRU's candidate rows, ∂n_pre ⊙ r. `expanded_forward` unrolls the
layer over time with per-sample weights; when they are the stride-0 copies expand and
`grad_sample` make (one weight shared by every sample), it runs one shared matrix product per step
and its backward is the one backward through time of the batch, followed by one batched product
per weight over all steps for the formulas above (`SharedRecurrence`). That is the rule's
`grad_sample` too: it measured 2 to 20 times faster than a loop over samples calling the layer
through `torch.func.functional_call` (B=32, T=20, hidden 64 on a 2-core CPU; see `grad_sample`).

`grad_out` is the tuple the layer returns, holding gradients or None: (∂output, ∂h_n), for LSTM
(∂output, (∂h_n, ∂c_n)); h_n and c_n are (layers·directions, n, ·) whatever batch_first says.

Refused: dropout between layers in training mode (`applies`: its masks cannot be drawn again), and
a PackedSequence or unbatched (2-D) input (`refuses_input`: the per-sample sequence lengths, or no
sample dimension).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..layers import LayerInput
from .attention import grad_batch_by_autograd, grad_sample_by_autograd
from .registry import LayerFlops, register_rule

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
MAX_LAYERS = 16
"""The rule's `params` name the weights of this many layers (more: `applies` refuses the module)."""


def layer_names(layer: int, reverse: bool) -> dict[str, str]:
    """{role: parameter name} of one layer and direction, as torch names them (`_flat_weights_names`):
    w_ih, w_hh, b_ih, b_hh, w_hr."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    return {"w_ih": f"weight_ih{suffix}", "w_hh": f"weight_hh{suffix}", "b_ih": f"bias_ih{suffix}",
            "b_hh": f"bias_hh{suffix}", "w_hr": f"weight_hr{suffix}"}


def recurrent_params(layers: int = MAX_LAYERS) -> tuple[str, ...]:
    """Every name a recurrent layer of up to `layers` layers can own, both directions, with biases
    and projections (a module owns a subset: `module._flat_weights_names`)."""
    return tuple(name for layer in range(layers) for reverse in (False, True)
                 for name in layer_names(layer, reverse).values())


class Spec(NamedTuple):
    """What the unrolled forward needs to know of the module."""

    mode: str
    layers: int
    directions: int
    hidden: int
    proj: int
    dropout: float  # between layers, 0 unless in training mode

    @classmethod
    def of(cls, module: nn.RNNBase) -> Spec:
        """The spec of `module` as it is now (training mode decides the dropout)."""
        return cls(module.mode, module.num_layers, 2 if module.bidirectional else 1, module.hidden_size,
                   module.proj_size, module.dropout if module.training and module.num_layers > 1 else 0.0)

    @property
    def out(self) -> int:
        """The width of h: proj_size when there is a projection, else hidden_size."""
        return self.proj or self.hidden


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (n, t, i) or (n, i) through a shared (o, i) weight or per-sample (n, o, i) ones, plus bias
    ((o,) or (n, o))."""
    if weight.dim() == 2:
        out = torch.matmul(x, weight.t())
    elif x.dim() == 3:
        out = torch.einsum("nti,noi->nto", x, weight)
    else:
        out = torch.bmm(weight, x.unsqueeze(2)).squeeze(2)
    if bias is None:
        return out
    return out + (bias.unsqueeze(1) if bias.dim() == 2 and x.dim() == 3 else bias)


class Record(NamedTuple):
    """What one layer and direction of a shared-weight forward keeps for its weights' gradients."""

    names: dict[str, str]
    x: torch.Tensor  # the layer's input (n, T, i), detached
    gates: torch.Tensor  # W_ih x + b_ih (n, T, g), differentiated
    h_prev: torch.Tensor  # h_{t-1} (n, T, p) in the order of time, detached
    reset: torch.Tensor | None  # GRU: r (n, T, h), detached
    hs: list[torch.Tensor]  # LSTM with proj_size: each step's projected h, differentiated
    unprojected: torch.Tensor | None  # LSTM with proj_size: o ⊙ tanh c (n, T, h), detached


def unrolled(spec: Spec, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None,
             weights: Mapping[str, torch.Tensor], record: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[Record]]:
    """(output (n, T, directions·p), h_n, c_n or None, records): the recurrence on x (n, T, i)
    from h0 (layers·directions, n, p) and c0, as torch computes it step by step (its cells'
    formulas: GRU's h' = (h − n) z + n, LSTM's c' = f c + i g). `weights[name]` is shared (2-D or
    1-D, the parameter's shape) or per sample (n, *shape). With `record` (shared weights), each
    layer's input gates are made a tensor to differentiate and the rest kept, as `Record`s."""
    records: list[Record] = []
    h_n, c_n = [], []
    for layer in range(spec.layers):
        if layer and spec.dropout:
            x = F.dropout(x, p=spec.dropout, training=True)
        outputs = []
        for direction in range(spec.directions):
            names = layer_names(layer, bool(direction))
            w = {role: weights.get(name) for role, name in names.items()}
            index = layer * spec.directions + direction
            h = h0[index]
            c = c0[index] if c0 is not None else None
            gates = _linear(x, w["w_ih"], w["b_ih"])
            if record and not gates.requires_grad:
                gates.requires_grad_()
            steps = gates.unbind(1)
            order = range(len(steps) - 1, -1, -1) if direction else range(len(steps))
            out: list[Any] = [None] * len(steps)
            prev: list[Any] = [None] * len(steps)
            resets: list[Any] = [None] * len(steps)
            unprojected: list[Any] = [None] * len(steps)
            for t in order:
                prev[t] = h
                hgates = _linear(h, w["w_hh"], w["b_hh"])
                if spec.mode == "LSTM":
                    i, f, g, o = (steps[t] + hgates).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    if spec.proj:
                        unprojected[t] = h
                        h = _linear(h, w["w_hr"], None)
                elif spec.mode == "GRU":
                    ir, iz, i_n = steps[t].chunk(3, 1)
                    hr, hz, h_n_ = hgates.chunk(3, 1)
                    r = torch.sigmoid(ir + hr)
                    z = torch.sigmoid(iz + hz)
                    candidate = torch.tanh(i_n + r * h_n_)
                    h = (h - candidate) * z + candidate
                    resets[t] = r
                else:
                    pre = steps[t] + hgates
                    h = torch.tanh(pre) if spec.mode == "RNN_TANH" else torch.relu(pre)
                out[t] = h
            outputs.append(torch.stack(out, 1))
            h_n.append(h)
            if c is not None:
                c_n.append(c)
            if record:
                records.append(Record(
                    names, x.detach(), gates, torch.stack(prev, 1).detach(),
                    torch.stack(resets, 1).detach() if spec.mode == "GRU" else None,
                    out if spec.proj else [],
                    torch.stack(unprojected, 1).detach() if spec.proj else None))
        x = torch.cat(outputs, 2) if len(outputs) > 1 else outputs[0]
    return x, torch.stack(h_n), (torch.stack(c_n) if c_n else None), records


def _outer(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_t g[n, t] ⊗ x[n, t]: (n, o, i) from g (n, T, o) and x (n, T, i)."""
    return torch.bmm(g.transpose(1, 2), x)


def weight_gradients(spec: Spec, record: Record, d_gates: torch.Tensor, d_hs: Sequence[torch.Tensor | None],
                     wanted: Collection[str]) -> dict[str, torch.Tensor]:
    """{name: (n, *shape)} for the names in `wanted` of one layer and direction, from ∂gates
    (n, T, g), the gradient of its input gates, and for a projection each step's ∂h: the formulas
    of the module's docstring, one batched product per weight over all steps."""
    names, grads = record.names, {}
    d_hidden = d_gates
    if spec.mode == "GRU":  # the candidate's hidden part is scaled by r before it joins the gates
        hidden = spec.hidden
        d_hidden = torch.cat([d_gates[..., : 2 * hidden], d_gates[..., 2 * hidden:] * record.reset], dim=2)
    if names["w_ih"] in wanted:
        grads[names["w_ih"]] = _outer(d_gates, record.x)
    if names["b_ih"] in wanted:
        grads[names["b_ih"]] = d_gates.sum(1)
    if names["w_hh"] in wanted:
        grads[names["w_hh"]] = _outer(d_hidden, record.h_prev)
    if names["b_hh"] in wanted:
        grads[names["b_hh"]] = d_hidden.sum(1)
    if names["w_hr"] in wanted:
        d_h = torch.stack([g if g is not None else torch.zeros_like(h) for g, h in zip(d_hs, record.hs)], 1)
        grads[names["w_hr"]] = _outer(d_h, record.unprojected)
    return grads


class SharedRecurrence(torch.autograd.Function):
    """(output, h_n[, c_n]) of the unrolled recurrence for weights given as stride-0 (n, *shape)
    copies of one tensor each: the forward runs one shared matrix product per step (`unrolled` on
    weight[0]); the backward is one backward through time of that forward followed by the
    per-sample weight gradients as batched products over the steps (`weight_gradients`), instead
    of a (n, *shape) gradient per step summed by autograd. Under create_graph the backward is the
    per-sample unrolled forward's own, differentiable in each sample's weights."""

    @staticmethod
    def forward(ctx, spec: Spec, names: tuple[str, ...], x: torch.Tensor, h0: torch.Tensor,
                c0: torch.Tensor | None, *weights: torch.Tensor):
        ctx.spec, ctx.names = spec, names
        ctx.save_for_backward(x, h0, c0, *weights)
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(needs) if t is not None else None
                      for t, needs in zip((x, h0, c0), ctx.needs_input_grad[2:5])]
            shared = {name: w[0].detach() for name, w in zip(names, weights)}
            output, h_n, c_n, records = unrolled(spec, *leaves, shared, record=True)
        ctx.inner = (leaves, (output, h_n, c_n), records)
        results = (output.detach(), h_n.detach())
        return results + ((c_n.detach(),) if c_n is not None else ())

    @staticmethod
    def backward(ctx, *grads_out):
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the per-sample forward instead
            return (None, None) + _per_sample_backward(ctx.spec, ctx.names, saved, grads_out, ctx.needs_input_grad[2:])
        (leaves, outputs, records), spec = ctx.inner, ctx.spec
        wanted = {name for name, needs in zip(ctx.names, ctx.needs_input_grad[5:]) if needs}
        pairs = [(o, g) for o, g in zip(outputs, grads_out) if o is not None and g is not None]
        inputs = [t for t, needs in zip(leaves, ctx.needs_input_grad[2:5]) if t is not None and needs]
        differentiated = [r.gates for r in records] + [h for r in records for h in r.hs]
        grads = torch.autograd.grad([o for o, _ in pairs], inputs + differentiated, [g for _, g in pairs],
                                    allow_unused=True) if pairs else [None] * (len(inputs) + len(differentiated))
        input_grads = iter(grads[: len(inputs)])
        d_gates = grads[len(inputs): len(inputs) + len(records)]
        d_hs = iter(grads[len(inputs) + len(records):])
        per_sample: dict[str, torch.Tensor] = {}
        for record, d in zip(records, d_gates):
            steps = [next(d_hs) for _ in record.hs]
            if d is None:
                d = torch.zeros_like(record.gates)
            per_sample.update(weight_gradients(spec, record, d, steps, wanted))
        ctx.inner = None
        first = tuple(next(input_grads) if t is not None and needs else None
                      for t, needs in zip(leaves, ctx.needs_input_grad[2:5]))
        return (None, None) + first + tuple(per_sample.get(name) for name in ctx.names)


def _per_sample_backward(spec: Spec, names: tuple[str, ...], saved: Sequence[torch.Tensor | None],
                         grads_out: Sequence[torch.Tensor | None], needs: Sequence[bool]) -> tuple:
    """The gradients of `SharedRecurrence`'s inputs through the per-sample unrolled forward, as a
    graph (for create_graph)."""
    x, h0, c0, *weights = saved
    output, h_n, c_n, _ = unrolled(spec, x, h0, c0, dict(zip(names, weights)))
    pairs = [(o, g) for o, g in zip((output, h_n, c_n), grads_out) if o is not None and g is not None]
    inputs = [t for t, need in zip((x, h0, c0, *weights), needs) if t is not None and need]
    grads = iter(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], create_graph=True,
                                     allow_unused=True) if pairs else [None] * len(inputs))
    return tuple(next(grads) if t is not None and need else None for t, need in zip((x, h0, c0, *weights), needs))


def _is_shared(weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether every weight is a stride-0 copy of one tensor (what expand and `grad_sample` pass)."""
    return bool(weights) and all(w.stride(0) == 0 or w.shape[0] == 1 for w in weights.values())


def _arguments(module: nn.RNNBase, inputs: LayerInput) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(input, h0, c0) of the call, h0 and c0 None when not given."""
    bound = inputs.bound(module)
    x, hx = bound["input"], bound.get("hx")
    if isinstance(hx, (tuple, list)):
        return x, hx[0], hx[1]
    return x, hx, None


def recurrent_batch(module: nn.RNNBase, x: torch.Tensor) -> int:
    """The number of samples of a batched call: dim 0 of the input with batch_first, else dim 1."""
    return x.shape[0] if module.batch_first else x.shape[1]


@register_rule(nn.RNN, nn.LSTM, nn.GRU)
class RecurrentRule:
    """(output, h_n) = RNN/GRU(input, h0); (output, (h_n, c_n)) = LSTM(input, (h0, c0)); per sample."""

    params = recurrent_params()

    @staticmethod
    def applies(module: nn.RNNBase) -> str | None:
        """Why the rule cannot give this layer's per-sample gradients, or None when it can: dropout
        between layers in training mode (a re-forward cannot draw the call's masks again), or more
        layers than the rule's `params` name."""
        if module.training and module.dropout > 0 and module.num_layers > 1:
            return (f"has dropout={module.dropout} between its layers in training mode: the masks the call drew "
                    "cannot be drawn again for its per-sample gradients (its rule holds in eval mode or with dropout=0)")
        if module.num_layers > MAX_LAYERS:
            return f"has {module.num_layers} layers: its rule names the weights of {MAX_LAYERS}"
        return None

    @staticmethod
    def refuses_input(module: nn.RNNBase, inputs: LayerInput) -> str | None:
        """Why this call's arguments are outside the rule, or None: a PackedSequence input (its
        samples have their own lengths, sorted by torch) or an unbatched (2-D) one (no sample
        dimension)."""
        x = _arguments(module, inputs)[0]
        if isinstance(x, PackedSequence):
            return "is called with a PackedSequence: its rule does not unroll each sample's own length"
        if x.dim() != 3:
            return f"is called unbatched (a {x.dim()}-D input): there is no sample dimension"
        return None

    @staticmethod
    def batch_first(module: nn.RNNBase, inputs: LayerInput, output: Any) -> tuple[LayerInput, Any]:
        """The call with the sample on dim 0, for the checks (`LayerRule.batch_first`): the input
        sequence (transposed when time-major), h0 and c0 as (B, layers·directions, H); `output` (or its
        gradient) likewise: (output, h_n) or (output, (h_n, c_n)), None components kept. A
        PackedSequence input is passed as it is (its rows are not samples: the checks refuse it)."""
        x, h0, c0 = _arguments(module, inputs)

        def sequence(t):
            return t.transpose(0, 1) if isinstance(t, torch.Tensor) and not module.batch_first and t.dim() == 3 else t

        def state(t):
            return t.transpose(0, 1) if isinstance(t, torch.Tensor) and t.dim() == 3 else t

        kept = {"input": x if isinstance(x, PackedSequence) else sequence(x), "h0": state(h0), "c0": state(c0)}
        if isinstance(output, torch.Tensor):
            output = (output, None)
        hidden = output[1]
        hidden = tuple(state(t) for t in hidden) if isinstance(hidden, (tuple, list)) else state(hidden)
        return LayerInput((), {k: v for k, v in kept.items() if v is not None}), (sequence(output[0]), hidden)

    @staticmethod
    def output_sample_dims(module: nn.RNNBase) -> tuple:
        """Where the sample is in each output, in the output's structure: the output sequence's dim
        0 with batch_first, else 1; h_n's and c_n's always 1."""
        sequence = 0 if module.batch_first else 1
        return (sequence, (1, 1)) if module.mode == "LSTM" else (sequence, 1)

    @staticmethod
    def grad_sample(module: nn.RNNBase, inputs: LayerInput, grad_out: Any,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{name: (B, *shape)} for each name in `trainable`, from the captured call and `grad_out`
        ((∂output, ∂h_n), LSTM (∂output, (∂h_n, ∂c_n)), any of them None): autograd through
        `expanded_forward` with stride-0 per-sample copies, i.e. one backward through time of the
        batch and one batched product per weight (`SharedRecurrence`). Chosen by measurement against
        a loop over the samples calling the layer through `torch.func.functional_call` (B=32, T=20,
        input and hidden 64, float32, one thread of a shared 2-core CPU, CPU ms per call, median of
        9, two runs): RNN 1 layer 1.4–2.0 against 24–28, 2 layers 2.9–4.5 against 39–46; GRU 3.6–4.7
        against 51–83, 10–11 against 118–123; LSTM 5.1–5.9 against 14–15, 11–14 against 29–31.
        (Autograd through the per-sample unrolled products, a (B, *shape) gradient per step summed
        by autograd, took 7–57 ms.) Raises ValueError for a call `applies` or `refuses_input`
        rejects."""
        why = RecurrentRule.applies(module) or RecurrentRule.refuses_input(module, inputs)
        if why:
            raise ValueError(f"{type(module).__name__} {why}")
        if isinstance(grad_out, torch.Tensor):
            grad_out = (grad_out, None)
        batch = recurrent_batch(module, _arguments(module, inputs)[0])
        return grad_sample_by_autograd(RecurrentRule.expanded_forward, module, inputs, grad_out, trainable,
                                       module._flat_weights_names, batch)

    @staticmethod
    def grad_batch(module: nn.RNNBase, inputs: LayerInput, grad_out: Any,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`, (*shape) for each name in `trainable`, from one backward through the
        layer's own fused forward (`grad_batch_by_autograd`). Raises ValueError as `grad_sample` does."""
        why = RecurrentRule.applies(module) or RecurrentRule.refuses_input(module, inputs)
        if why:
            raise ValueError(f"{type(module).__name__} {why}")
        return grad_batch_by_autograd(module, inputs, (grad_out, None) if isinstance(grad_out, torch.Tensor)
                                      else grad_out, trainable)

    @staticmethod
    def expanded_forward(module: nn.RNNBase, inputs: LayerInput, weights: Mapping[str, torch.Tensor]) -> tuple:
        """(output, h_n) or, for LSTM, (output, (h_n, c_n)) as the layer returns them, sample n
        computed with weights[name][n]: the recurrence unrolled over time (`unrolled`), through
        `SharedRecurrence` when every weight is a stride-0 copy of one tensor, else with per-sample
        products. Dropout between layers is applied as torch applies it (training mode), with
        masks of its own. Raises ValueError for an input `refuses_input` rejects."""
        why = RecurrentRule.refuses_input(module, inputs)
        if why:
            raise ValueError(f"{type(module).__name__} {why}")
        x, h0, c0 = _arguments(module, inputs)
        spec = Spec.of(module)
        if not module.batch_first:
            x = x.transpose(0, 1)
        n = x.shape[0]
        if h0 is None:
            h0 = x.new_zeros(spec.layers * spec.directions, n, spec.out)
        if spec.mode == "LSTM" and c0 is None:
            c0 = x.new_zeros(spec.layers * spec.directions, n, spec.hidden)
        names = tuple(name for name in module._flat_weights_names if name in weights)
        if _is_shared(weights) and not torch.is_autocast_enabled(x.device.type):
            results = SharedRecurrence.apply(spec, names, x, h0, c0, *(weights[name] for name in names))
            output, h_n = results[0], results[1]
            c_n = results[2] if len(results) > 2 else None
        else:
            output, h_n, c_n, _ = unrolled(spec, x, h0, c0, weights)
        if not module.batch_first:
            output = output.transpose(0, 1)
        return (output, (h_n, c_n)) if spec.mode == "LSTM" else (output, h_n)

    @staticmethod
    def flops(module: nn.RNNBase, inputs: LayerInput, output, trainable: Collection[str]) -> LayerFlops:
        """Products (2 per multiply-add) and bias additions of the call, for its n samples and T steps.
        forward: per layer, direction and step 2·g·(i + p) for the gates (g = gates × hidden, i
        the layer's input width, p = proj_size or hidden), 2·h·p for a projection, and 2·g for the
        biases. input_grad: the first layer's input gradient, 2·g·i per step and direction, plus
        the rest of the backward through time (the same products as the forward's) unless a
        parameter is trainable: param_grad then carries it, being needed for those gradients.
        param_grad: that backward and, for each trainable weight, its outer products over the
        steps (the count of its forward product), and g per step for each trainable bias."""
        x = _arguments(module, inputs)[0]
        if isinstance(x, PackedSequence):
            x = x.data.unsqueeze(0 if module.batch_first else 1)
        batched = x.dim() == 3
        steps = x.shape[1] if module.batch_first and batched else x.shape[0]
        n = recurrent_batch(module, x) if batched else 1
        spec = Spec.of(module)
        gates, tokens = GATES[module.mode] * spec.hidden, n * steps
        forward = products = first_input = outer = 0
        for layer in range(spec.layers):
            width = module.input_size if layer == 0 else spec.out * spec.directions
            for reverse in range(spec.directions):
                names = layer_names(layer, bool(reverse))
                weights = {names["w_ih"]: 2 * gates * width, names["w_hh"]: 2 * gates * spec.out,
                           names["w_hr"]: 2 * spec.hidden * spec.proj}
                biases = {names["b_ih"]: gates * module.bias, names["b_hh"]: gates * module.bias}
                counts = weights | biases
                products += tokens * sum(weights.values())
                forward += tokens * sum(counts.values())
                first_input += tokens * weights[names["w_ih"]] if layer == 0 else 0
                outer += tokens * sum(count for name, count in counts.items() if name in trainable)
        if trainable:
            return LayerFlops(forward, first_input, products - first_input + outer)
        return LayerFlops(forward, products, 0)
