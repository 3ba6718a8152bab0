"""Datasets declared in one YAML file (feature_store/declaration.py, feature_store/sources/declared.py):
the published JSON schema, the built-in datasets as declarations (MovieLens-100K row for row), every
kind of column and task, files as partitioned directories, globs, CSV and s3:// URIs, events without
feature rows kept and counted, the implicit top-N dataset, `grec data init`, and every bad input
ending with `grec data prepare: error: ...` (exit 2, no traceback) naming the file, the column, the
expected and the found, with a dataset already at --out left byte for byte as it was."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO_ROOT, movielens_original_files
from own_data import write_shop

from feature_store.declaration import DeclarationError, declaration_schema_text, parse_declaration
from feature_store.options import SourceOptions
from feature_store.prepare import open_prepared, prepare_dataset
from feature_store.sources.declared import open_declared
from jobs.cli import main

DATASETS = REPO_ROOT / "configs" / "datasets"
def _splits(prepared) -> dict[str, pa.Table]:
    return {split: prepared.read_split(split) for split in ("train", "validation", "test")}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    return write_shop(tmp_path_factory.mktemp("shop"))


@pytest.fixture(scope="module")
def shop_prepared(shop, tmp_path_factory):
    return prepare_dataset(open_declared(shop), tmp_path_factory.mktemp("shop_out") / "data")


# ---- the declaration's schema ---------------------------------------------------------------------------
def test_the_published_schema_is_what_the_models_generate(capsys):
    page = REPO_ROOT / "docs" / "dataset_declaration.schema.json"
    assert page.read_text() == declaration_schema_text(), (
        "docs/dataset_declaration.schema.json is out of date: run "
        "`grec data declaration-schema --out docs/dataset_declaration.schema.json`")
    assert main(["data", "declaration-schema"]) == 0
    assert capsys.readouterr().out == declaration_schema_text()


def _docs_examples() -> list[tuple[str, object]]:
    text = (REPO_ROOT / "docs" / "DATA.md").read_text()
    return [(f"docs/DATA.md example {i}", yaml.safe_load(block))
            for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.DOTALL))]


def test_shipped_declarations_and_the_docs_examples_are_valid():
    """Whole declarations (configs/datasets, the docs' full example) against the published schema and
    the models; the docs' lists of features, tables, sequences and tasks item by item."""
    from pydantic import TypeAdapter, ValidationError

    from feature_store.declaration import Events, Feature, FeatureTable, Sequence, TaskDeclaration

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(declaration_schema_text())
    whole = [(str(p), yaml.safe_load(p.read_text())) for p in sorted(DATASETS.glob("*.yaml"))]
    parts = _docs_examples()
    whole += [(where, data) for where, data in parts if isinstance(data, dict)]
    assert len(whole) == 3 and len(parts) >= 6
    for where, data in whole:
        jsonschema.validate(data, schema)
        parse_declaration(data, where)
    kinds = [TypeAdapter(model) for model in (Feature, FeatureTable, Events, Sequence, TaskDeclaration)]
    for where, data in parts:
        for item in data if isinstance(data, list) else []:
            fits = 0
            for kind in kinds:
                try:
                    kind.validate_python(item)
                    fits += 1
                except ValidationError:
                    pass
            assert fits == 1, f"{where}: {item} is not a feature, table, sequence or task of a declaration"


# ---- the built-ins as declarations --------------------------------------------------------------------
def test_the_declared_movielens_100k_prepares_what_the_built_in_source_does(tmp_path):
    files = movielens_original_files(tmp_path / "ml-100k", ratings=None)
    declared = prepare_dataset(open_declared(DATASETS / "movielens-100k.yaml", SourceOptions(data_dir=files)),
                               tmp_path / "declared")
    built_in = prepare_dataset("movielens-100k", tmp_path / "built_in")  # from the packaged Parquet copies
    assert declared.spec() == built_in.spec()
    assert declared.definition().to_dict() == built_in.definition().to_dict()
    assert json.loads(declared.transforms_path.read_text()) == json.loads(built_in.transforms_path.read_text())
    rows, expected = _splits(declared), _splits(built_in)
    assert sum(t.num_rows for t in rows.values()) == 100_000
    for split in rows:
        assert rows[split].schema == expected[split].schema
        assert rows[split].equals(expected[split]), split  # same rows, same order, same values


def test_the_declared_womens_clothing_matches_the_built_in_but_for_what_only_code_makes(tmp_path):
    from feature_store.sources.base import widedeep_file

    folder = tmp_path / "kaggle"
    folder.mkdir()
    original = pq.read_table(widedeep_file("WomensClothingE-CommerceReviews.parquet.brotli", "test")).to_pandas()
    original.head(3000).to_csv(folder / "Womens Clothing E-Commerce Reviews.csv")  # its first column numbers rows
    options = SourceOptions(data_dir=folder)
    declared = prepare_dataset(open_declared(DATASETS / "womens-clothing.yaml", options), tmp_path / "declared")
    built_in = prepare_dataset("womens-clothing", tmp_path / "built_in", options=options)
    # Reviewer ids, times and the bag of words are made by code (the declaration's header says how it differs).
    made = {"user_id", "event_timestamp", "review_words"}
    rows, expected = _splits(declared), _splits(built_in)
    for split in rows:
        mine, theirs = rows[split].sort_by("event_timestamp"), expected[split].sort_by("event_timestamp")
        assert set(theirs.column_names) - set(mine.column_names) == {"review_words"}
        assert mine.num_rows == theirs.num_rows
        for column in set(mine.column_names) - made:
            assert mine.column(column).equals(theirs.column(column)), (split, column)
    spec, built_in_spec = declared.spec(), built_in.spec()
    assert spec["tasks"] == built_in_spec["tasks"] and spec["text"] == built_in_spec["text"]
    assert [c for c in built_in_spec["categorical"] if c["name"] != "review_words"] == spec["categorical"]


# ---- every kind of column and task ---------------------------------------------------------------------
KINDS_DECLARATION = """\
name: kinds
events:
  path: events.csv
  user: customer
  item: {column: product, type: int64}
  time: {column: when, format: "%Y-%m-%d %H:%M:%S"}
  features:
    - {column: channel, kind: categorical}
users:
  path: customers.csv
  key: customer
  time: {column: since, format: "%Y-%m-%d"}
  ttl: 10d
  features:
    - {column: tier, kind: categorical}
    - {column: points, kind: numeric}
items:
  path: products/*.csv
  key: product
  features:
    - {column: name, kind: text, max_length: 8}
    - {column: labels, kind: multi_hot, separator: "|"}
    - {name: traits, kind: multi_hot, flags: [is_red, is_big]}
    - {column: launched, name: launch_month, kind: numeric, date_format: "%d/%m/%Y", date_part: month}
sequences:
  - {name: last_products, column: product, length: 3}
tasks:
  - {name: good, kind: binary, positive: "stars >= 4 and `returned flag` == 0", descriptors: {type: satisfaction}}
  - {name: spend, kind: regression, column: spend, role: auxiliary, missing_labels: true}
  - {name: size, kind: multiclass, column: size_bought, classes: [S, M, L], role: auxiliary}
  - {name: bought, kind: implicit, role: auxiliary}
"""


def _write_kinds(folder: Path) -> Path:
    """60 daily purchases of 4 customers over 5 products, as CSV files of every form."""
    folder.mkdir(parents=True, exist_ok=True)
    first = dt.datetime(2024, 1, 1, 10)
    rows = []
    for i in range(60):
        rows.append({"when": (first + dt.timedelta(days=i)).strftime("%Y-%m-%d %H:%M:%S"), "customer": f"c{i % 4}",
                     "product": i % 5 + 1, "channel": ["app", "web"][i % 2], "stars": [5, 2][i % 2],
                     "returned flag": int(i % 6 == 0), "spend": None if i % 7 == 3 else i * 1.5,
                     "size_bought": "SML"[i % 3]})
    pacsv.write_csv(pa.Table.from_pylist(rows).cast(pa.schema([
        ("when", pa.string()), ("customer", pa.string()), ("product", pa.int64()), ("channel", pa.string()),
        ("stars", pa.int64()), ("returned flag", pa.int64()), ("spend", pa.float64()), ("size_bought", pa.string())])),
        folder / "events.csv")
    # c0 changes tier on Feb 1; c1's row expires after 10 days; c2 has no row; c3's is too old to hold.
    (folder / "customers.csv").write_text("customer,since,tier,points\nc0,2024-01-01,gold,10\nc0,2024-02-01,silver,3\n"
                                          "c1,2024-01-01,bronze,1\nc3,2023-11-01,gold,7\n")
    (folder / "products").mkdir()
    (folder / "products" / "a.csv").write_text(
        "product,name,labels,is_red,is_big,launched\n1,red ball,sale|toy,1,0,15/03/2023\n2,big box,,0,1,01/12/2023\n")
    (folder / "products" / "b.csv").write_text(  # product 5 has no row
        "product,name,labels,is_red,is_big,launched\n3,hat,new | sale,1,1,\n4,cup,kitchen,0,0,09/07/2022\n")
    (folder / "kinds.yaml").write_text(KINDS_DECLARATION)
    return folder / "kinds.yaml"


def test_every_kind_of_column_and_task_is_read_as_declared(tmp_path):
    prepared = prepare_dataset(open_declared(_write_kinds(tmp_path / "kinds")), tmp_path / "out")
    spec = prepared.spec()
    assert [(t["name"], t["kind"], t["implicit"]) for t in spec["tasks"]] == [
        ("good", "binary", False), ("spend", "regression", False), ("size", "multiclass", False),
        ("bought", "binary", True)]
    assert {c["name"]: (c["source"], c["multi_hot"]) for c in spec["categorical"]} == {
        "customer": ("user", False), "product": ("item", False), "tier": ("user", False),
        "labels": ("item", True), "traits": ("item", True), "channel": ("context", False)}
    assert [t["name"] for t in spec["text"]] == ["name"] and spec["sequences"][0]["length"] == 3
    rows = pa.concat_tables(_splits(prepared).values()).sort_by("event_timestamp").to_pylist()
    assert len(rows) == 60
    by_day = {(r["event_timestamp"] - dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)).days: r for r in rows}
    assert (by_day[0]["tier"], by_day[0]["points"]) == ("gold", 10.0)
    assert by_day[32]["tier"] == "silver"  # c0 on Feb 2: the row of Feb 1 holds
    assert by_day[1]["tier"] == "bronze" and by_day[13]["tier"] is None  # c1: within the TTL, then expired
    assert by_day[2]["tier"] is None and by_day[3]["tier"] is None  # c2 has no row; c3's is too old
    assert by_day[0]["labels"] == ["sale", "toy"] and by_day[0]["traits"] == ["is_red"]
    assert by_day[1]["labels"] is None and by_day[1]["traits"] == ["is_big"]  # product 2: an empty field is missing
    assert by_day[2]["labels"] == ["new", "sale"] and by_day[2]["launch_month"] is None  # product 3: no date
    assert by_day[0]["launch_month"] == 3.0 and by_day[3]["launch_month"] == 7.0
    assert by_day[4]["name"] is None and by_day[4]["traits"] is None  # product 5 has no row
    assert by_day[17]["last_products"] == [1, 5, 4]  # c1: the last three products before, oldest first
    assert [by_day[i]["label_good"] for i in range(4)] == [0, 0, 1, 0]  # day 0: returned
    assert by_day[3]["label_spend"] is None and by_day[4]["label_spend"] == 6.0
    assert [by_day[i]["label_size"] for i in range(3)] == [0, 1, 2]
    assert {r["label_bought"] for r in rows} == {1}
    summary = prepared.summary()
    assert summary["source"] == {"events_without_user_features": 15, "events_without_item_features": 12}


