"""`grec data prepare` and `grec data materialize` end to end, their summary and their errors: every
bad input of a prepare ends with `grec data prepare: error: ...` naming the file, the column, the
expected and the found, exit code 2, and a dataset already in --out left byte for byte as it was."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from conftest import movielens_original_files

from feature_store.online import SEQUENCES_VIEW, open_online_store
from jobs.cli import build_parser, main


def test_prepare_then_materialize(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ml"
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--out", str(out), "--max-events", "2000",
                 "--sequence-length", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"prepared movielens-100k in {out}" in printed
    assert "split: global_time, validation from" in printed
    header = next(line for line in printed.splitlines() if line.strip().startswith("split "))
    assert header.split() == ["split", "rows", "users", "items", "like", "love", "rating", "rated"]
    train = next(line for line in printed.splitlines() if line.strip().startswith("train")).split()
    assert int(train[1]) == 1600 and 0.0 < float(train[4]) < 1.0
    assert (out / "summary.json").exists()

    monkeypatch.chdir(tmp_path)  # the default online store is .grec/online.sqlite here, where `grec serve` reads
    assert main(["data", "materialize", "--data", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "users:" in printed and f"{SEQUENCES_VIEW}:" in printed
    with open_online_store(tmp_path / ".grec" / "online.sqlite") as store:
        assert len(store.read(SEQUENCES_VIEW, [196]).rows[0]["hist_item_id"]) <= 8


def test_prepare_with_a_per_user_split_says_which(tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--out", str(out), "--max-events", "2000",
                 "--split", "user_time", "--sequence-length", "8"]) == 0
    printed = capsys.readouterr().out
    assert ("split: user_time (each user's last 20% of events test, the 10% before validation; ties in time: "
            "ingestion order)") in printed
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--out", str(tmp_path / "loo"), "--max-events",
                 "2000", "--split", "leave_one_out", "--test-fraction", "0.2"]) == 2
    assert "leave_one_out takes each user's last event for test" in capsys.readouterr().err


def test_bad_input_ends_with_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["data", "prepare", "--dataset", "movielens-1m", "--out", str(tmp_path / "x")]) == 2
    assert "grec data prepare: error: unknown dataset 'movielens-1m'; known datasets:" in capsys.readouterr().err
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


# ---- bad input never destroys a prepared dataset -------------------------------------------------------
def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _edit_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text(encoding="latin-1").splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")


@pytest.fixture
def old_dataset(tmp_path):
    """A prepared dataset in OUT (from good original files) and its bytes."""
    out = tmp_path / "out"
    good = movielens_original_files(tmp_path / "good")
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--data-dir", str(good), "--out", str(out)]) == 0
    return out, _snapshot(out)


def _bad_u_data(tmp_path, line: int, text: str) -> Path:
    folder = movielens_original_files(tmp_path / "bad")
    _edit_line(folder / "u.data", line, text)
    return folder


@pytest.mark.parametrize(("case", "expected"), [
    ("null key", "u.data, column 'user_id': expected a int64 value in every row, found an empty value in row 3"),
    ("wrong type", "u.data, column 'rating': expected int64, found 'five'"),
    ("missing column", "u.data: expected 4 tab-separated columns ['user_id', 'movie_id', 'rating', 'timestamp'], "
                       "found 3 in the row '186\\t302\\t3'"),
    ("empty file", "u.data is empty; expected rows of columns ['user_id', 'movie_id', 'rating', 'timestamp']"),
    ("no data directory", "movielens-100k: data directory"),
])
def test_a_failed_overwrite_names_the_problem_and_keeps_the_old_dataset(tmp_path, capsys, old_dataset, case,
                                                                        expected):
    out, before = old_dataset
    capsys.readouterr()
    if case == "null key":
        data_dir = _bad_u_data(tmp_path, 3, "\t302\t3\t891717742")
    elif case == "wrong type":
        data_dir = _bad_u_data(tmp_path, 5, "186\t302\tfive\t891717742")
    elif case == "missing column":
        data_dir = _bad_u_data(tmp_path, 4, "186\t302\t3")
    elif case == "empty file":
        data_dir = movielens_original_files(tmp_path / "bad")
        (data_dir / "u.data").write_text("")
    else:
        data_dir = tmp_path / "nonexistent"
    code = main(["data", "prepare", "--dataset", "movielens-100k", "--data-dir", str(data_dir), "--out", str(out),
                 "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("grec data prepare: error: ") and expected in err, err
    assert "Traceback" not in err
    assert _snapshot(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # nothing half-written left


def test_labels_out_of_range_name_the_file_column_and_value(tmp_path, capsys):
    from feature_store.sources import womens_clothing
    from feature_store.sources.base import read_widedeep_parquet

    raw = read_widedeep_parquet(womens_clothing.PARQUET_COPY, "w", womens_clothing.COLUMNS).slice(0, 300)
    recommended = raw["Recommended IND"].to_pylist()
    recommended[7] = 7
    raw = raw.set_column(raw.schema.get_field_index("Recommended IND"), "Recommended IND",
                         pa.array(recommended))
    folder = tmp_path / "csv"
    folder.mkdir()
    pacsv.write_csv(raw, folder / womens_clothing.CSV_NAME)
    out = tmp_path / "out"
    assert main(["data", "prepare", "--dataset", "womens-clothing", "--data-dir", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"womens-clothing, file {folder / womens_clothing.CSV_NAME}: view 'events', column 'label_recommended' " \
           "(binary task 'recommended'): expected 0 or 1, found 7 (first at row 7, 1 rows in all)" in err, err
    assert not out.exists()


def test_a_failed_prepare_leaves_nothing_so_a_retry_needs_no_overwrite(tmp_path, capsys):
    bad = _bad_u_data(tmp_path, 2, "186\t302\tfive\t891717742")
    out = tmp_path / "out"
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--data-dir", str(bad), "--out", str(out)]) == 2
    assert not out.exists() and list(tmp_path.glob(".out*")) == []
    good = movielens_original_files(tmp_path / "good")
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--data-dir", str(good), "--out", str(out)]) == 0
    assert "prepared movielens-100k" in capsys.readouterr().out


def test_output_that_is_a_file_or_a_dataset_without_overwrite_is_refused(tmp_path, capsys, old_dataset):
    out, before = old_dataset
    good = tmp_path / "good"
    capsys.readouterr()
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--data-dir", str(good), "--out", str(out)]) == 2
    assert f"grec data prepare: error: output {out} is not empty; pass overwrite=True (--overwrite)" \
        in capsys.readouterr().err
    assert _snapshot(out) == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--data-dir", str(good), "--out", str(a_file),
                 "--overwrite"]) == 2
    assert f"output {a_file} is a file; expected a directory" in capsys.readouterr().err
    assert a_file.read_text() == "mine"
    # --overwrite replaces a prepared dataset, never a folder of something else
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("...")
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--data-dir", str(good), "--out", str(mine),
                 "--overwrite"]) == 2
    assert "holds no prepared dataset; refusing to replace it" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "..."


def test_a_successful_overwrite_replaces_the_dataset(tmp_path, capsys, old_dataset):
    out, before = old_dataset
    fewer = movielens_original_files(tmp_path / "fewer", ratings=300)
    assert main(["data", "prepare", "--dataset", "movielens-100k", "--data-dir", str(fewer), "--out", str(out),
                 "--overwrite"]) == 0
    assert _snapshot(out) != before and "'events': 300" in (out / "summary.json").read_text().replace('"', "'")
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
