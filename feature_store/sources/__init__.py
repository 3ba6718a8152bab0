"""Data sources by name: `get_source("movielens-100k", options)`."""

from __future__ import annotations

from feature_store.errors import UnknownDatasetError
from feature_store.sources.adult import Adult
from feature_store.sources.base import DataSource, SourceOptions, SyntheticOptions
from feature_store.sources.movielens import MovieLens100K
from feature_store.sources.synthetic import SyntheticSource
from feature_store.sources.womens_clothing import WomensClothingReviews

SOURCES: dict[str, type[DataSource]] = {
    cls.name: cls for cls in (MovieLens100K, WomensClothingReviews, Adult, SyntheticSource)
}


def get_source(name: str, options: SourceOptions | None = None) -> DataSource:
    """The source registered under `name`; an unknown name lists the known ones."""
    if name not in SOURCES:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](options or SourceOptions())


__all__ = ["SOURCES", "DataSource", "SourceOptions", "SyntheticOptions", "get_source"]
