"""Compressed user representations in the online store, per model version and user: stored and
read here, computed elsewhere.

A model's user side (its task- and candidate-independent tokens: wide & deep over the user's
features, behavior sequences) changes only when the user's features or history change. A batch
job (`grec encode-users`) computes it once per user with a registered model version, compresses
it (grec.user_tokens: int8 codes with a float16 scale per vector, or float32, optionally after a
low-rank projection fitted per version) and writes the arrays here; the endpoint reads them and
decompresses them instead of computing the user side while they are fresh. This module knows the
records' layout (docs/CONTRACTS.md), not how the arrays were computed.

Freshness: a record holds a digest of the user-side raw inputs it was computed from (user feature
values, context values, behavior sequences, as the online store gave them). It is fresh for a
request when the request's user-side inputs have the same digest: any new event, profile change
or expired feature makes it stale, and the caller computes the user side itself. Records of
another model version are never read (the view name holds the version).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa

from feature_store.definitions import DatasetDefinition
from feature_store.online.base import OnlineStore

VIEW_PREFIX = "user_representations"
# The per-version record (shapes, compression, projection) lives under this key of the view.
META_KEY = "__meta__"
FORMAT = "grec.user-representations"
FORMAT_VERSION = 1

Compression = Literal["int8", "fp32"]


def view_name(model_name: str, version: str) -> str:
    """The online-store view of one model version's user representations."""
    return f"{VIEW_PREFIX}/{model_name}/{version}"


def user_side_columns(definition: DatasetDefinition) -> list[str]:
    """Raw request columns the user side of a model reads: the user key, user views' features,
    context features and behavior sequences (everything but the item's and the timestamp)."""
    columns = [f.name for f, source in definition.sourced_features() if source != "item"]
    return columns + [s.name for s in definition.sequences]


def inputs_digest(rows: pa.Table, definition: DatasetDefinition, row: int = 0) -> str:
    """A digest of one raw request row's user-side values (see the module docstring)."""
    values = rows.select(user_side_columns(definition)).slice(row, 1).to_pylist()[0]
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# ---- records ----------------------------------------------------------------------------------------


class StoredProjection(NamedTuple):
    """A version's low-rank projection as stored (grec.user_tokens.LowRankProjection computes with
    it): per token slot a mean [n, d] and an orthonormal basis [n, d, r], float32."""

    mean: np.ndarray
    basis: np.ndarray


@dataclass(frozen=True)
class RepresentationsMeta:
    """What every record of one model version shares."""

    num_tokens: int
    d_model: int
    compression: Compression
    projection: StoredProjection | None
    users: int
    computed_at: str  # ISO 8601, UTC
    run_id: str  # every record names the run that wrote it: a reader never decodes it with another run's meta

    @property
    def stored_width(self) -> int:
        return self.projection.basis.shape[-1] if self.projection is not None else self.d_model

    def payload_bytes(self) -> int:
        """Bytes of one user's stored vectors (codes and scales), without the record's framing."""
        if self.compression == "fp32":
            return 4 * self.num_tokens * self.stored_width
        return self.num_tokens * self.stored_width + 2 * self.num_tokens

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "num_tokens": self.num_tokens,
                                "d_model": self.d_model, "compression": self.compression, "users": self.users,
                                "computed_at": self.computed_at, "run_id": self.run_id, "projection": None}
        if self.projection is not None:
            data["projection"] = {"rank": self.stored_width, "mean": _b64(self.projection.mean),
                                  "basis": _b64(self.projection.basis)}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RepresentationsMeta:
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a grec user-representations record of version {FORMAT_VERSION}: "
                             f"format {data.get('format')!r}, version {data.get('version')!r}")
        n, d = int(data["num_tokens"]), int(data["d_model"])
        projection = None
        if data["projection"] is not None:
            r = int(data["projection"]["rank"])
            projection = StoredProjection(_unb64(data["projection"]["mean"], np.float32, (n, d)),
                                          _unb64(data["projection"]["basis"], np.float32, (n, d, r)))
        return cls(n, d, data["compression"], projection, int(data["users"]), data["computed_at"], data["run_id"])


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _unb64(text: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape)


