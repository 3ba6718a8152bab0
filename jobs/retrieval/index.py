"""The approximate nearest-neighbour index over item vectors: faiss (faiss-cpu).

Why faiss: it is maintained by Meta's FAIR team and released with CPU wheels for every Python grec
supports; it has exact, HNSW, IVF and quantized indexes behind one interface (a catalogue that
outgrows HNSW's memory moves to IVF-PQ without new code around it), and writes indexes in its own
binary format (no pickle). HNSW (`IndexHNSWFlat`, inner product over unit vectors = cosine) is the
default: no training step, and recall near 1 at catalogue sizes up to millions.
"""

from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["hnsw", "flat"]


def build_ann_index(vectors: np.ndarray, kind: IndexKind = "hnsw", hnsw_m: int = 32,
                    ef_construction: int = 200) -> faiss.Index:
    """An inner-product index over `vectors` [items, dim] (row i = item i of the caller's list)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    index.add(vectors)
    return index


def ann_recall(index: faiss.Index, items: np.ndarray, queries: np.ndarray, k: int, ef_search: int) -> float:
    """Share of the exact top-k neighbours (by inner product) that the index returns for `queries`."""
    k = min(k, len(items))
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :k]
    params = faiss.SearchParametersHNSW(efSearch=max(ef_search, k)) if isinstance(index, faiss.IndexHNSW) else None
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
    hits = sum(len(set(e.tolist()) & set(f.tolist())) for e, f in zip(exact, found, strict=True))
    return hits / exact.size
