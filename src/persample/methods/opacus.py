"""`opacus-hooks`, `opacus-functorch`, `opacus-ew`: Opacus's GradSampleModule in each grad_sample_mode.

Opacus wraps the model and fills `param.grad_sample` during backward: "hooks" applies a hand-written
grad sampler per layer type to the layer's input and output gradient, "functorch" vmaps each
layer's own forward, and "ew" hands the whole model to torch's ExpandedWeights.

    >>> import torch, persample, persample.methods.opacus
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> grads = persample.per_sample_grads(model, torch.randn(5, 4), torch.randint(3, (5,)), method="opacus-hooks")
    >>> grads["0.weight"].shape
    torch.Size([5, 8, 4])
"""
from __future__ import annotations

import importlib.util

from torch import nn

from ..assumptions import LAYER_RULES
from ..capabilities import Capabilities, Finding, Refusal
from ..contract import trainable_owners
from .peer_support import Forward, PeerMethod
from .torch_ew import expanded_weight_layers

REQUIRES = (("opacus", "opacus"),)

CONVENTION = (
    "Wrapped with loss_reduction='sum' and given the summed per-sample losses, so grad_sample is "
    "the unscaled per-sample gradient and needs no conversion (with 'mean' Opacus multiplies the "
    "output gradients by the batch size to undo the 1/B of a mean-reduced loss). "
)
GRAD_SAMPLE_MODES = {  # Opacus's grad_sample_mode -> (summary, notes)
    "hooks": (
        "Opacus hooks: a registered grad sampler per exact layer type (its GRAD_SAMPLERS)",
        CONVENTION + "Opacus dispatches on the exact type and silently hands other layers (subclasses "
        "included) to functorch; persample refuses those here and points to opacus-functorch. "
        "Opacus records activations only for modules in training mode.",
    ),
    "functorch": (
        "Opacus functorch: vmap(grad) of each trainable layer's own forward",
        CONVENTION + "Each trainable module is re-run on its first positional input alone; modules "
        "with buffers are refused. Opacus records activations only for modules in training mode.",
    ),
    "ew": (
        "Opacus ew: GradSampleModuleExpandedWeights over torch's ExpandedWeights",
        CONVENTION + "Works in eval mode too; the layers are those torch's ExpandedWeights handles.",
    ),
}


class OpacusMethod(PeerMethod):
    """Opacus's GradSampleModule in one grad_sample_mode, over a parameter-sharing clone. No conversion:
    loss_reduction="sum" with the summed losses leaves grad_sample unscaled ("mean" multiplies by B)."""

    def __init__(self, mode: str) -> None:
        if mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}; got {mode!r}")
        self.mode = mode

    @property
    def name(self) -> str:
        """'opacus-<mode>': opacus-hooks, opacus-functorch or opacus-ew."""
        return f"opacus-{self.mode}"

    @property
    def capabilities(self) -> Capabilities:
        """Built on demand: importing Opacus takes seconds, so only its users pay for it."""
        summary, notes = GRAD_SAMPLE_MODES[self.mode]
        refusals = () if self.mode == "ew" else (Refusal(
            LAYER_RULES.id, "what Opacus's validators refuse, modules in eval mode"
            + (", layers without a grad sampler (exact types)" if self.mode == "hooks" else ""),
            lambda model, device, dtype: self.refused_layer(model)),)
        return Capabilities(
            name=self.name, summary=summary, layers=self.layers(), requires=REQUIRES, refusals=refusals, peer=True,
            notes=notes,
        )

    def unavailable_reason(self) -> str | None:
        """"needs the package 'opacus'" when it is not installed, else None. Code, not only
        `Capabilities.requires`: the base class reads `self.capabilities`, whose layers would import
        Opacus (seconds) just to say whether it is installed."""
        if importlib.util.find_spec("opacus") is None:
            return "needs the package 'opacus': pip install opacus"
        return None

    def layers(self) -> tuple[type[nn.Module], ...] | None:
        """The layer types this mode handles: the grad-sampler registry, ExpandedWeights' or any."""
        if self.mode == "functorch":
            return None
        if self.mode == "ew":
            return expanded_weight_layers()
        if importlib.util.find_spec("opacus") is None:
            return ()
        from opacus.grad_sample import GradSampleModule

        return tuple(GradSampleModule.GRAD_SAMPLERS)

    def refused_layer(self, model: nn.Module) -> Finding | None:
        """Opacus's own objections (the hooks and functorch modes; ew validates nothing but layers)."""
        found = opacus_validation(model, self.name)
        if found is None and self.mode == "hooks":
            found = missing_grad_sampler(model)
        return found

    def wrap(self, clone: nn.Module) -> Forward:
        """The clone wrapped in Opacus's GradSampleModule in this grad_sample_mode, with loss_reduction='sum'
        and batch_first.
        """
        from opacus.grad_sample import wrap_model

        return wrap_model(clone, grad_sample_mode=self.mode, batch_first=True, loss_reduction="sum")


def opacus_validation(model: nn.Module, method: str) -> Finding | None:
    """The first objection, as a `Finding` naming the layer, of Opacus's own checks for the
    hooks and functorch modes: its per-type validators (ModuleValidator.VALIDATORS), its refusal of
    trainable layers with buffers (GradSampleModule.validate) and its training-mode-only hooks."""
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    for qualname, module in trainable_owners(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = (validator(module) if validator else []) + GradSampleModule.validate(module, strict=False)
        if errors:
            return Finding(f"is refused by Opacus's validator: {errors[0]}", qualname, module)
        if not module.training:
            return Finding(
                "is in eval mode, and Opacus's forward hook records activations "
                "only in training mode, so its per-sample gradient would be missing. Fix: model.train(), "
                "or use opacus-ew", qualname, module,
            )
        if method == "opacus-functorch" and isinstance(module, nn.EmbeddingBag):
            return Finding("is refused by Opacus's functorch mode (prepare_layer: 'Functorch does not support "
                           "EmbeddingBag yet')", qualname, module)
    return None


def missing_grad_sampler(model: nn.Module) -> Finding | None:
    """The first trainable layer whose exact type has no Opacus grad sampler, or None."""
    from opacus.grad_sample import GradSampleModule

    for qualname, module in trainable_owners(model):
        if type(module) not in GradSampleModule.GRAD_SAMPLERS:
            names = ", ".join(sorted(t.__name__ for t in GradSampleModule.GRAD_SAMPLERS))
            return Finding(
                f"has no grad sampler in Opacus's registry (exact types: {names}); Opacus would silently "
                "compute it with functorch. Use opacus-functorch for that", qualname, module,
            )
    return None


# One method per grad_sample_mode, named in `registry.BUILTIN_METHODS` (cheap: Opacus is imported on use).
OPACUS_HOOKS = OpacusMethod("hooks")
OPACUS_FUNCTORCH = OpacusMethod("functorch")
OPACUS_EW = OpacusMethod("ew")
