"""Embedding and EmbeddingBag. Indices: n batch, t tokens (all dims after batch), v vocabulary row,
d features.

Embedding:  gW[n,v,:] = Σ_{t : idx[n,t] = v} g[n,t,:]   (a per-sample scatter-add; the padding row stays 0)
An embedding lookup is a Linear layer on one-hot rows, so this is Goodfellow's (2015) per-example
outer product with a one-hot input, summed over the sample's tokens.

EmbeddingBag: each sample is one bag (a row of a 2-D input (B, L), or, for a 1-D input with
offsets, the elements from its offset to the next: the bags are the samples), T_n its elements
other than padding_idx, which torch leaves out of the bag (and out of mean's count):
  sum:  out[n] = Σ_{t∈T_n} w_t W[idx_t]        gW[n,v,:] = Σ_{t∈T_n, idx_t=v} w_t g[n,:]   (w: per_sample_weights, else 1)
  mean: out[n] = Σ_{t∈T_n} W[idx_t] / |T_n|     gW[n,v,:] = Σ_{t∈T_n, idx_t=v} g[n,:] / |T_n|
  max:  out[n,j] = W[r_{n,j}, j], r_{n,j} the row of argmax_{t∈T_n} W[idx_t, j] (the first, on a tie)
                                               gW[n,r_{n,j},j] = g[n,j]   (0 elsewhere)
An empty bag gives zeros and no gradient. With include_last_offset the last offset closes the last
bag and must be the input's length, as torch documents (torch's modes disagree on elements past it:
sum leaves them out, as here; mean counts them; max takes them). Sum and mean are the one-hot Linear again (Goodfellow
2015) with the bag's weights as the one-hot rows' values; max routes each feature's gradient to the
row that won it, recomputed from the call's input and the weight.
"""
from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from ..layers import LayerInput
from .registry import LayerFlops, register_rule


