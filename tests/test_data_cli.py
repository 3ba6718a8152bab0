"""`grec data prepare` and `grec data materialize` end to end, their summary and their errors."""

from __future__ import annotations

import pytest

from feature_store.online import SEQUENCES_VIEW, open_online_store
from jobs.cli import build_parser, main


def test_prepare_then_materialize(tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--out", str(out), "--max-events", "2000",
                 "--sequence-length", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"prepared movielens-100k in {out}" in printed
    header = next(line for line in printed.splitlines() if line.strip().startswith("split"))
    assert header.split() == ["split", "rows", "users", "items", "like", "love", "rating"]
    train = next(line for line in printed.splitlines() if line.strip().startswith("train")).split()
    assert int(train[1]) == 1600 and 0.0 < float(train[4]) < 1.0
    assert (out / "summary.json").exists()

    assert main(["data", "materialize", "--data", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "users:" in printed and f"{SEQUENCES_VIEW}:" in printed
    with open_online_store(out / "online.sqlite") as store:
        assert len(store.read(SEQUENCES_VIEW, [196]).rows[0]["hist_item_id"]) <= 8


def test_bad_input_ends_with_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["data", "prepare", "--dataset", "movielens-1m", "--out", str(tmp_path / "x")]) == 2
    assert "unknown dataset 'movielens-1m'; known datasets:" in capsys.readouterr().err
    assert main(["data", "prepare", "--dataset", "synthetic", "--num-events", "100", "--task-correlation", "2",
                 "--out", str(tmp_path / "y")]) == 2
    assert "task_correlation must be in [-1, 1]" in capsys.readouterr().err
    assert main(["data", "materialize", "--data", str(tmp_path / "nothing")]) == 2
    assert "is not a prepared dataset" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["data", "prepare"], ["data", "materialize"]])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    text = capsys.readouterr().out
    for option in (["--dataset", "--out", "--sequence-length", "--max-events", "--data-dir", "--download",
                    "--num-tasks", "--task-correlation"] if command[1] == "prepare" else ["--data", "--online-store"]):
        assert option in text
