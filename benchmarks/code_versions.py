"""Two versions of grec's code in one benchmark run: a baseline commit and this working tree.

The benchmarks that compare "before" and "after" in the same run (bench_one_hop, bench_refusals)
export the baseline's files with `git archive` and run each measurement in a child process whose
PYTHONPATH and working directory name that code, so that its Ray workers and Serve replicas import
it too (Ray puts the driver's working directory first on its workers' path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"


def git(*args: str) -> str:
    """The output of a git command run in this repository."""
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True).stdout


def export_commit(commit: str, into: Path) -> str:
    """The files of `commit` written under `into`; returns the commit's short hash."""
    short = git("rev-parse", "--short", commit).strip()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", short], capture_output=True, check=True)
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return short


def working_tree() -> dict[str, object]:
    """The "after" side's commit, and whether the working tree had uncommitted changes."""
    return {"after": git("rev-parse", "--short", "HEAD").strip(),
            "after_dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip())}


def use_code_root_if_child() -> None:
    """In a child (`--child ... --code-root DIR` on its command line), the measured code's modules
    first and this tree's last, only for what it alone has; otherwise this tree's."""
    if "--child" in sys.argv:
        code_root = sys.argv[sys.argv.index("--code-root") + 1]
        sys.path[:] = [code_root, str(BENCHMARKS), *[p for p in sys.path if p != str(BENCHMARKS)], str(REPO_ROOT)]
    else:
        sys.path[:0] = [str(REPO_ROOT), str(BENCHMARKS)]


def run_child(script: str, code: str, root: Path, arguments: list[str], timeout_s: float = 3600) -> list[dict]:
    """`script --child CODE --code-root ROOT ARGUMENTS` on the code under `root`: the JSON lines it
    prints that start with {"code", or one line saying that it failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(BENCHMARKS)])}
    command = [sys.executable, script, "--child", code, "--code-root", str(root), *arguments]
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        return [{"code": code, "failed": done.returncode, "stderr": done.stderr[-3000:]}]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"code"')]
