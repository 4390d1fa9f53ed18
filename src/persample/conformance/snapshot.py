"""Everything a method could leave behind on a model, captured before and compared after."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..state import HOOK_DICTS, same_values


@dataclass
class ModelSnapshot:
    """What a method must leave as it found it: a model's values, .grad tensors and their identities,
    parameters, train/eval modes, hooks, attributes and requires_grad flags.
    """

    values: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    grad_ids: dict[str, int | None]
    parameter_ids: dict[str, int]
    modes: dict[str, bool]
    hooks: dict[str, int]
    module_attributes: dict[str, frozenset[str]]
    parameter_attributes: dict[str, frozenset[str]]
    requires_grad: dict[str, bool]

    @classmethod
    def of(cls, model: nn.Module) -> "ModelSnapshot":
        """The snapshot of `model` now (values cloned)."""
        params = dict(model.named_parameters())
        return cls(
            values={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
            grads={k: None if p.grad is None else p.grad.detach().clone() for k, p in params.items()},
            grad_ids={k: None if p.grad is None else id(p.grad) for k, p in params.items()},
            parameter_ids={k: id(p) for k, p in params.items()},
            modes={k: m.training for k, m in model.named_modules()},
            hooks={k: sum(len(getattr(m, d, ())) for d in HOOK_DICTS) for k, m in model.named_modules()},
            module_attributes={k: frozenset(vars(m)) for k, m in model.named_modules()},
            parameter_attributes={k: frozenset(vars(p)) for k, p in params.items()},
            requires_grad={k: p.requires_grad for k, p in model.named_parameters(remove_duplicate=False)},
        )

    def differences(self, model: nn.Module) -> list[str]:
        """What changed since the snapshot, one line per change; empty if nothing."""
        after = ModelSnapshot.of(model)
        found = []
        for name, value in self.values.items():
            if name not in after.values or not same_values(after.values[name], value):
                found.append(f"{name} changed value")
        for name, grad in self.grads.items():
            now = after.grads.get(name)
            same = (grad is None and now is None) or (grad is not None and now is not None and same_values(grad, now))
            if not same or after.grad_ids.get(name) != self.grad_ids[name]:
                found.append(f"{name}.grad was replaced or accumulated into")
        for field in ("parameter_ids", "requires_grad", "modes", "hooks", "module_attributes", "parameter_attributes"):
            before, now = getattr(self, field), getattr(after, field)
            for key in before.keys() | now.keys():
                if before.get(key) != now.get(key):
                    found.append(f"{field.replace('_', ' ')} of {key or '<root>'}: {before.get(key)} -> {now.get(key)}")
        return found
