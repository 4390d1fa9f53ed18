"""MultiheadAttention. Indices: n batch (the sample), h head, l target position, s source position,
e embedding (d = e / heads per head), i a projection's input features.

Per sample n, with Q = query Wqᵀ + bq, K = [key Wkᵀ + bk; bias_k; 0], V likewise, A = softmax(Q Kᵀ/√d
+ mask) per head and O = concat_h(A V):  y = O Woᵀ + bo  (Vaswani et al. 2017, "Attention Is All
You Need"). No parameter is shared between samples inside the layer: the attention itself has
none, so each sample's gradient is that of its own forward. gWo[n] = Σ_l gy[n,l] ⊗ O[n,l] and
gWq[n] = Σ_l gQ[n,l] ⊗ query[n,l] (likewise Wk, Wv; Goodfellow 2015's outer products), with gQ, gK,
gV from the backward through the attention of sample n.

`grad_sample` gets them exactly that way: one re-forward with a stride-0 per-sample copy of each
trainable tensor (`expanded_forward`, whose projections run as one shared matrix product and give
the per-sample outer products in their backward, `rules.linear.SharedWeightLinear`) and one
backward of Σ ⟨outputs, grad_out⟩. A closed form would compute the same products in the same order.

The rule's `params` name the child parameters the layer's own forward reads
(`F.multi_head_attention_forward` reads `out_proj.weight` directly; out_proj is never called), so
they are dotted. `grad_out` is the tuple (∂/∂attn_output, ∂/∂attn_weights or None), each in the
layout the layer returned it: attn_output is (L, B, E) unless batch_first, the weights are always
batch-first, (B, L, S) or (B, heads, L, S).

Refused: dropout > 0 in training mode (`applies`: the re-forward cannot redraw the call's masks),
and an unbatched (2-D) or nested query (`refuses_input`: no sample dimension).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LayerInput
from .linear import SharedWeightLinear
from .registry import LayerFlops, owned_tensor, register_rule

IN_PROJECTIONS = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                  "bias_k", "bias_v")
OUT_PROJECTION = ("out_proj.weight", "out_proj.bias")


# --- helpers shared with the recurrent rules: dotted names and autograd through a batched forward ---

def shared_weights(module: nn.Module, names: Collection[str], batch: int,
                   trainable: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """{name: (batch, *shape)} for each of `names` `module` holds as a tensor: a stride-0 view of the
    detached tensor, a leaf requiring grad for the names in `trainable` (what expand hands a rule's
    `expanded_forward`). A name held as None is absent."""
    weights = {}
    for name in names:
        tensor = owned_tensor(module, name)
        if tensor is None:
            continue
        view = tensor.detach().unsqueeze(0).expand(batch, *tensor.shape)
        weights[name] = view.requires_grad_() if name in trainable else view
    return weights


def detached(inputs: LayerInput) -> LayerInput:
    """The same call with every tensor argument detached, the same object detached once (so that
    `query is key` still holds, which selects torch's self-attention path)."""
    memo: dict[int, Any] = {}

    def detach(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if id(value) not in memo:
                memo[id(value)] = value.detach()
            return memo[id(value)]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(detach(v) for v in value)
        return value

    return LayerInput(tuple(detach(a) for a in inputs.args), {k: detach(v) for k, v in inputs.kwargs.items()})


def paired(output: Any, grad: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (output tensor, its gradient) pairs of a nested tuple output and its `grad_out` of the
    same structure, leaving out each place where either is None."""
    if output is None or grad is None:
        return []
    if isinstance(output, torch.Tensor):
        return [(output, grad)]
    return [pair for out, g in zip(output, grad) for pair in paired(out, g)]


def grad_sample_by_autograd(forward: Callable[[nn.Module, LayerInput, dict[str, torch.Tensor]], Any],
                            module: nn.Module, inputs: LayerInput, grad_out: Any, trainable: Collection[str],
                            names: Collection[str], batch: int) -> dict[str, torch.Tensor]:
    """{name: (batch, *shape)} for each name in `trainable`: the gradient of Σ ⟨forward's outputs,
    grad_out⟩ with respect to stride-0 per-sample copies of the trainable tensors, from one
    re-forward of the call (`forward` is a rule's `expanded_forward`, the other tensors of `names`
    passed as stride-0 views) and one backward. A parameter the outputs do not reach gets zeros."""
    asked = [name for name in names if name in trainable]
    weights = shared_weights(module, names, batch, asked)
    leaves = [weights[name] for name in asked if name in weights]
    if not leaves:
        return {}
    with torch.enable_grad():
        pairs = paired(forward(module, detached(inputs), weights), grad_out)
        terms = [(out * g.to(out.dtype)).sum() for out, g in pairs if out.requires_grad]
        grads = (torch.autograd.grad(torch.stack(terms).sum(), leaves, allow_unused=True) if terms
                 else [None] * len(leaves))
    return {name: (g.contiguous() if g is not None else leaf.new_zeros(leaf.shape))
            for name, leaf, g in zip((n for n in asked if n in weights), leaves, grads)}


def grad_batch_by_autograd(module: nn.Module, inputs: LayerInput, grad_out: Any,
                           trainable: Collection[str]) -> dict[str, torch.Tensor]:
    """{name: (*shape)} for each name in `trainable`: Σ over the batch of the per-sample gradients,
    as the gradient of Σ ⟨outputs, grad_out⟩ through the module's own forward (its fused kernels)
    with each trainable tensor swapped for a detached copy (`torch.func.functional_call`): no
    per-sample tensor is made."""
    leaves = {name: tensor.detach().requires_grad_() for name in sorted(trainable)
              if (tensor := owned_tensor(module, name)) is not None}
    if not leaves:
        return {}
    call = detached(inputs)
    with torch.enable_grad():
        output = torch.func.functional_call(module, leaves, call.args, dict(call.kwargs))
        terms = [(out * g.to(out.dtype)).sum() for out, g in paired(output, grad_out) if out.requires_grad]
        grads = (torch.autograd.grad(torch.stack(terms).sum(), list(leaves.values()), allow_unused=True) if terms
                 else [None] * len(leaves))
    return {name: g if g is not None else torch.zeros_like(leaf) for (name, leaf), g in zip(leaves.items(), grads)}


# --- MultiheadAttention ---

def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask as an additive one (True → -inf), a float mask as it is (torch's `_canonical_mask`)."""
    if mask is None or mask.is_floating_point():
        return mask
    if mask.dtype != torch.bool:
        raise TypeError(f"only bool and floating masks are supported, got {mask.dtype}")
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (n, t, i) through sample n's weight[n] (o, i) and bias[n] (o,): (n, t, o). A stride-0
    weight (one shared by the samples) runs as one matrix product whose backward still gives the
    per-sample gradient (`SharedWeightLinear`)."""
    if weight.stride(0) == 0 and not torch.is_autocast_enabled(x.device.type):
        out = SharedWeightLinear.apply(x, weight)
    else:
        out = torch.einsum("nti,noi->nto", x, weight)
    return out if bias is None else out + bias.unsqueeze(1)


def attention_batch(module: nn.MultiheadAttention, query: torch.Tensor) -> int:
    """The number of samples of a batched call: query's dim 0 with batch_first, else its dim 1."""
    return query.shape[0] if module.batch_first else query.shape[1]


@register_rule(nn.MultiheadAttention)
class MultiheadAttentionRule:
    """(attn_output, attn_weights) = MultiheadAttention(query, key, value, ...), per sample."""

    params = IN_PROJECTIONS + OUT_PROJECTION

    @staticmethod
    def applies(module: nn.MultiheadAttention) -> str | None:
        """Why the rule cannot give this layer's per-sample gradients, or None when it can: dropout
        on the attention weights in training mode draws masks a re-forward cannot reproduce."""
        if module.training and module.dropout > 0:
            return (f"has dropout={module.dropout} on its attention weights in training mode: the masks the call "
                    "drew cannot be drawn again for its per-sample gradients (its rule holds in eval mode or with "
                    "dropout=0)")
        return None

    @staticmethod
    def refuses_input(module: nn.MultiheadAttention, inputs: LayerInput) -> str | None:
        """Why this call's arguments are outside the rule, or None: an unbatched (2-D) query has no
        sample dimension, and a nested-tensor query runs torch's fused path only."""
        query = inputs.bound(module)["query"]
        if getattr(query, "is_nested", False):
            return "is called with a nested-tensor query, which torch computes on its fused path only"
        if query.dim() != 3:
            return f"is called unbatched (a {query.dim()}-D query): there is no sample dimension"
        return None

    @staticmethod
    def batch_first(module: nn.MultiheadAttention, inputs: LayerInput, output: Any) -> tuple[LayerInput, Any]:
        """The call with the sample on dim 0, for the checks (`LayerRule.batch_first`): query, key and
        value (transposed when time-major), key_padding_mask, a 3-D attn_mask as (B, heads, L, S); a
        2-D attn_mask, shared by the samples, is left out. `output` (or its gradient) as
        (attn_output batch first, attn_weights)."""
        bound = inputs.bound(module)
        def first(t):
            return t.transpose(0, 1) if isinstance(t, torch.Tensor) and not module.batch_first and t.dim() == 3 else t
        kept = {name: first(bound[name]) for name in ("query", "key", "value")}
        if isinstance(bound.get("key_padding_mask"), torch.Tensor):
            kept["key_padding_mask"] = bound["key_padding_mask"]
        mask = bound.get("attn_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 3:
            kept["attn_mask"] = mask.reshape(-1, module.num_heads, *mask.shape[1:])
        if isinstance(output, torch.Tensor):
            output = (output, None)
        return LayerInput((), kept), (first(output[0]), output[1])

    @staticmethod
    def output_sample_dims(module: nn.MultiheadAttention) -> tuple[int, int]:
        """Where the sample is in each output, in the output's structure: attn_output's dim 1 when
        time-major (batch_first=False), else 0; the attention weights' always 0."""
        return (0 if module.batch_first else 1, 0)

    @staticmethod
    def grad_sample(module: nn.MultiheadAttention, inputs: LayerInput, grad_out: tuple,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{name: (B, *shape)} for each name in `trainable` (dotted "out_proj.weight" included),
        from the captured call and `grad_out` = (∂/∂attn_output, ∂/∂attn_weights or None): one
        re-forward through `expanded_forward` with stride-0 per-sample copies and one backward
        (`grad_sample_by_autograd`). Raises ValueError for a call `applies` or `refuses_input`
        rejects."""
        why = MultiheadAttentionRule.applies(module) or MultiheadAttentionRule.refuses_input(module, inputs)
        if why:
            raise ValueError(f"MultiheadAttention {why}")
        if isinstance(grad_out, torch.Tensor):
            grad_out = (grad_out, None)
        batch = attention_batch(module, inputs.bound(module)["query"])
        return grad_sample_by_autograd(MultiheadAttentionRule.expanded_forward, module, inputs, grad_out,
                                       trainable, MultiheadAttentionRule.params, batch)

    @staticmethod
    def grad_batch(module: nn.MultiheadAttention, inputs: LayerInput, grad_out: tuple,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`, (*shape) for each name in `trainable`, from one backward through the
        layer's own forward (`grad_batch_by_autograd`). Raises ValueError as `grad_sample` does."""
        why = MultiheadAttentionRule.applies(module) or MultiheadAttentionRule.refuses_input(module, inputs)
        if why:
            raise ValueError(f"MultiheadAttention {why}")
        return grad_batch_by_autograd(module, inputs, (grad_out, None) if isinstance(grad_out, torch.Tensor)
                                      else grad_out, trainable)

    @staticmethod
    def expanded_forward(module: nn.MultiheadAttention, inputs: LayerInput,
                         weights: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(attn_output, attn_weights) as the layer returns them, sample n computed with
        weights[name][n] for every tensor of `params` it holds: the projections as batched products
        (`project`), the attention as `F.multi_head_attention_forward` computes it (scaled scores
        plus the merged masks through a softmax when the weights are asked for, else
        `F.scaled_dot_product_attention`, which honours `is_causal`). Dropout is applied as torch
        applies it (training mode), with masks of its own."""
        a = inputs.bound(module)
        query, key, value = a["query"], a["key"], a["value"]
        need_weights, is_causal = a["need_weights"], a["is_causal"]
        if query.dim() != 3:
            raise ValueError(f"MultiheadAttention {MultiheadAttentionRule.refuses_input(module, inputs)}")
        dtype = query.dtype
        key_padding_mask = _float_mask(a["key_padding_mask"], dtype)
        attn_mask = a["attn_mask"]
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # scaled_dot_product_attention applies its own causal mask
        else:
            attn_mask = _float_mask(attn_mask, dtype)
            if key_padding_mask is not None:
                is_causal = False

        if not module.batch_first:  # to (n, t, features), keeping `query is key is value`
            same_qk, same_kv = query is key, key is value
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        n, tgt, embed = query.shape
        heads, head_dim = module.num_heads, module.head_dim

        bias = weights.get("in_proj_bias")
        if module._qkv_same_embed_dim and query is key and key is value:
            q, k, v = project(query, weights["in_proj_weight"], bias).chunk(3, dim=-1)
        else:
            if module._qkv_same_embed_dim:
                w_q, w_k, w_v = weights["in_proj_weight"].chunk(3, dim=1)
            else:
                w_q, w_k, w_v = weights["q_proj_weight"], weights["k_proj_weight"], weights["v_proj_weight"]
            b_q, b_k, b_v = bias.chunk(3, dim=1) if bias is not None else (None, None, None)
            q, k, v = project(query, w_q, b_q), project(key, w_k, b_k), project(value, w_v, b_v)

        if attn_mask is not None:
            if attn_mask.dim() == 2:
                attn_mask = attn_mask.view(1, 1, *attn_mask.shape)
            else:  # (n·heads, L, S), sample-major
                attn_mask = attn_mask.view(n, heads, *attn_mask.shape[1:])
        if "bias_k" in weights and "bias_v" in weights:
            k = torch.cat([k, weights["bias_k"].reshape(n, 1, embed)], dim=1)
            v = torch.cat([v, weights["bias_v"].reshape(n, 1, embed)], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None

        q, k, v = (t.reshape(n, t.shape[1], heads, head_dim).transpose(1, 2) for t in (q, k, v))  # (n, h, t, d)
        if module.add_zero_attn:
            zeros = k.new_zeros(n, heads, 1, head_dim)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        if key_padding_mask is not None:
            padding = key_padding_mask.view(n, 1, 1, -1)
            attn_mask = padding if attn_mask is None else attn_mask + padding

        dropout = module.dropout if module.training else 0.0
        if need_weights:
            scores = torch.matmul(q * math.sqrt(1.0 / head_dim), k.transpose(-2, -1))
            if attn_mask is not None:
                scores = scores + attn_mask
            attention = torch.softmax(scores, dim=-1)
            dropped = F.dropout(attention, p=dropout) if dropout > 0 else attention
            out = torch.matmul(dropped, v)
        else:
            attention = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout, is_causal)
        out = out.transpose(1, 2).reshape(n, tgt, embed)
        out = project(out, weights["out_proj.weight"], weights.get("out_proj.bias"))
        if not module.batch_first:
            out = out.transpose(0, 1)
        if attention is not None and a["average_attn_weights"]:
            attention = attention.mean(dim=1)
        return out, attention

    @staticmethod
    def flops(module: nn.MultiheadAttention, inputs: LayerInput, output: Any,
              trainable: Collection[str]) -> LayerFlops:
        """Matrix products (2 per multiply-add) and bias additions of the call, for its n samples:
        forward: the q, k, v projections 2n(L·E·E + S·kdim·E + S·vdim·E), the scores and the
        weighted sum 2·2n·L·S'·E (S' = S plus bias_k and the zero position), the output projection
        2n·L·E·E, and n(L + 2S)·E + n·L·E for the biases (softmax and masks not counted).
        input_grad: the projections' input gradients, the same products as their forwards, plus
        the backward through the attention and the output projection (4·2n·L·S'·E + 2n·L·E·E)
        unless a parameter before the attention is trainable: param_grad then carries it, being
        needed for that gradient. param_grad: the outer products of each trainable weight (the
        same count as its forward product) and n·(its rows) per token for each trainable bias."""
        a = inputs.bound(module)
        query, key = a["query"], a["key"]
        batched = query.dim() == 3
        n = attention_batch(module, query) if batched else 1
        tgt, src = (query.shape[1], key.shape[1]) if batched and module.batch_first else (query.shape[0], key.shape[0])
        e, kdim, vdim = module.embed_dim, module.kdim, module.vdim
        extra = src + (module.bias_k is not None) + bool(module.add_zero_attn)
        q_mm, k_mm, v_mm, o_mm = 2 * n * tgt * e * e, 2 * n * src * kdim * e, 2 * n * src * vdim * e, 2 * n * tgt * e * e
        in_bias = n * (tgt + 2 * src) * e if module.in_proj_bias is not None else 0
        out_bias = n * tgt * e if module.out_proj.bias is not None else 0
        attention = 2 * 2 * n * tgt * extra * e
        forward = q_mm + k_mm + v_mm + attention + o_mm + in_bias + out_bias
        inside = 2 * attention + o_mm  # backward through the attention and the output projection
        before = set(trainable) & set(IN_PROJECTIONS)
        outer = {"in_proj_weight": q_mm + k_mm + v_mm, "q_proj_weight": q_mm, "k_proj_weight": k_mm,
                 "v_proj_weight": v_mm, "in_proj_bias": in_bias, "bias_k": n * e, "bias_v": n * e,
                 "out_proj.weight": o_mm, "out_proj.bias": out_bias}
        param_grad = sum(outer[name] for name in trainable if name in outer) + (inside if before else 0)
        return LayerFlops(forward, q_mm + k_mm + v_mm + (0 if before else inside), param_grad)
