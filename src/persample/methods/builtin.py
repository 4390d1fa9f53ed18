"""Imports every built-in method module so that each registers itself (order = display order)."""
from . import loop, hooks, expand, vmap  # noqa: F401
