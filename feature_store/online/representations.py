"""Compressed user representations in the online store, per model version and user.

A model's user side (its task- and candidate-independent tokens: wide & deep over the user's
features, behavior sequences) changes only when the user's features or history change. A batch
job (`grec encode-users`) computes it once per user with a registered model version, compresses
it and writes it here; the endpoint reads it instead of computing it while it is fresh.

Compression, per user (tokens [n, d] float32):
- `int8`: each token vector v is stored as round(v / s) in int8 with its own scale
  s = max|v| / 127 (float16): n * d + 2 n bytes instead of 4 n d.
- `int8` with a low-rank projection (`rank` r < d): each token slot has a mean and an orthonormal
  basis [d, r] fitted on the encoded users (PCA, so the projection is learned from the data);
  the r coefficients are stored in int8 as above. The projection is kept once per model version.

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
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from feature_store.definitions import DatasetDefinition
from feature_store.online.base import OnlineStore

VIEW_PREFIX = "user_representations"
# The per-version record (shapes, compression, projection) lives under this key of the view.
META_KEY = "__meta__"
FORMAT = "grec.user-representations"
FORMAT_VERSION = 1
INT8_MAX = 127

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


# ---- compression ------------------------------------------------------------------------------------


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """vectors [..., k] float -> (codes [..., k] int8, scales [...] float16) with
    vectors ~= codes * scales[..., None]. The scale is rounded to float16 before quantizing, so the
    rounding error of the stored scale is not added to the codes' error."""
    vectors = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(vectors).max(axis=-1)
    scales = (peak / INT8_MAX).astype(np.float16)
    safe = np.where(scales > 0, scales.astype(np.float32), 1.0)[..., None]
    codes = np.clip(np.rint(vectors / safe), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * scales.astype(np.float32)[..., None]


@dataclass(frozen=True)
class LowRankProjection:
    """Per token slot, a mean [n, d] and an orthonormal basis [n, d, r]: tokens ~= mean + c @ basis.T."""

    mean: np.ndarray
    basis: np.ndarray

    @property
    def rank(self) -> int:
        return self.basis.shape[-1]

    @classmethod
    def fit(cls, tokens: np.ndarray, rank: int) -> LowRankProjection:
        """PCA of each token slot over users: tokens [U, n, d] -> the top-`rank` directions."""
        users, slots, d = tokens.shape
        if not 1 <= rank < d:
            raise ValueError(f"rank must be in [1, {d}) for {d}-wide tokens, got {rank}")
        mean = tokens.mean(axis=0)
        basis = np.empty((slots, d, rank), dtype=np.float32)
        for slot in range(slots):
            _, _, vt = np.linalg.svd(tokens[:, slot] - mean[slot], full_matrices=False)
            basis[slot, :, : min(rank, vt.shape[0])] = vt[:rank].T
            basis[slot, :, vt.shape[0]:] = 0.0  # fewer users than the rank: the rest carries nothing
        return cls(mean.astype(np.float32), basis)

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """[..., n, d] -> coefficients [..., n, r]."""
        return np.einsum("...nd,ndr->...nr", tokens - self.mean, self.basis)

    def decode(self, coefficients: np.ndarray) -> np.ndarray:
        return self.mean + np.einsum("...nr,ndr->...nd", coefficients, self.basis)

    def explained_variance(self, tokens: np.ndarray) -> float:
        """Share of the tokens' variance around the mean the projection keeps (0..1)."""
        centred = tokens - self.mean
        total = float((centred ** 2).sum())
        kept = float((self.encode(tokens) ** 2).sum())
        return kept / total if total > 0 else 1.0


@dataclass(frozen=True)
class RepresentationsMeta:
    """What every record of one model version shares."""

    num_tokens: int
    d_model: int
    compression: Compression
    projection: LowRankProjection | None
    users: int
    computed_at: str  # ISO 8601, UTC
    run_id: str  # every record names the run that wrote it: a reader never decodes it with another run's meta

    @property
    def stored_width(self) -> int:
        return self.projection.rank if self.projection is not None else self.d_model

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
            data["projection"] = {"rank": self.projection.rank, "mean": _b64(self.projection.mean),
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
            projection = LowRankProjection(_unb64(data["projection"]["mean"], np.float32, (n, d)),
                                           _unb64(data["projection"]["basis"], np.float32, (n, d, r)))
        return cls(n, d, data["compression"], projection, int(data["users"]), data["computed_at"], data["run_id"])


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _unb64(text: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape)


# ---- the store ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredUser:
    """One user's stored representation, decompressed: tokens [n, d] float32."""

    tokens: np.ndarray
    digest: str


class RepresentationStore:
    """One model version's user representations in an online store (a view per version)."""

    def __init__(self, store: OnlineStore, model_name: str, version: str) -> None:
        self.store = store
        self.view = view_name(model_name, str(version))
        self._meta: RepresentationsMeta | None = None

    # ---- writing (the batch job) ----
    def write_users(self, meta: RepresentationsMeta, users: Sequence[Any], tokens: np.ndarray,
                    digests: Sequence[str]) -> None:
        """Compresses tokens [U, n, d] as `meta` says and writes one record per user."""
        if tokens.shape[1:] != (meta.num_tokens, meta.d_model):
            raise ValueError(f"tokens have shape {tokens.shape[1:]} per user; the meta record says "
                             f"({meta.num_tokens}, {meta.d_model})")
        vectors = meta.projection.encode(tokens) if meta.projection is not None else tokens
        if meta.compression == "int8":
            codes, scales = quantize_int8(vectors)
            records = {user: {"codes": _b64(c), "scales": _b64(s), "digest": digest, "run": meta.run_id}
                       for user, c, s, digest in zip(users, codes, scales, digests, strict=True)}
        else:
            records = {user: {"values": _b64(v.astype(np.float32)), "digest": digest, "run": meta.run_id}
                       for user, v, digest in zip(users, vectors, digests, strict=True)}
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
        return StoredUser(decode_record(meta, record), record["digest"])


def decode_record(meta: RepresentationsMeta, record: Mapping[str, Any]) -> np.ndarray:
    """One stored record -> tokens [n, d] float32."""
    n, width = meta.num_tokens, meta.stored_width
    if meta.compression == "int8":
        vectors = dequantize_int8(_unb64(record["codes"], np.int8, (n, width)),
                                  _unb64(record["scales"], np.float16, (n,)))
    else:
        vectors = _unb64(record["values"], np.float32, (n, width))
    tokens = meta.projection.decode(vectors) if meta.projection is not None else vectors
    return np.ascontiguousarray(tokens, dtype=np.float32)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