# ---- the store ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredUser:
    """One user's stored representation as stored (grec.user_tokens.decompress_tokens gives its
    tokens [n, d]): `values` [n, w] (int8 codes or float32), `scales` [n] float16 for int8 (else
    None), and the projection of the run that wrote it (None without one)."""

    values: np.ndarray
    scales: np.ndarray | None
    projection: StoredProjection | None
    digest: str


class RepresentationStore:
    """One model version's user representations in an online store (a view per version)."""

    def __init__(self, store: OnlineStore, model_name: str, version: str) -> None:
        self.store = store
        self.view = view_name(model_name, str(version))
        self._meta: RepresentationsMeta | None = None

    # ---- writing (the batch job) ----
    def write_users(self, meta: RepresentationsMeta, users: Sequence[Any], values: np.ndarray,
                    scales: np.ndarray | None, digests: Sequence[str]) -> None:
        """Writes one record per user of what grec.user_tokens.compress_tokens gave for them:
        values [U, n, w] (int8 codes with scales [U, n] for int8 meta, float32 without for fp32)."""
        if values.shape[1:] != (meta.num_tokens, meta.stored_width):
            raise ValueError(f"values have shape {values.shape[1:]} per user; the meta record says "
                             f"({meta.num_tokens}, {meta.stored_width})")
        if meta.compression == "int8":
            if values.dtype != np.int8 or scales is None or scales.dtype != np.float16:
                raise ValueError("int8 records take int8 codes and float16 scales")
            records = {user: {"codes": _b64(c), "scales": _b64(s), "digest": digest, "run": meta.run_id}
                       for user, c, s, digest in zip(users, values, scales, digests, strict=True)}
        else:
            if values.dtype != np.float32 or scales is not None:
                raise ValueError("fp32 records take float32 values and no scales")
            records = {user: {"values": _b64(v), "digest": digest, "run": meta.run_id}
                       for user, v, digest in zip(users, values, digests, strict=True)}
        self.store.write(self.view, records)

    def write_meta(self, meta: RepresentationsMeta) -> None:
        """Written last by the job: readers use a version's records only once its meta is there."""
        self.store.write(self.view, {META_KEY: meta.to_dict()})
        self._meta = meta

    # ---- reading (serving) ----
    def meta(self, refresh: bool = False) -> RepresentationsMeta | None:
        """The version's meta record (read once, then kept), None when the version was not encoded."""
        if self._meta is None or refresh:
            found = self.store.read(self.view, [META_KEY])
            self._meta = None if found.missing else RepresentationsMeta.from_dict(found.rows[0])
        return self._meta

    def read_user(self, user: Any) -> StoredUser | None:
        """The user's representation, None when the version or the user was not encoded (or the
        record belongs to a run whose meta is not written yet)."""
        meta = self.meta()
        if meta is None:
            return None
        found = self.store.read(self.view, [user])
        if found.missing:
            return None
        record = found.rows[0]
        if record["run"] != meta.run_id:  # encoded again since the meta was read
            meta = self.meta(refresh=True)
            if meta is None or record["run"] != meta.run_id:
                return None
        return _stored_user(meta, record)


def _stored_user(meta: RepresentationsMeta, record: Mapping[str, Any]) -> StoredUser:
    """One record's arrays, shaped as the meta record of the run that wrote it says."""
    n, width = meta.num_tokens, meta.stored_width
    if meta.compression == "int8":
        values = _unb64(record["codes"], np.int8, (n, width))
        scales = _unb64(record["scales"], np.float16, (n,))
    else:
        values, scales = _unb64(record["values"], np.float32, (n, width)), None
    return StoredUser(values, scales, meta.projection, record["digest"])


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
