"""`grec encode-users`: a registered model's user side, computed once per user with Ray Data,
compressed (grec.user_tokens) and written to the online store for the endpoint
(feature_store.online.representations).

Every user of the prepared dataset (its user views and events) gets one row built exactly as the
endpoint builds a request row (`build_request_rows` on the same online store, no candidate), so a
stored representation is what the endpoint would compute for that user now. A pool of actors, each
holding the model version, encodes the rows (`encode_user_tokens`), compresses them and writes them
in batches; the version's meta record is written last, so the endpoint never reads a version's
records before all of them are there. With `rank` a low-rank projection per token slot is fitted
first (PCA over a sample of users) and the stored coefficients are its int8 codes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

# Users whose tokens the low-rank projection is fitted on (PCA of [sample, n, d]).
PROJECTION_SAMPLE = 20_000


@dataclass(frozen=True)
class EncodeUsersSummary:
    model_name: str
    model_version: str
    users: int
    num_tokens: int
    d_model: int
    compression: str
    rank: int | None
    payload_bytes_per_user: int  # the stored vectors (codes and scales)
    fp32_bytes_per_user: int  # the same tokens as float32
    explained_variance: float | None  # of the low-rank projection on its sample


class UserEncoder:
    """A Ray Data callable class: user keys in, (user, digest, tokens) out, or, with a meta record,
    compressed and written to the online store (then only the count comes back)."""

    def __init__(self, model_uri: str, tracking_uri: str, online_store: str, meta: Any = None,
                 torch_threads: int = 1) -> None:
        import torch

        from feature_store.online import open_online_store
        from feature_store.online.representations import RepresentationStore
        from registry.models import load_registered

        torch.set_num_threads(torch_threads)
        loaded = load_registered(model_uri, tracking_uri=tracking_uri)
        self.model, self.transforms, self.definition = loaded.model.eval(), loaded.transforms, loaded.definition
        self.store = open_online_store(online_store)
        self.meta = meta
        self.representations = RepresentationStore(self.store, loaded.name, loaded.version)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from feature_store.online import build_request_rows
        from feature_store.online.representations import inputs_digest
        from grec.user_tokens import compress_tokens, projection_from

        users = batch.column("user").to_pylist()
        # One row per user without a candidate: the item columns are null and the user side, which
        # is all that is encoded, is exactly what the endpoint reads for this user now.
        rows = pa.concat_tables([build_request_rows(self.store, self.definition, user, [None])[0] for user in users])
        digests = [inputs_digest(rows, self.definition, i) for i in range(rows.num_rows)]
        with torch.inference_mode():
            tokens = self.model.encode_user_tokens(self.model.collate(self.transforms.transform(rows)))
        tokens = tokens.float().numpy()
        if self.meta is None:
            flat = pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), tokens[0].size)
            return pa.table({"user": batch.column("user"), "digest": digests, "tokens": flat})
        values, scales = compress_tokens(tokens, self.meta.compression, projection_from(self.meta.projection))
        self.representations.write_users(self.meta, users, values, scales, digests)
        return pa.table({"written": [len(users)]})


def dataset_users(prepared: Any) -> pa.Array:
    """Every user key of the prepared dataset: its user views' entities and its events' users."""
    definition = prepared.definition()
    offline = prepared.offline_store()
    key = definition.user.join_key
    views = [v for v in definition.views_of(definition.user) if offline.has_data(v.name)]
    columns = [offline.read_view(v.name, [v.key_field]).column(v.key_field) for v in views]
    if offline.has_data(definition.events_name):
        columns.append(offline.read_view(definition.events_name, [key]).column(key))
    if not columns:
        raise ValueError(f"{prepared.root}: the offline store holds no users")
    return pa.chunked_array([c.combine_chunks().cast(definition.user.dtype) for c in columns]).unique()


def encode_users(model_uri: str, data_dir: str | Path, online_store: str, *, tracking_uri: str,
                 compression: str = "int8", rank: int | None = None, batch_size: int = 256,
                 actors: int = 1, cpus_per_actor: float = 1.0, address: str | None = None) -> EncodeUsersSummary:
    """Encodes every user of `data_dir` with `model_uri` into `online_store` (see the module docstring)."""
    import ray.data

    from feature_store.online import open_online_store
    from feature_store.online.representations import RepresentationsMeta, RepresentationStore, StoredProjection, now_iso
    from feature_store.prepare import open_prepared
    from grec.user_tokens import COMPRESSIONS, LowRankProjection
    from jobs.ray_runtime import ray_session
    from registry.models import load_registered

    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
    if batch_size < 1 or actors < 1 or cpus_per_actor <= 0:
        raise ValueError("batch size and actors must be >= 1 and CPUs per actor > 0")
    prepared = open_prepared(data_dir)
    loaded = load_registered(model_uri, tracking_uri=tracking_uri)  # fails here, before Ray, for a URI that names nothing
    model = loaded.model
    if loaded.definition.user != prepared.definition().user:
        raise ValueError(f"{model_uri} was trained on users keyed by {loaded.definition.user.join_key!r}; "
                         f"{prepared.root} keys them by {prepared.definition().user.join_key!r}")
    pinned = f"models:/{loaded.name}/{loaded.version}"
    num_tokens, d_model = model.num_user_tokens, model.config.d_model
    if num_tokens == 0:
        raise ValueError(f"{pinned} has no user-side tokens (no user, context or sequence features) to store")
    if rank is not None and not 1 <= rank < d_model:
        raise ValueError(f"--rank must be in [1, {d_model}) for this model's {d_model}-wide tokens, got {rank}")
    users = dataset_users(prepared)
    open_online_store(online_store).close()  # a missing store is an error before Ray starts
    log.info("encoding %d users with %s into %s", len(users), pinned, online_store)
    encoder_args = {"model_uri": pinned, "tracking_uri": tracking_uri, "online_store": online_store}
    pool = {"compute": ray.data.ActorPoolStrategy(size=actors), "num_cpus": cpus_per_actor, "batch_size": batch_size,
            "batch_format": "pyarrow"}
    projection, explained = None, None
    with ray_session(address):
        dataset = ray.data.from_arrow(pa.table({"user": users}))
        if rank is not None:
            sample = dataset.limit(PROJECTION_SAMPLE).map_batches(UserEncoder, fn_constructor_kwargs=encoder_args,
                                                                  **pool).to_arrow_refs()
            tokens = np.concatenate([_tokens(table, num_tokens, d_model) for table in ray.get(sample)])
            projection = LowRankProjection.fit(tokens, rank)
            explained = projection.explained_variance(tokens)
            log.info("low-rank projection to %d of %d dimensions keeps %.4f of the variance", rank, d_model, explained)
        stored_projection = None if projection is None else StoredProjection(projection.mean, projection.basis)
        meta = RepresentationsMeta(num_tokens, d_model, compression, stored_projection, len(users), now_iso(),
                                   uuid.uuid4().hex[:12])
        written = dataset.map_batches(UserEncoder, fn_constructor_kwargs={**encoder_args, "meta": meta}, **pool)
        count = int(written.sum("written") or 0)  # None when there was nothing to encode
    with open_online_store(online_store) as store:
        RepresentationStore(store, loaded.name, loaded.version).write_meta(meta)
    return EncodeUsersSummary(loaded.name, str(loaded.version), count, num_tokens, d_model, compression, rank,
                              meta.payload_bytes(), 4 * num_tokens * d_model, explained)


def _tokens(table: pa.Table, num_tokens: int, d_model: int) -> np.ndarray:
    return table.column("tokens").combine_chunks().flatten().to_numpy().reshape(-1, num_tokens, d_model)
