"""Objects named on the command line: 'package.module:object' or 'path/to/file.py:object'."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys


def load_spec(spec: str, what: str) -> object:
    """The object `spec` names; `what` ("method", "model factory") words the errors.

    Raises `ValueError` (not of the form module:object), `FileNotFoundError` (no such file),
    `ImportError` (no such module) or `AttributeError` (no such object in it).
    """
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {spec!r} must look like 'package.module:object' or 'path/to/file.py:object'")
    obj = import_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{what} {spec!r}: {module_name} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def import_file(path: str) -> object:
    """Import a module from a file (no package needed, nothing added to sys.path)."""
    file = os.path.abspath(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"file {path!r} not found (relative paths start at {os.getcwd()})")
    name = "persample_plugin_" + os.path.splitext(os.path.basename(file))[0]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
