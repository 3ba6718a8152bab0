"""The `grec` command as a whole: one error path for every command (`grec CMD: error: ...`, exit 2),
logging that works whatever a library did to the root logger first, and a help that imports none of
the heavy libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from jobs.cli import main

HEAVY_MODULES = ("torch", "mlflow", "ray", "transformers", "matplotlib")
SYNTHETIC = ["--dataset", "synthetic", "--num-events", "300", "--num-items", "30"]


def _grec(*args: str, cwd=None, before: str = "") -> subprocess.CompletedProcess:
    """`grec ARGS` in a fresh interpreter, after running `before` (e.g. what a library does on import)."""
    code = f"import sys\n{before}\nfrom jobs.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd or REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


@pytest.mark.parametrize(("argv", "expected"), [
    (["data", "materialize", "--data", "{tmp}/nothing"], "grec data materialize: error: {tmp}/nothing is not a "
                                                         "prepared dataset"),
    (["data", "prepare", "--dataset", "synthetic", "--validation-fraction", "0.7", "--test-fraction", "0.5",
      "--out", "{tmp}/x"], "grec data prepare: error: validation_fraction + test_fraction must leave some events"),
    (["train", "--config", "{tmp}/missing.yaml"], "grec train: error: config file {tmp}/missing.yaml does not exist"),
    (["serve", "--model", "runs:/abc/model"], "grec serve: error: "),
    (["evaluate", "--model", "models:/m@champion", "--data", "{tmp}", "--promote", "--tracking-uri",
      "sqlite:///{tmp}/mlflow.db"], "grec evaluate: error: --promote evaluates the challenger"),
    (["predict", "--model", "models:/m/1", "--data", "{tmp}", "--out", "{tmp}/scores.csv", "--tracking-uri",
      "sqlite:///{tmp}/mlflow.db"], "grec predict: error: --out must name a .parquet file"),
])
def test_every_command_reports_bad_input_the_same_way(tmp_path, capsys, argv, expected):
    code = main([arg.format(tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(expected.format(tmp=tmp_path)), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_argument_errors_use_the_same_form():
    completed = _grec("data", "prepare", "--dataset", "synthetic")
    assert completed.returncode == 2
    assert "grec data prepare: error: the following arguments are required: --out" in completed.stderr


def test_grec_logs_at_the_chosen_level_although_a_library_configured_the_root_logger_first(tmp_path):
    # fbgemm_gpu (imported by torchrec) calls logging.info() on import, which runs basicConfig():
    # the root logger then has a WARNING handler before grec configures anything.
    library = "import logging; logging.info('library noise')"
    out = str(tmp_path / "data")
    first = _grec("-v", "data", "prepare", *SYNTHETIC, "--out", out, before=library)
    assert first.returncode == 0, first.stderr
    assert "DEBUG feature_store.prepare: preparing synthetic in" in first.stderr
    again = _grec("data", "prepare", *SYNTHETIC, "--out", out, "--overwrite", before=library)
    assert again.returncode == 0, again.stderr
    replaced = [line for line in again.stderr.splitlines() if "replaced the dataset that was in" in line]
    assert len(replaced) == 1 and " INFO feature_store.prepare: " in replaced[0]  # once, not once per handler
    assert "DEBUG" not in again.stderr and "library noise" not in again.stderr + first.stderr
    quiet = _grec("data", "prepare", *SYNTHETIC, "--out", out, "--overwrite", "--log-level", "warning")
    assert quiet.returncode == 0 and "replaced the dataset" not in quiet.stderr


def test_help_imports_no_heavy_library():
    """`grec --help` and every command's help: no torch, MLflow, Ray, transformers or matplotlib."""
    commands = [[], ["data"], ["data", "prepare"], ["data", "materialize"], ["train"], ["serve"], ["evaluate"],
                ["promote"], ["predict"], ["config-reference"]]
    code = (
        "import json, sys\n"
        "from jobs.cli import main\n"
        f"for command in {commands!r}:\n"
        "    try:\n"
        "        main([*command, '--help'])\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, command\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert completed.returncode == 0, completed.stderr
    imported = set(json.loads(completed.stderr.strip().splitlines()[-1]))
    assert imported.isdisjoint(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))
    assert "usage: grec" in completed.stdout and "config-reference" in completed.stdout


@pytest.mark.parametrize("argv", [["-v", "data", "prepare", "--dataset", "x", "--out", "y"],
                                  ["data", "prepare", "--dataset", "x", "--out", "y", "-v"],
                                  ["data", "prepare", "--log-level", "debug", "--dataset", "x", "--out", "y"]])
def test_the_log_level_goes_before_or_after_the_command(argv):
    from jobs.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.log_level, args.command_name) == ("DEBUG", "grec data prepare")
    assert build_parser().parse_args(["data", "prepare", "--dataset", "x", "--out", "y"]).log_level == "INFO"
