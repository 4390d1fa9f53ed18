"""Every public function and class of persample says what it is for: each module-level name without a
leading underscore that the module defines itself (not one it imports) has a non-empty docstring,
and so has each public method and property of such a class (one that overrides a documented method
of a base class, such as `nn.Module.forward`, shares that method's docstring).

A pytest test function inside the packaged conformance suite is exempt: its name is its
specification. A module whose import needs an optional package that is not installed is skipped,
naming the package."""
import importlib
import inspect
import pkgutil

import pytest

import persample

MODULES = sorted(info.name for info in pkgutil.walk_packages(persample.__path__, "persample."))


def undocumented(module) -> list[str]:
    """Public functions and classes defined in `module` without a docstring of their own."""
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported, documented where it is defined
        if module.__name__.rsplit(".", 1)[-1].startswith("test_") and name.startswith("test_"):
            continue  # a pytest test: its name is the specification
        if not own_docstring(obj):
            missing.append(name)
        if inspect.isclass(obj):
            missing += [f"{name}.{method}" for method in undocumented_methods(obj)]
    return missing


def undocumented_methods(cls: type) -> list[str]:
    """Public methods and properties written in `cls`'s body without a docstring, here or on the
    method they override."""
    missing = []
    for name, value in vars(cls).items():
        function = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
        if name.startswith("_") or not inspect.isfunction(function):
            continue
        if function.__qualname__ != f"{cls.__qualname__}.{name}":
            continue  # a function stored as a class attribute (a field's default), not a method
        if not (function.__doc__ or "").strip() and not any(
                (getattr(vars(base).get(name), "__doc__", None) or "").strip() for base in cls.__mro__[1:]):
            missing.append(name)
    return missing


def own_docstring(obj) -> str:
    """`obj`'s docstring, without what Python writes in for an undocumented class: a dataclass's or
    named tuple's signature ("Name(field, ...)"), or a docstring inherited from a base class."""
    doc = (obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__) or ""
    generated = inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(") and doc.endswith(")") and "\n" not in doc
    return "" if generated else doc.strip()


def test_every_module_of_the_package_is_found():
    assert "persample.api" in MODULES and "persample.methods.base" in MODULES


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_function_and_class_has_a_docstring(module_name):
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and not error.name.startswith("persample"):
            pytest.skip(f"importing {module_name} needs the optional package {error.name!r}, not installed")
        raise
    missing = undocumented(module)
    assert not missing, f"{module_name}: public names without a docstring: {', '.join(missing)}"
