"""The house rules of the code base (docs/ARCHITECTURE.md), read from the source as text: which
package may import which, no import circle between modules, `jobs/` by command family, and an opening
docstring on every module. A change that breaks one fails here with the modules named."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from jobs.cli import COMMAND_MODULES

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grec", "feature_store", "recommend", "registry", "serving", "jobs")
# Of grec's own packages, what each may import (docs/ARCHITECTURE.md, "Packages").
MAY_IMPORT: dict[str, set[str]] = {
    "grec": set(),
    "feature_store": set(),
    "recommend": {"grec", "feature_store"},
    "registry": {"grec", "feature_store", "recommend"},
    "serving": {"grec", "feature_store", "recommend", "registry"},
    "jobs": {"grec", "feature_store", "recommend", "registry", "serving"},
}
# What stands at the top of jobs/ beside the command families' packages.
JOBS_TOP_LEVEL = {"__init__.py", "cli.py", "options.py", "ray_runtime.py"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _ours(name: str) -> Iterator[str]:
    """The module of ours that importing `name` loads: the deepest one the dotted name names."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            yield candidate
            return


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_ours(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from pkg import submodule` loads the submodule; `from module import name` the module.
                found.update(_ours(f"{base}.{alias.name}"))
    found.discard(module)
    return found


IMPORTS = {module: _imports(module) for module in MODULES}


def test_each_package_imports_only_what_the_architecture_allows():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in IMPORTS.items()
        for target in targets
        if (source := module.split(".")[0]) != (imported := target.split(".")[0])
        and imported not in MAY_IMPORT[source]
    )
    assert not wrong, "imports that run against the package rules:\n" + "\n".join(wrong)


def test_no_import_circle_between_modules():
    names = sorted(MODULES)
    index = {name: i for i, name in enumerate(names)}
    # A package's own __init__ re-exporting its modules is not a circle with them: that arrow is
    # the package's face, so an edge from a package into its own submodules is left out.
    edges = [(index[m], index[t]) for m, targets in IMPORTS.items() for t in targets
             if not t.startswith(m + ".")]
    rows, cols = (np.array(side, dtype=np.int64) for side in zip(*edges))
    graph = csr_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(graph, directed=True, connection="strong")
    circles = [sorted(names[i] for i in np.flatnonzero(labels == label))
               for label in np.unique(labels) if np.count_nonzero(labels == label) > 1]
    assert not circles, "modules that import each other, directly or through others:\n" + "\n".join(
        ", ".join(circle) for circle in circles)


def test_jobs_holds_one_package_per_command_family():
    flat = sorted(p.name for p in (REPO_ROOT / "jobs").glob("*.py") if p.name not in JOBS_TOP_LEVEL)
    assert not flat, f"command modules at the top of jobs/ (each belongs in its family's package): {flat}"
    for module in COMMAND_MODULES:
        family = module.split(".")
        assert len(family) == 3 and family[0] == "jobs" and family[2] == "cli", module
        assert (REPO_ROOT / "jobs" / family[1] / "cli.py").is_file(), module


def test_every_module_opens_with_a_docstring_saying_what_it_owns():
    bare = sorted(str(path.relative_to(REPO_ROOT)) for path in MODULES.values()
                  if not ast.get_docstring(ast.parse(path.read_text())))
    assert not bare, f"modules without an opening docstring: {bare}"
