"""grec's feature store: definitions as code, an offline Parquet store, point-in-time training
sets, transforms fitted on the train split, online stores (SQLite, Redis) and data sources.

It knows no model: what it hands over is plain data (see docs/CONTRACTS.md).
"""

from feature_store.definitions import (
    DatasetDefinition,
    Entity,
    Feature,
    FeatureKind,
    FeatureView,
    SequenceFeature,
    Task,
    TaskKind,
    TaskRole,
    TextFeature,
)
from feature_store.errors import FeatureStoreError, IngestionError, SchemaError, UnknownDatasetError

__all__ = [
    "DatasetDefinition",
    "Entity",
    "Feature",
    "FeatureKind",
    "FeatureStoreError",
    "FeatureView",
    "IngestionError",
    "SchemaError",
    "SequenceFeature",
    "Task",
    "TaskKind",
    "TaskRole",
    "TextFeature",
    "UnknownDatasetError",
]
