"""Errors the feature store raises. All are ValueErrors: they describe bad input, not bugs."""

from __future__ import annotations


class FeatureStoreError(ValueError):
    """Base class of every feature-store error."""


class SchemaError(FeatureStoreError):
    """A table does not match the schema its view declares (columns, types)."""


class IngestionError(FeatureStoreError):
    """Rows that cannot be ingested (empty input, null keys, missing timestamps, null labels)."""


class UnknownDatasetError(FeatureStoreError):
    """A dataset name that no registered source provides."""


class SourceFileError(FeatureStoreError):
    """A source file that cannot be read as declared (missing, empty, wrong columns, types or values)."""
