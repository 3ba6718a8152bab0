"""Shared model-lifecycle infrastructure: the MLflow registry (`registry.models`), the pyfunc model
logged for every version (`registry.pyfunc_model`) and tracking helpers (`registry.tracking`).
Batch jobs and the serving endpoint both import it; it imports neither."""
