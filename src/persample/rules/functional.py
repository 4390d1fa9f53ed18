"""The per-layer fallback: per-sample gradients of the parameters a module owns itself, by torch.func.

For a module that owns trainable parameters but has no closed-form rule (Hugging Face's
`T5LayerNorm` and `LlamaRMSNorm`, a ViT embedding's own `cls_token` and `position_embeddings`, a
user's custom layer), the rule-based methods still capture the module's call (its arguments and
the gradient of the loss with respect to its output) like any other layer's; this rule then runs
the module's own forward once per sample under `torch.func.vmap`, each sample alone (its rows of the
batched arguments, as a batch of one), and takes the vector-Jacobian product of that sample's
output gradient with respect to the module's own parameters:

    gᵢ = (∂ fθ(xᵢ) / ∂θ)ᵀ · ∂Σℓ/∂yᵢ

exact when row i of the module's output is computed from row i of its arguments alone, which the
rule-based methods check on the example batch (`persample.checks.layout`) and the per-call guard
keeps checking (`persample.checks.guard`). Children's parameters are held fixed (their own rules,
or their own fallback, give theirs). A forward that torch.func cannot batch (a Python branch on a
tensor's value, `.item()`, random numbers) is refused when the step is prepared, naming the module.
"""
from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..layers import LayerInput
from .registry import LayerRule

PLACEMENT = "torch.func"
"""How the step's placement names a layer computed by this fallback."""


def own_parameter_names(module: nn.Module) -> tuple[str, ...]:
    """The local names of the parameters `module` holds itself (not its children's)."""
    return tuple(name for name, param in module._parameters.items() if param is not None)


def fallback_rule(module: nn.Module) -> LayerRule:
    """A `LayerRule` for `module`'s own parameters computed by `functional_grad_sample`: no expanded
    forward (expand captures such a module's call as hooks does), no FLOP count (the floor names it
    as uncounted)."""
    return LayerRule(type(module), grad_sample=functional_grad_sample, params=own_parameter_names(module))


def _batched(value: object, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch


def functional_grad_sample(module: nn.Module, inputs: LayerInput, grad_out, trainable: Collection[str]) -> dict[str, torch.Tensor]:
    """{name: (B, *param.shape)} for each of `module`'s own parameters named in `trainable`.

    inputs: the call's arguments; a tensor with B rows on dim 0 is sample-indexed (sample i gets row i,
    as a batch of one), any other argument is passed to every sample as it is (a shared mask, a flag).
    grad_out: ∂Σℓ/∂output, (B, ...), or the same structure as the output (a tuple) with None where an
    output does not reach the loss. Raises whatever torch.func raises on a forward it cannot batch
    (data-dependent control flow, in-place updates of captured tensors, random numbers)."""
    grads, grad_spec = tree_flatten(grad_out)
    present = [g for g in grads if isinstance(g, torch.Tensor)]
    if not present or not trainable:
        return {}
    batch = present[0].shape[0]
    flat, spec = tree_flatten((tuple(inputs.args), dict(inputs.kwargs)))
    dims = tuple(0 if _batched(value, batch) else None for value in flat)
    names = sorted(trainable)
    own = {name: module._parameters[name].detach() for name in names}
    grad_dims = tuple(0 if isinstance(g, torch.Tensor) else None for g in grads)
    reached = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]  # outputs that reach the loss

    def one_sample(*values):
        args_values, grad_values = values[: len(flat)], values[len(flat):]
        alone = [v.unsqueeze(0) if d == 0 else v for v, d in zip(args_values, dims)]
        args, kwargs = tree_unflatten(alone, spec)

        def forward(params):
            outputs, output_spec = tree_flatten(torch.func.functional_call(module, params, args, kwargs))
            if output_spec != grad_spec:
                raise TypeError(f"{type(module).__name__}'s output changed structure between the captured call and "
                                f"its recomputation ({grad_spec} against {output_spec})")
            return tuple(outputs[i] for i in reached)

        _, vjp = torch.func.vjp(forward, own)
        (grad_params,) = vjp(tuple(grad_values[i].unsqueeze(0) for i in reached))
        return {name: grad_params[name] for name in names}

    with torch.no_grad():  # torch.func's vjp differentiates regardless; nothing else is kept
        return torch.func.vmap(one_sample, in_dims=dims + grad_dims)(*flat, *grads)
