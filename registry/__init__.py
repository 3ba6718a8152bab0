"""Shared model-lifecycle infrastructure: the MLflow registry (`registry.models`), where a version
keeps its files (`registry.layout`) and their sha256 manifests (`registry.integrity`), the retrieval
index (`registry.retrieval_index`), the pyfunc loader for MLflow's tools (`registry.pyfunc_model`)
and tracking helpers (`registry.tracking`). Batch jobs and the serving endpoint both import it; it
imports neither."""
