"""`grec build-index`: the retrieval index of a model version (two-tower vectors + an ANN index)."""