@register_rule(nn.Embedding)
class EmbeddingRule:
    """y[n, t] = W[idx[n, t]]; the padding row gets no gradient."""

    params = ("weight",)

    @staticmethod
    def grad_sample(module: nn.Embedding, inputs: LayerInput, grad_out: torch.Tensor,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{"weight": (n, num_embeddings, embedding_dim)} when "weight" is in `trainable` (else {}):
        each token's output gradient scatter-added into its row of its sample's gradient."""
        if "weight" not in trainable:
            return {}
        idx = inputs.first
        n, (v, d) = idx.shape[0], module.weight.shape
        rows = (idx.reshape(n, -1) + torch.arange(n, device=idx.device).unsqueeze(1) * v).reshape(-1)
        grad = grad_out.new_zeros(n * v, d).index_add_(0, rows, grad_out.reshape(-1, d))
        grad = grad.view(n, v, d)
        if module.padding_idx is not None:
            grad[:, module.padding_idx] = 0
        return {"weight": grad}

    @staticmethod
    def grad_batch(module: nn.Embedding, inputs: LayerInput, grad_out: torch.Tensor,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`: {"weight": (num_embeddings, embedding_dim)}, one scatter-add of every
        token's output gradient into its row."""
        if "weight" not in trainable:
            return {}
        idx = inputs.first
        d = module.weight.shape[1]
        grad = grad_out.new_zeros(module.weight.shape).index_add_(0, idx.reshape(-1), grad_out.reshape(-1, d))
        if module.padding_idx is not None:
            grad[module.padding_idx] = 0
        return {"weight": grad}

    @staticmethod
    def expanded_forward(module: nn.Embedding, inputs: LayerInput, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output (n, *idx.shape[1:], d): sample n's tokens gathered from weights["weight"][n]
        (n, num_embeddings, d), the padding row held out of the gradient as nn.Embedding does."""
        idx = inputs.first
        weight = weights["weight"]
        if module.padding_idx is not None:
            # nn.Embedding never sends gradient to the padding row; mask it the same way.
            keep = torch.ones(weight.shape[1], 1, dtype=weight.dtype, device=weight.device)
            keep[module.padding_idx] = 0
            weight = weight * keep + (weight * (1 - keep)).detach()
        n = idx.shape[0]
        batch = torch.arange(n, device=idx.device).view(n, *([1] * (idx.dim() - 1)))
        return weight[batch, idx]

    @staticmethod
    def flops(module: nn.Embedding, inputs: LayerInput, output: torch.Tensor, trainable: Collection[str]) -> LayerFlops:
        """A gather forward and no input gradient (0, 0); a trainable weight's per-sample gradient
        adds one row of embedding_dim per token."""
        return LayerFlops(0, 0, inputs.first.numel() * module.embedding_dim * ("weight" in trainable))


def _cut(module: nn.EmbeddingBag, idx: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(bag of each element (T,), number of bags B) of a 1-D call: element t is in the bag of the last
    offset at or before t; past an include_last_offset's last offset, in none (marked B)."""
    bags = offsets.numel() - 1 if module.include_last_offset else offsets.numel()
    positions = torch.arange(idx.numel(), device=idx.device)
    bag = torch.searchsorted(offsets[:bags].contiguous(), positions, right=True) - 1
    if module.include_last_offset:
        bag = torch.where(positions < offsets[-1], bag, bags)
    return bag, bags


def _bags(module: nn.EmbeddingBag, inputs: LayerInput,
          detached: bool = False) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    """(indices (T,), bag of each index (T,), number of bags B, per_sample_weights (T,) or None, detached
    with `detached`: for the gradient formulas, whose results are data) of a call, indices of padding_idx and elements past an include_last_offset's last offset marked by
    bag B (no bag), as `F.embedding_bag` reads them: a 2-D input (B, L) is B bags of L, a 1-D one
    with offsets is cut at each offset (the last offset closing the last bag when include_last_offset)."""
    call = inputs.bound(module)
    idx, offsets, weights = call["input"], call.get("offsets"), call.get("per_sample_weights")
    if idx.dim() == 2:
        bags, length = idx.shape
        bag = torch.arange(bags, device=idx.device).repeat_interleave(length)
        idx = idx.reshape(-1)
    else:
        bag, bags = _cut(module, idx, offsets)
    if module.padding_idx is not None:
        bag = torch.where(idx == module.padding_idx, bags, bag)
    if weights is not None:
        weights = (weights.detach() if detached else weights).reshape(-1)
    return idx, bag, bags, weights


def _coefficients(module: nn.EmbeddingBag, bag: torch.Tensor, bags: int, weights: torch.Tensor | None,
                  like: torch.Tensor) -> torch.Tensor:
    """Each element's factor in its bag (T,), in `like`'s dtype: its per_sample_weight (sum), 1/|T_n|
    (mean), or 1 (sum without weights); 0 for an element in no bag."""
    kept = (bag < bags).to(like.dtype)
    if module.mode == "mean":
        counts = torch.zeros(bags + 1, dtype=like.dtype, device=like.device).index_add_(0, bag, kept)
        return kept / counts.clamp_min(1)[bag]
    return kept * weights.to(like.dtype) if weights is not None else kept


def _max_rows(gathered: torch.Tensor, idx: torch.Tensor, bag: torch.Tensor, bags: int) -> torch.Tensor:
    """r (bags, d): for each bag and feature j, the row idx_t of the first element t of the bag whose
    gathered[t, j] is the bag's largest; -1 for an empty bag. `gathered` (T, d) holds each element's
    row of the weight (sample n's own weight for an element of bag n); not differentiated."""
    gathered = gathered.detach()
    count, d = gathered.shape
    index = bag.unsqueeze(1).expand(count, d)
    low = torch.finfo(gathered.dtype).min if gathered.is_floating_point() else torch.iinfo(gathered.dtype).min
    best = gathered.new_full((bags + 1, d), low).scatter_reduce_(0, index, gathered, "amax")
    positions = torch.arange(count, device=idx.device).unsqueeze(1).expand(count, d)
    winning = torch.where(gathered == best[bag], positions, count)
    first = torch.full((bags + 1, d), count, device=idx.device).scatter_reduce_(0, index, winning, "amin")[:bags]
    rows = torch.cat([idx, idx.new_full((1,), -1)])
    return rows[first]


@register_rule(nn.EmbeddingBag)
class EmbeddingBagRule:
    """out[n] = the sum, mean or max of the rows of bag n (module docstring); the padding row is left
    out of the bags and gets no gradient."""

    params = ("weight",)

    @staticmethod
    def applies(module: nn.EmbeddingBag) -> str | None:
        """Why the formula does not hold: scale_grad_by_freq (each row's gradient scaled by its count
        in the whole batch, coupling the samples) or max_norm (the weight renormalised in place by
        every forward); else None."""
        if module.scale_grad_by_freq:
            return ("has scale_grad_by_freq=True, which scales each row's gradient by its frequency in the whole "
                    "batch, so one sample's gradient depends on the others; construct it with scale_grad_by_freq=False")
        if module.max_norm is not None:
            return ("has max_norm set, which renormalises the weight in place during every forward, which the "
                    "rule does not reproduce; construct it with max_norm=None")
        return None

    @staticmethod
    def batch_first(module: nn.EmbeddingBag, inputs: LayerInput, output: torch.Tensor) -> tuple[LayerInput, torch.Tensor]:
        """The call as the checks read it, one row per sample (`persample.checks.layout`): a 2-D call as
        it is; a 1-D call with offsets, whose bags are the samples, as one row per bag summing up its
        elements, (B, 5) float64: [elements, Σ(idx+1), Σ(idx+1)², Σw, Σw·(idx+1)], w its per-sample
        weights (else 1), padding elements included. A summary, not a view: of a fixed width
        whatever the bags' lengths, so that replacing or rotating samples changes only the rows it
        should; `output` (B, embedding_dim) is batch first already."""
        call = inputs.bound(module)
        idx = call["input"]
        if idx.dim() != 1:
            return inputs, output
        weights = call.get("per_sample_weights")
        bag, bags = _cut(module, idx, call["offsets"])
        row = idx.double() + 1
        w = torch.ones_like(row) if weights is None else weights.detach().double()
        parts = torch.stack([torch.ones_like(row), row, row * row, w, w * row], 1)
        summary = parts.new_zeros(bags + 1, parts.shape[1]).index_add_(0, bag, parts)[:bags]
        return LayerInput.of(summary), output

    @staticmethod
    def grad_sample(module: nn.EmbeddingBag, inputs: LayerInput, grad_out: torch.Tensor,
                    trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """{"weight": (B, num_embeddings, embedding_dim)} when "weight" is in `trainable` (else {}),
        B the bags: sum and mean scatter-add each element's bag gradient, times its coefficient,
        into its row of its bag's gradient; max puts g[n, j] at (r_{n,j}, j) (module docstring)."""
        if "weight" not in trainable:
            return {}
        idx, bag, bags, weights = _bags(module, inputs, detached=True)
        grad_out, v, d = grad_out.detach(), *module.weight.shape
        grad = grad_out.new_zeros((bags + 1) * v, d)
        if module.mode == "max":
            rows = _max_rows(module.weight[idx], idx, bag, bags)  # (B, d)
            at = (rows + torch.arange(bags, device=idx.device).unsqueeze(1) * v).clamp_min(0)
            grad.scatter_add_(0, at, grad_out * (rows >= 0).to(grad_out.dtype))
        else:
            coefficients = _coefficients(module, bag, bags, weights, grad_out)
            padded = torch.cat([grad_out, grad_out.new_zeros(1, d)])
            grad.index_add_(0, bag * v + idx, padded[bag] * coefficients.unsqueeze(1))
        return {"weight": grad[: bags * v].view(bags, v, d)}

    @staticmethod
    def grad_batch(module: nn.EmbeddingBag, inputs: LayerInput, grad_out: torch.Tensor,
                   trainable: Collection[str]) -> dict[str, torch.Tensor]:
        """Σₙ of `grad_sample`: {"weight": (num_embeddings, embedding_dim)}, every element's (or, for
        max, every winning feature's) gradient scatter-added into its row, without a per-sample tensor."""
        if "weight" not in trainable:
            return {}
        idx, bag, bags, weights = _bags(module, inputs, detached=True)
        grad_out, d = grad_out.detach(), module.weight.shape[1]
        grad = grad_out.new_zeros(module.weight.shape)
        if module.mode == "max":
            rows = _max_rows(module.weight[idx], idx, bag, bags)
            grad.scatter_add_(0, rows.clamp_min(0), grad_out * (rows >= 0).to(grad_out.dtype))
        else:
            coefficients = _coefficients(module, bag, bags, weights, grad_out)
            padded = torch.cat([grad_out, grad_out.new_zeros(1, d)])
            grad.index_add_(0, idx, padded[bag] * coefficients.unsqueeze(1))
        return {"weight": grad}

    @staticmethod
    def expanded_forward(module: nn.EmbeddingBag, inputs: LayerInput, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output (B, embedding_dim) with bag n's rows gathered from weights["weight"][n]
        (B, num_embeddings, d): sum and mean add them, times their coefficients, into the bag's
        row; max takes, for each feature, the winning row of its own weight (`_max_rows`), so the
        gradient reaches that row alone. Padding elements are in no bag."""
        idx, bag, bags, per_sample = _bags(module, inputs)
        weight = weights["weight"]
        sample = bag.clamp_max(bags - 1) if bags else bag
        gathered = weight[sample, idx]  # (T, d): each element's row of its own bag's weight
        if module.mode == "max":
            rows = _max_rows(gathered, idx, bag, bags)  # (B, d)
            batch = torch.arange(bags, device=idx.device).unsqueeze(1)
            feature = torch.arange(weight.shape[2], device=idx.device)
            return weight[batch, rows.clamp_min(0), feature] * (rows >= 0).to(weight.dtype)
        coefficients = _coefficients(module, bag, bags, per_sample, gathered)
        out = gathered.new_zeros(bags + 1, weight.shape[2]).index_add(0, bag, gathered * coefficients.unsqueeze(1))
        return out[:bags]

    @staticmethod
    def flops(module: nn.EmbeddingBag, inputs: LayerInput, output: torch.Tensor, trainable: Collection[str]) -> LayerFlops:
        """A reduction of embedding_dim per element in the forward (two with per_sample_weights or
        mean's division), no input gradient, and for a trainable weight one row of embedding_dim per
        element (max: per bag) in the per-sample gradient."""
        call = inputs.bound(module)
        elements, d = call["input"].numel(), module.embedding_dim
        scaled = module.mode == "mean" or call.get("per_sample_weights") is not None
        forward = elements * d * (2 if scaled else 1)
        per_sample = (output.numel() if module.mode == "max" else elements * d) * ("weight" in trainable)
        return LayerFlops(forward, 0, per_sample)
