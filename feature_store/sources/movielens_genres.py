"""MovieLens-100K as a many-task, multi-scenario dataset: each genre is a scenario.

The rows, features and sequences are MovieLens-100K's (sources/movielens.py); the tasks are its
`like`, `love` and `rating` plus `like_<genre>` for each of the 18 genres: "the user rates the movie
4 or more", labelled only on the ratings of movies of that genre (null elsewhere, so the task's
loss and metrics read its own scenario's rows). Each genre task carries the descriptors
{type: engagement, scenario: <genre>}: 21 tasks on real data, most of them related (a user who
likes films likes films) and some rare (Film-Noir, Documentary).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from feature_store.definitions import Task, TaskKind, TaskRole
from feature_store.sources.movielens import GENRES, MovieLens100K, genre_flags

# "unknown" marks 2 movies with no genre: not a scenario.
SCENARIO_GENRES = tuple(g for g in GENRES if g != "unknown")


def genre_task_name(genre: str) -> str:
    """`like_<genre>` in the characters task names allow: Children's -> like_childrens, Sci-Fi -> like_sci_fi."""
    return "like_" + re.sub(r"[^a-z0-9]+", "_", genre.lower().replace("'", "")).strip("_")


class MovieLensGenres(MovieLens100K):
    def tasks(self) -> tuple[Task, ...]:
        genre_tasks = tuple(
            Task(genre_task_name(g), TaskKind.BINARY, role=TaskRole.AUXILIARY, missing_labels=True,
                 descriptors={"type": "engagement", "scenario": g})
            for g in SCENARIO_GENRES)
        return super().tasks() + genre_tasks

    def events(self, ratings: pa.Table, items: pa.Table) -> pa.Table:
        events = super().events(ratings, items)
        flags = genre_flags(items)
        row_of_movie = {movie: row for row, movie in enumerate(items["movie_id"].to_pylist())}
        movie_rows = np.fromiter((row_of_movie[m] for m in ratings["movie_id"].to_pylist()), dtype=np.int64,
                                 count=ratings.num_rows)
        like = events["label_like"].to_numpy()
        for genre in SCENARIO_GENRES:
            in_genre = flags[movie_rows, GENRES.index(genre)]
            events = events.append_column(f"label_{genre_task_name(genre)}", pa.array(like, pa.int64(), mask=~in_genre))
        return events
