"""The pure core (``protocol/`` and ``scheduling/``) must not reach for I/O, threads or a clock.

Two checks, because each misses what the other sees: importing every module in
a fresh interpreter catches forbidden modules pulled in indirectly, and reading
the source with ``ast`` catches an import the runtime check would miss because
the interpreter had already loaded that module at startup (``time`` and
``threading`` often are).
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "achilles_like"
PURE_PACKAGES = ("protocol", "scheduling")
FORBIDDEN = ("twisted", "socket", "threading", "time", "asyncio", "select")

# Runs in a fresh interpreter. The top-level package is replaced by an empty stand-in
# with the same __path__, so that its __init__ (which imports the Twisted glue for the
# public API) does not run: what is measured is the pure subpackages alone.
IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys, types
root, package_dir, *subpackages = sys.argv[1:]
sys.path.insert(0, root)
stand_in = types.ModuleType("achilles_like")
stand_in.__path__ = [package_dir]
sys.modules["achilles_like"] = stand_in
before = set(sys.modules)
imported = []
for sub in subpackages:
    name = "achilles_like." + sub
    package = importlib.import_module(name)
    imported.append(name)
    for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
print(json.dumps({"imported": imported, "added": sorted(set(sys.modules) - before)}))
"""


def _is_forbidden(module: str) -> bool:
    top = module.split(".")[0]
    return top in FORBIDDEN


def _pure_sources() -> list[Path]:
    """Every Python source file of the pure packages, found with pkgutil."""
    sources = []
    for sub in PURE_PACKAGES:
        directory = PACKAGE / sub
        if (directory / "__init__.py").exists():
            sources.append(directory / "__init__.py")
        for info in pkgutil.walk_packages([str(directory)]):
            path = directory.joinpath(*info.name.split("."))
            sources.append(path / "__init__.py" if info.ispkg else path.with_suffix(".py"))
    return sorted(set(sources))


def _imported_names(tree: ast.AST) -> list[str]:
    """Absolute module names a module imports, statically or via __import__/import_module."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and (target := _dynamic_import_target(node)):
            names.append(target)
    return names


def _dynamic_import_target(call: ast.Call) -> str | None:
    """The module named by ``__import__("x")`` or ``import_module("x")``, if that is the call."""
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    first = call.args[0] if call.args else None
    if name in ("__import__", "import_module") and isinstance(first, ast.Constant):
        return first.value if isinstance(first.value, str) else None
    return None


def test_importing_the_pure_core_loads_no_io_threads_or_clock() -> None:
    """Importing every protocol and scheduling module adds none of the forbidden modules."""
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, str(ROOT), str(PACKAGE), *PURE_PACKAGES],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert "achilles_like.scheduling.scheduler" in report["imported"]
    assert [name for name in report["added"] if _is_forbidden(name)] == []


@pytest.mark.parametrize("source", _pure_sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_module_source_imports_no_io_threads_or_clock(source: Path) -> None:
    """No module of the pure core names a forbidden module in an import."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    assert [name for name in _imported_names(tree) if _is_forbidden(name)] == []


def test_the_static_check_sees_every_kind_of_import() -> None:
    """The ast check spots plain, from- and dynamic imports of a forbidden module."""
    tree = ast.parse(
        "import socket\nfrom twisted.internet import reactor\n"
        "import importlib\nimportlib.import_module('time')\n__import__('select')\n"
        "from . import time\n"
    )
    found = {name for name in _imported_names(tree) if _is_forbidden(name)}
    assert found == {"socket", "twisted.internet", "time", "select"}


def test_the_pure_sources_are_found() -> None:
    """The source walk finds the scheduling modules, so the static check is not vacuous."""
    found = {str(path.relative_to(PACKAGE)) for path in _pure_sources()}
    assert {"scheduling/__init__.py", "scheduling/scheduler.py", "scheduling/reorder.py"} <= found
