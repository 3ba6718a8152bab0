"""The container images, offline (no container runtime here): each installs its dependencies from
the set-up's own inputs before any of grec's code is copied in, so a code change rebuilds only the
last layers and runs nothing; it runs as a user, not root; it installs grec's runtime set (no test
tools); `.dockerignore` keeps local state out; hadolint (requirements/test.in) finds nothing."""

from __future__ import annotations

import glob
import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
CODE = {"grec", "feature_store", "registry", "jobs", "serving", "configs", "infra"}


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    text = (REPO_ROOT / "infra" / "docker" / dockerfile).read_text()
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in logical.splitlines() if line.strip()]


def _copy_sources(arguments: str) -> list[str]:
    """The build context's files a COPY takes (none for `--from`: those come from another image)."""
    if "--from=" in arguments:
        return []
    parts = [p for p in arguments.split() if not p.startswith("--")]
    return [p.rstrip("/") for p in parts[:-1]]


def _setup_runs(steps: list[tuple[str, str]]) -> list[int]:
    return [i for i, (op, args) in enumerate(steps) if op == "RUN" and "scripts/setup.sh" in args]


def _setup_inputs() -> list[str]:
    """The files whose hash decides whether scripts/setup.sh reinstalls the dependencies."""
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    body = re.search(r"deps_hash\(\) \{(.*?)\n\}", setup, re.DOTALL).group(1)
    return [token for token in body.split() if "/" in token and not token.startswith(("$", "|", "-"))]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dependencies_are_installed_from_the_set_up_inputs_before_the_code(dockerfile):
    steps = _instructions(dockerfile)
    first, last = _setup_runs(steps)
    assert "--runtime" in steps[first][1] and "--deps-only" in steps[first][1]
    copied_before = [s for op, args in steps[:first] if op == "COPY" for s in _copy_sources(args)]
    assert set(copied_before) <= {"scripts/setup.sh", "scripts/prebuild_deepspeed_ops.py", "requirements"}
    # everything the dependency step hashes is there when it runs
    for pattern in _setup_inputs():
        matches = glob.glob(str(REPO_ROOT / pattern))
        assert matches and all(any(Path(m).relative_to(REPO_ROOT).as_posix().startswith(s) for s in copied_before)
                               for m in matches), pattern
    # then grec's editable install, from pyproject.toml alone; the code comes after the last RUN
    assert "--runtime" in steps[last][1] and "--deps-only" not in steps[last][1]
    assert {s for op, args in steps[first:last] if op == "COPY" for s in _copy_sources(args)} == {
        "pyproject.toml", "README.md"}
    code_copies = [i for i, (op, args) in enumerate(steps) if op == "COPY" and set(_copy_sources(args)) & CODE]
    assert {s for i in code_copies for s in _copy_sources(steps[i][1])} == CODE
    assert min(code_copies) > last and all(op != "RUN" for op, _ in steps[min(code_copies):])


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_runs_as_a_user_not_root(dockerfile):
    steps = _instructions(dockerfile)
    users = [(i, args.split(":")[0]) for i, (op, args) in enumerate(steps) if op == "USER"]
    assert users and users[0][0] < _setup_runs(steps)[0], "the set-up must run as the image's user"
    assert users[-1][1] not in ("root", "0")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_holds_the_runtime_set_and_says_its_code_is_there(dockerfile):
    steps = _instructions(dockerfile)
    assert all("--runtime" in steps[i][1] for i in _setup_runs(steps))  # no test tools
    assert not any("pip install" in args for op, args in steps if op == "RUN")  # nothing of its own
    assert any("GREC_SHIP_CODE=0" in args for op, args in steps if op == "ENV")


def test_dockerignore_keeps_local_state_out_and_the_image_inputs_in():
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".cache", ".grec", ".git"} <= ignored
    for dockerfile in DOCKERFILES:
        for op, args in _instructions(dockerfile):
            if op == "COPY":
                for source in _copy_sources(args):
                    assert (REPO_ROOT / source).exists() and source.split("/")[0] not in ignored, source


def test_hadolint_finds_nothing():
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    assert hadolint.exists(), "hadolint is pinned in requirements/test.in (run `make setup`)"
    result = subprocess.run([str(hadolint), "--no-color", *(f"infra/docker/{d}" for d in DOCKERFILES)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _arg_defaults(dockerfile: str) -> dict[str, str]:
    return {name: value.strip('"') for op, args in _instructions(dockerfile) if op == "ARG" and "=" in args
            for name, value in [args.split("=", 1)]}


def test_both_images_run_one_python_build():
    """Ray refuses a node whose Python differs from the head's, patch version included, and the GPU
    RayJob puts CUDA workers beside a CPU head: both images install the same pinned interpreter
    with the same pinned uv, create grec's environment with it, and take no Python from elsewhere."""
    pins = []
    for dockerfile in DOCKERFILES:
        args, steps = _arg_defaults(dockerfile), _instructions(dockerfile)
        assert re.fullmatch(r"3\.\d+\.\d+", args["PYTHON_VERSION"]), "a patch version, not a moving 3.x"
        assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", args["UV_IMAGE"])
        pins.append((args["PYTHON_VERSION"], args["UV_IMAGE"]))
        bases = [a.split()[0] for op, a in steps if op == "FROM"]
        assert not any(args.get(b.strip("${}"), b).startswith("python:") for b in bases), "a Python of its own"
        assert any(op == "RUN" and 'uv python install "${PYTHON_VERSION}"' in a for op, a in steps)
        assert not any(op == "RUN" and re.search(r"apt-get install[^&]*\bpython3", a) for op, a in steps)
        major_minor = args["PYTHON_VERSION"].rsplit(".", 1)[0]
        assert any(op == "ENV" and f"PYTHON=python{major_minor}" in a for op, a in steps)  # setup.sh's venv
    assert len(set(pins)) == 1, pins
