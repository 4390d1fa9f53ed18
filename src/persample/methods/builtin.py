"""Imports every built-in method module so that each registers itself (order = display order)."""
from . import loop, hooks, expand, vmap, kernel, jax  # noqa: F401  (ours)
from . import torch_ew, opacus, backpack  # noqa: F401  (the peers)
from . import auto  # noqa: F401  (chooses among the others)
