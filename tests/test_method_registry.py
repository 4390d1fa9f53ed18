"""The method registry: a static table of the built-ins, imported on first lookup, in display order;
no method module imports the registry (no import cycle), and looking one method up imports only it."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import persample
from persample.methods import registry
from persample.methods.registry import BUILTIN_METHODS, get, registered

METHODS_DIR = Path(registry.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """The modules `path` imports, anywhere in it (relative imports written as '.name')."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(f"{base}.{alias.name}" if node.module else f"{base}{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("spec", BUILTIN_METHODS.values())
def test_no_builtin_method_module_imports_the_registry(spec):
    module = spec.partition(":")[0].rpartition(".")[2]
    imports = imported_modules(METHODS_DIR / f"{module}.py")
    assert not {".registry", "persample.methods.registry"} & imports, f"{module}.py imports the registry"


def test_the_registry_lists_the_builtins_in_table_order_then_the_others():
    names = list(registered())
    assert names[: len(BUILTIN_METHODS)] == list(BUILTIN_METHODS)
    assert list(persample.available_methods())[: len(BUILTIN_METHODS)] == list(BUILTIN_METHODS)
    for name in BUILTIN_METHODS:
        assert get(name).name == name and get(name) is registered()[name]


def test_looking_up_one_method_imports_that_method_only():
    code = (
        "import sys\nfrom persample.methods import get\nget('hooks')\n"
        "print(sorted(m for m in sys.modules if m.startswith('persample.methods.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "persample.methods.hooks" in loaded
    for other in ("opacus", "backpack", "jax", "vmap", "auto"):
        assert f"persample.methods.{other}'" not in loaded, f"get('hooks') imported {other}"


def test_a_method_taking_a_builtin_name_is_refused(monkeypatch):
    class Impostor(type(get("vmap"))):
        """A vmap under another class: the name is taken."""

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Impostor())


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown method 'no-such-method'; registered: loop, hooks"):
        get("no-such-method")
