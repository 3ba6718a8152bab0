"""Data sources by name: `get_source("movielens-100k", options)`.

The catalog names each source's class by its module, imported on first use: listing the sources
(the `grec` command's help) needs neither pyarrow nor the sources' code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feature_store.errors import UnknownDatasetError
from feature_store.options import SourceOptions, SyntheticOptions

if TYPE_CHECKING:
    from feature_store.sources.base import DataSource


@dataclass(frozen=True)
class SourceInfo:
    name: str
    description: str
    implementation: str  # "module:Class"


SOURCES: dict[str, SourceInfo] = {info.name: info for info in (
    SourceInfo("movielens-100k", "MovieLens-100K ratings: like / love / rating tasks, titles, genres, rating history",
               "feature_store.sources.movielens:MovieLens100K"),
    SourceInfo("movielens-100k-genres", "MovieLens-100K with 21 tasks: like / love / rating plus like per genre, "
               "each genre a scenario (labelled on its movies only)",
               "feature_store.sources.movielens_genres:MovieLensGenres"),
    SourceInfo("womens-clothing", "Women's Clothing E-Commerce Reviews: recommended / high-rating tasks with "
               "review text", "feature_store.sources.womens_clothing:WomensClothingReviews"),
    SourceInfo("adult", "Adult census income: income > 50K and never-married (the MMoE paper's pair)",
               "feature_store.sources.adult:Adult"),
    SourceInfo("synthetic", "Synthetic events with N tasks of controllable label correlation (MMoE construction)",
               "feature_store.sources.synthetic:SyntheticSource"),
)}


def get_source(name: str, options: SourceOptions | None = None) -> DataSource:
    """The source registered under `name`; an unknown name lists the known ones."""
    if name not in SOURCES:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(SOURCES))}")
    module, _, class_name = SOURCES[name].implementation.partition(":")
    return getattr(importlib.import_module(module), class_name)(name, options or SourceOptions())


__all__ = ["SOURCES", "SourceInfo", "SourceOptions", "SyntheticOptions", "get_source"]
