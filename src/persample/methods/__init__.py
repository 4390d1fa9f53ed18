"""Per-sample-gradient methods, one module each, registered by name in `registry`."""
from .registry import Capabilities, Method, Step, available_methods, get, load_object, register, registered

__all__ = ["Capabilities", "Method", "Step", "available_methods", "get", "load_object", "register", "registered"]
