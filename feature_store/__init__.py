"""grec's feature store: definitions as code, an offline Parquet store, point-in-time training
sets, transforms fitted on the train split, online stores (SQLite, Redis) and data sources.

It knows no model: what it hands over is plain data (see docs/CONTRACTS.md).

Names are imported on first use, so a light submodule (the options, the source catalog the `grec`
command lists) does not pay for pyarrow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("DatasetDefinition", "Entity", "Feature", "FeatureKind", "FeatureView", "SequenceFeature",
                     "Task", "TaskKind", "TaskRole", "TextFeature"), "feature_store.definitions"),
    **dict.fromkeys(("FeatureStoreError", "IngestionError", "SchemaError", "SourceFileError",
                     "UnknownDatasetError"), "feature_store.errors"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'feature_store' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