# ---- where the files are ----------------------------------------------------------------------------
def test_a_partitioned_directory_a_glob_and_one_file_give_the_same_dataset(shop, shop_prepared, tmp_path):
    folder = tmp_path / "shop"
    shutil.copytree(shop.parent, folder)
    declaration = (folder / "shop.yaml").read_text()
    expected = _splits(shop_prepared)
    (folder / "glob.yaml").write_text(declaration.replace("path: events ", "path: events/day=*/*.parquet "))
    one = pa.concat_tables(pq.read_table(p) for p in sorted((folder / "events").rglob("*.parquet")))
    pq.write_table(one, folder / "all_events.parquet")
    (folder / "one.yaml").write_text(declaration.replace("path: events ", "path: all_events.parquet "))
    for name in ("glob.yaml", "one.yaml"):
        got = _splits(prepare_dataset(open_declared(folder / name), tmp_path / name))
        for split in expected:
            assert got[split].equals(expected[split]), (name, split)


def test_files_on_object_storage_read_as_local_ones(shop, shop_prepared, s3, tmp_path):
    import pyarrow.fs as pafs

    bucket = s3.create_bucket("grec-declared-shop")
    fs, path = pafs.FileSystem.from_uri(f"{bucket}/raw")
    pafs.copy_files(str(shop.parent), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    declaration = shop.read_text()
    for local in ("events ", "users.parquet", "items.parquet"):
        declaration = declaration.replace(f"path: {local}", f"path: {bucket}/raw/{local}")
    (tmp_path / "s3.yaml").write_text(declaration)
    got = _splits(prepare_dataset(open_declared(tmp_path / "s3.yaml"), tmp_path / "out"))
    for split, table in _splits(shop_prepared).items():
        assert got[split].equals(table), split


# ---- what a prepare says about the data --------------------------------------------------------------
def test_events_without_a_feature_row_are_kept_and_counted(shop, shop_prepared, capsys, tmp_path):
    summary = shop_prepared.summary()
    events = pq.read_table(shop.parent / "events")
    profiled = set(pq.read_table(shop.parent / "users.parquet").column("visitor").to_pylist())
    unprofiled = sum(v not in profiled for v in events.column("visitor").to_pylist())
    assert unprofiled > 0
    assert summary["source"] == {"events_without_user_features": unprofiled, "events_without_item_features": 0}
    assert sum(s["rows"] for s in summary["splits"].values()) == events.num_rows
    assert main(["data", "prepare", "--definition", str(shop), "--out", str(tmp_path / "cli")]) == 0
    assert (f"events kept without a user feature row (their user features empty): {unprofiled}"
            in capsys.readouterr().out)


@pytest.fixture(scope="module")
def implicit_shop(tmp_path_factory):
    """The implicit top-N dataset, prepared: training on it needs training-time negative sampling
    (jobs/train), which extends from here."""
    declaration = write_shop(tmp_path_factory.mktemp("views"), implicit=True)
    out = tmp_path_factory.mktemp("views_out") / "data"
    assert main(["data", "prepare", "--definition", str(declaration), "--out", str(out)]) == 0
    return open_prepared(out)


def test_the_implicit_top_n_dataset_prepares_and_materializes(implicit_shop, tmp_path):
    from feature_store.online import SEEN_VIEW, open_online_store

    task, = implicit_shop.spec()["tasks"]
    assert (task["name"], task["kind"], task["implicit"]) == ("view", "binary", True)
    for split, table in _splits(implicit_shop).items():
        assert pc.all(pc.equal(table.column("label_view"), 1)).as_py(), split  # every event a positive
    assert all(s["tasks"]["view"]["positive_rate"] == 1.0 for s in implicit_shop.summary()["splits"].values())
    store = tmp_path / "online.sqlite"
    assert main(["data", "materialize", "--data", str(implicit_shop.root), "--online-store", str(store)]) == 0
    user = implicit_shop.read_split("train").column("user_id")[0].as_py()
    with open_online_store(store) as online:
        assert online.read(SEEN_VIEW, [user]).rows[0]


# ---- grec data init ------------------------------------------------------------------------------------
def test_init_drafts_a_commented_declaration_that_prepares(shop, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(shop.parent)
    out = tmp_path / "declarations" / "mine.yaml"
    assert main(["data", "init", "--events", "events", "--items", "items.parquet", "--users", "users.parquet",
                 "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    declaration = parse_declaration(yaml.safe_load(text), str(out))
    assert (declaration.events.user.column, declaration.events.item.column) == ("visitor", "sku")
    assert (declaration.events.time.column, declaration.events.time.unit) == ("ts", "ms")
    assert [(t.name, t.kind) for t in declaration.tasks] == [("clicked", "binary"), ("dwell_s_high", "binary")]
    assert declaration.tasks[1].positive.startswith("dwell_s > ")  # its median, to check
    assert declaration.tasks[0].positive == "clicked == 1" and declaration.tasks[0].role == "main"
    assert {f.column: f.kind for f in declaration.items.features} == {
        "title": "text", "tags": "multi_hot", "price": "numeric"}
    assert "  # - {column: device, kind: categorical}" in text  # an event column is never a feature unasked
    assert text.count("# guessed:") >= 10
    assert main(["data", "prepare", "--definition", str(out), "--out", str(tmp_path / "data")]) == 0
    assert main(["data", "init", "--events", "events", "--out", str(out)]) == 2
    assert f"{out} exists; pass --overwrite" in capsys.readouterr().err


def test_init_makes_an_implicit_task_when_no_column_is_an_outcome(tmp_path, capsys, monkeypatch):
    declaration = write_shop(tmp_path / "views", implicit=True)
    monkeypatch.chdir(declaration.parent)
    assert main(["data", "init", "--events", "events", "--out", "drafted.yaml"]) == 0
    drafted = parse_declaration(yaml.safe_load(Path("drafted.yaml").read_text()), "drafted.yaml")
    assert [(t.name, t.kind) for t in drafted.tasks] == [("interaction", "implicit")]


# ---- bad input -------------------------------------------------------------------------------------------
def _replace(old: str, new: str):
    def edit(folder: Path) -> None:
        path = folder / "shop.yaml"
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
    return edit


def _csv_events_with_bad_time(folder: Path) -> None:
    events = pq.read_table(folder / "events").drop_columns(["day"])
    seconds = pc.cast(pc.divide(events.column("ts"), 1000), pa.int64())
    text = pc.strftime(pc.cast(seconds, pa.timestamp("s", "UTC")), format="%Y-%m-%d %H:%M:%S")
    text = pa.array(text.to_pylist()[:40] + ["yesterday"] + text.to_pylist()[41:])
    pacsv.write_csv(events.set_column(2, "ts", text), folder / "events.csv")
    _replace("path: events ", "path: events.csv ")(folder)
    _replace("{column: ts, unit: ms}", "{column: ts, format: '%Y-%m-%d %H:%M:%S'}")(folder)


def _unknown_format(folder: Path) -> None:
    (folder / "items.parquet").rename(folder / "items.data")
    _replace("path: items.parquet", "path: items.data")(folder)


def _repeated_item(folder: Path) -> None:
    items = pq.read_table(folder / "items.parquet")
    pq.write_table(pa.concat_tables([items, items.slice(1, 1)]), folder / "items.parquet")


BAD_INPUT = {
    "missing file": (_replace("path: items.parquet", "path: item.parquet"),
                     r"shop\.yaml: items\.path: file \S+/item\.parquet does not exist"),
    "file of no known format": (_unknown_format,
                                r"items\.path: cannot tell the format of \S+items\.data from its files' names "
                                r"\(items\.data\); declare format: parquet or format: csv"),
    "missing column": (_replace("{column: visitor, name: user_id}", "{column: visiter, name: user_id}"),
                       r"file \S+day=0/part-0\.parquet: no column 'visiter' \(the user id\); did you mean 'visitor'\?"),
    "column of the wrong type": (_replace("{column: country, kind: categorical}", "{column: country, kind: numeric}"),
                                 r"file \S+users\.parquet, column 'country': expected numbers for numeric feature "
                                 r"'country', found string"),
    "time that does not parse": (_csv_events_with_bad_time,
                                 r"file \S+events\.csv, column 'ts': expected a time in the format "
                                 r"'%Y-%m-%d %H:%M:%S', found 'yesterday' in row 41"),
    "condition naming an unknown column": (
        _replace("positive: clicked == 1", "positive: clickd == 1"),
        r"tasks\[0\] \('click'\): the condition 'clickd == 1' names column 'clickd', which file \S+ does not hold; "
        r"did you mean 'clicked'\?"),
    "condition without positives": (
        _replace("positive: dwell_s > 30 and clicked == 1", "positive: dwell_s > 1e9"),
        r"task 'long_view': the condition 'dwell_s > 1e9' over file\(s\) \S+ gives no positive in the train split"),
    "condition with only positives": (
        _replace("positive: dwell_s > 30 and clicked == 1", "positive: dwell_s >= 0"),
        r"task 'long_view': the condition 'dwell_s >= 0' .* gives only positives in the train split"),
    "repeated key in a static table": (
        _repeated_item, r"file \S+items\.parquet, column 'sku': key 'SKU001' appears in 2 rows \(rows 2, 49\); a "
                        r"static feature table holds one row per key"),
    "unknown declaration key": (_replace("sequences:", "sequence:"),
                                r"shop\.yaml: sequence: unknown key 'sequence'; did you mean 'sequences'\?"),
    "unknown nested key": (_replace("{column: tags, kind: multi_hot}", "{column: tags, knd: multi_hot}"),
                           r"items\.features\[1\]\.knd: unknown key 'knd'; did you mean 'kind'\?"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_named_with_exit_2_and_leaves_the_dataset_in_out(case, shop, shop_prepared, tmp_path, capsys):
    edit, message = BAD_INPUT[case]
    folder = tmp_path / "shop"
    shutil.copytree(shop.parent, folder)
    edit(folder)
    out = tmp_path / "out"
    shutil.copytree(shop_prepared.root, out)
    before = _snapshot(out)
    code = main(["data", "prepare", "--definition", str(folder / "shop.yaml"), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]  # after the progress bars of a prepare that failed late
    assert last.startswith("grec data prepare: error: ") and "Traceback" not in err
    assert re.search(message, last), err
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "shop"]  # no staging folder left


def test_a_declaration_error_lists_every_problem_at_once():
    with pytest.raises(DeclarationError) as raised:
        parse_declaration({"name": "x", "events": {"path": "e", "user": "u", "item": "i"},
                           "tasks": [{"name": "t", "kind": "binery"}]}, "x.yaml")
    assert str(raised.value) == (
        "x.yaml: events.time: missing (required); tasks[0]: Input tag 'binery' found using 'kind' does not match "
        "any of the expected tags: 'binary', 'regression', 'multiclass', 'implicit'; did you mean 'binary'?")
