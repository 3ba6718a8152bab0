"""User representations across the serving boundary: the model takes its user side precomputed,
`grec encode-users` stores it compressed per model version and user, and the endpoint uses it only
while it is fresh, with scores within a stated bound of the online path."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from feature_store.online import open_online_store
from feature_store.online.representations import (RepresentationsMeta, RepresentationStore, StoredProjection,
                                                  inputs_digest)
from grec import RouterConfig, build_model
from grec.synthetic import random_columns
from grec.user_tokens import LowRankProjection, compress_tokens, decompress_tokens
from serving.features import stored_user_tokens

TASKS = ["like", "rating", "next_item"]
# int8 user tokens (a float16 scale per token) move a served score by at most this much (measured on
# the tiny model: ~2e-3; a probability or a rating, so an absolute bound).
INT8_SCORE_BOUND = 2e-2


# ---- the model takes its user side precomputed --------------------------------------------------------


@pytest.mark.parametrize("architecture", ["grec", "mmoe"])
def test_stored_user_tokens_give_the_same_scores(grec_config, architecture):
    model = build_model(grec_config(with_text=True, architecture=architecture)).eval()
    columns = random_columns(model.config.input, 6)
    batch = model.collate(columns)
    with torch.no_grad():
        tokens = model.encode_user_tokens(batch)
        assert tokens.shape == (6, model.num_user_tokens, model.config.d_model)
        assert model.num_user_tokens == 3  # wide&deep, the history, the query text; the item is not in it
        online, stored = model(batch).logits, model(batch, user_tokens=tokens).logits
    for task in TASKS:
        torch.testing.assert_close(stored[task], online[task], atol=1e-6, rtol=0)


def test_one_users_tokens_broadcast_over_its_candidates_in_the_sub_model(grec_config):
    model = build_model(grec_config(with_text=True, router=RouterConfig(mode="task", num_experts=3, top_k=1))).eval()
    columns = random_columns(model.config.input, 8)
    for name in ("user_id", "age", "hist_item_id", "query"):  # one user, eight candidates
        columns[name] = [columns[name][0]] * 8
    batch = model.collate(columns)
    one_user = model.collate({name: values[:1] for name, values in columns.items()})
    with torch.no_grad():
        tokens = model.encode_user_tokens(one_user).expand(8, -1, -1)
        for task in TASKS:
            sub = model.export_task(task)
            torch.testing.assert_close(sub(batch, tokens), sub(batch), atol=1e-6, rtol=0)
            torch.testing.assert_close(sub.predict(batch, tokens), model.predict(batch, [task])[task],
                                       atol=2e-6, rtol=0)


def test_user_tokens_of_the_wrong_shape_are_refused(grec_config):
    model = build_model(grec_config()).eval()
    batch = model.collate(random_columns(model.config.input, 4))
    with pytest.raises(ValueError, match=r"user_tokens has shape \(4, 1, 16\); this model takes \[4, 2, 16\]"):
        model(batch, user_tokens=torch.zeros(4, 1, 16))


# ---- compression -------------------------------------------------------------------------------------


def test_int8_codes_are_within_half_a_step_of_each_vector():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 3, 64)).astype(np.float32) * rng.uniform(0.01, 10, (50, 3, 1))
    vectors[0, 0] = 0.0  # an all-zero token stays zero
    codes, scales = compress_tokens(vectors, "int8")
    assert codes.dtype == np.int8 and scales.dtype == np.float16 and scales.shape == (50, 3)
    error = np.abs(decompress_tokens(codes, scales) - vectors)
    assert np.all(error <= scales.astype(np.float32)[..., None] / 2 + 1e-7)
    assert np.all(decompress_tokens(codes, scales)[0, 0] == 0.0)


def test_a_low_rank_projection_keeps_what_lies_in_its_span():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((32, 4)))[0]  # the users' tokens lie in 4 of 32 dimensions
    tokens = (rng.standard_normal((200, 2, 4)) @ basis.T + 3.0).astype(np.float32)
    projection = LowRankProjection.fit(tokens, rank=4)
    assert projection.explained_variance(tokens) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(projection.decode(projection.encode(tokens)), tokens, atol=1e-4)
    with pytest.raises(ValueError, match="rank must be in"):
        LowRankProjection.fit(tokens, rank=32)


def test_store_round_trip_version_keys_and_run_ids(tmp_path):
    rng = np.random.default_rng(2)
    tokens = rng.standard_normal((3, 2, 16)).astype(np.float32)
    with open_online_store(tmp_path / "online.sqlite", create=True) as store:
        stored = RepresentationStore(store, "m", "1")
        meta = RepresentationsMeta(2, 16, "int8", None, 3, "2024-01-01T00:00:00+00:00", "run-a")
        stored.write_users(meta, [10, 11, 12], *compress_tokens(tokens, "int8"), ["d0", "d1", "d2"])
        assert stored.read_user(10) is None  # the meta record comes last: nothing is read before it
        stored.write_meta(meta)
        assert meta.payload_bytes() == 2 * 16 + 2 * 2 and meta.payload_bytes() * 3 < 4 * 2 * 16  # < 1/3 of fp32
        found = RepresentationStore(store, "m", "1").read_user(11)
        assert found.digest == "d1"
        np.testing.assert_allclose(stored_user_tokens(found), tokens[1], atol=float(np.abs(tokens[1]).max()) / 127)
        assert RepresentationStore(store, "m", "2").read_user(11) is None  # another version
        assert RepresentationStore(store, "m", "1").read_user(99) is None  # an unknown user
        # Encoded again (another run): a reader holding the old meta record reads it again.
        exact = RepresentationsMeta(2, 16, "fp32", None, 3, "2024-01-02T00:00:00+00:00", "run-b")
        stored.write_users(exact, [11], *compress_tokens(tokens[1:2], "fp32"), ["d1"])
        stored.write_meta(exact)
        np.testing.assert_array_equal(stored_user_tokens(RepresentationStore(store, "m", "1").read_user(11)), tokens[1])
        reader_with_old_meta = RepresentationStore(store, "m", "1")
        reader_with_old_meta._meta = meta
        np.testing.assert_array_equal(stored_user_tokens(reader_with_old_meta.read_user(11)), tokens[1])
        assert reader_with_old_meta.read_user(10) is None  # written by run-a, whose meta is gone


def test_a_projected_version_round_trips_through_the_store(tmp_path):
    """The meta record keeps the version's projection; a record read back decompresses, with it, to
    exactly what the writer's arrays decompress to."""
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((20, 2, 16)).astype(np.float32)
    projection = LowRankProjection.fit(tokens, rank=4)
    meta = RepresentationsMeta(2, 16, "int8", StoredProjection(projection.mean, projection.basis), 20,
                               "2024-01-01T00:00:00+00:00", "run-p")
    assert meta.stored_width == 4 and meta.payload_bytes() == 2 * 4 + 2 * 2
    codes, scales = compress_tokens(tokens, "int8", projection)
    with open_online_store(tmp_path / "online.sqlite", create=True) as store:
        stored = RepresentationStore(store, "m", "1")
        stored.write_users(meta, list(range(20)), codes, scales, [f"d{i}" for i in range(20)])
        stored.write_meta(meta)
        with pytest.raises(ValueError, match="int8 records take int8 codes"):
            stored.write_users(meta, [0], codes[:1].astype(np.float32), None, ["d0"])
        found = RepresentationStore(store, "m", "1").read_user(7)
    np.testing.assert_array_equal(stored_user_tokens(found), decompress_tokens(codes[7], scales[7], projection))


# ---- the feature lookup: fresh or not ----------------------------------------------------------------


@pytest.fixture
def lookup_store(tmp_path, tiny_movielens):
    """A copy of the tiny MovieLens online store, one encoded user, its digest computed as the job does."""
    from feature_store.online import build_request_rows, materialize

    path = tmp_path / "online.sqlite"
    definition = tiny_movielens.definition()
    with open_online_store(path, create=True) as store:
        materialize(tiny_movielens.offline_store(), definition, store)
    store = open_online_store(path)
    user = tiny_movielens.read_split("train", columns=["user_id"]).column("user_id")[0].as_py()
    row, _ = build_request_rows(store, definition, user, [None])
    meta = RepresentationsMeta(2, 4, "fp32", None, 1, "2024-01-01T00:00:00+00:00", "run")
    representations = RepresentationStore(store, "m", "1")
    representations.write_users(meta, [user], np.ones((1, 2, 4), np.float32), None, [inputs_digest(row, definition)])
    representations.write_meta(meta)
    yield store, definition, user
    store.close()


def _lookup(store, definition, user, context=None, version="1"):
    from serving.features import RowsQuery, StoreGuard, request_rows

    guard = StoreGuard(store, "degrade", 1.0)
    items = [1, 2, 3]
    return request_rows(guard, definition, RowsQuery(user, items, context), RepresentationStore(store, "m", version))


def test_lookup_uses_a_fresh_representation_and_drops_the_sequences(lookup_store):
    store, definition, user = lookup_store
    found = _lookup(store, definition, user)
    assert found.user_encoding == "stored" and found.user_encoding_reason == "fresh"
    np.testing.assert_array_equal(found.user_tokens, np.ones((2, 4)))
    assert found.rows.num_rows == 3 and found.rows.column("hist_item_id").null_count == 3


def test_lookup_computes_online_when_the_representation_is_not_fresh(lookup_store, tiny_movielens):
    from feature_store.online import SEQUENCES_VIEW

    store, definition, user = lookup_store
    assert _lookup(store, definition, user, version="2").user_encoding_reason == "version_not_encoded"
    other = tiny_movielens.read_split("test", columns=["user_id"]).column("user_id")[-1].as_py()
    assert _lookup(store, definition, other).user_encoding_reason == "user_not_encoded"
    history = store.read(SEQUENCES_VIEW, [user]).rows[0]
    store.write(SEQUENCES_VIEW, {user: {**history, "hist_item_id": [*history["hist_item_id"][1:], 50]}})  # a new event
    found = _lookup(store, definition, user)
    assert (found.user_encoding, found.user_encoding_reason, found.user_tokens) == ("online", "stale", None)
    assert found.rows.column("hist_item_id").null_count == 0  # the ranker computes from the history


# ---- the batch job and the endpoint --------------------------------------------------------------------


def _served_version(app) -> str:
    from registry.models import resolve_version
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(app.tracking_uri):
        return resolve_version(f"models:/{app.model_name}@champion")[1]


def test_int8_representations_score_within_the_bound_of_online(serving_app, tmp_path):
    """The job's encoder (the same class its Ray actors run) writes int8 representations into a copy
    of the store; the ranker's scoring function gives stored and online scores within the bound."""
    from jobs.compact.encode_users import UserEncoder, dataset_users
    from feature_store.online.representations import now_iso
    from registry.tracking import use_tracking_uri
    from serving.model_source import load_servable
    from serving.ranking import RankRequest, rank_batch

    app = serving_app
    copy = tmp_path / "online.sqlite"
    shutil.copy(app.online_store, copy)
    version = _served_version(app)
    users = dataset_users(app.prepared)
    with use_tracking_uri(app.tracking_uri):  # load_servable points the process's MLflow at the store, as a replica
        servable = load_servable(app.config, version)
    meta = RepresentationsMeta(servable.model.num_user_tokens, servable.model.config.d_model, "int8", None,
                               len(users), now_iso(), "test")
    encoder = UserEncoder(f"models:/{app.model_name}/{version}", app.tracking_uri, str(copy), meta)
    encoder(pa.table({"user": users.slice(0, 40)}))
    with open_online_store(copy) as store:
        RepresentationStore(store, app.model_name, version).write_meta(meta)
        stored = _lookup_rows(store, servable, app, version, stored=True)
        online = _lookup_rows(store, servable, app, version, stored=False)
    assert [f.user_encoding for f in stored] == ["stored"] * len(stored)
    for task in servable.task_names:
        with_tokens = rank_batch(servable, [RankRequest(task, f.rows, user_tokens=f.user_tokens) for f in stored])
        computed = rank_batch(servable, [RankRequest(task, f.rows) for f in online])
        for a, b in zip(with_tokens, computed, strict=True):
            assert np.max(np.abs(np.subtract(a.scores, b.scores))) <= INT8_SCORE_BOUND


def _lookup_rows(store, servable, app, version, stored: bool):
    from serving.features import RowsQuery, StoreGuard, request_rows

    guard = StoreGuard(store, "degrade", 1.0)
    users = app.prepared.read_split("train", columns=["user_id"]).column("user_id").unique().to_pylist()[:5]
    representations = RepresentationStore(store, app.model_name, version) if stored else None
    return [request_rows(guard, servable.definition, RowsQuery(user, app.known_items[:20]), representations)
            for user in users]


def test_endpoint_serves_stored_users_after_encode_users(serving_app):
    """`encode-users` on the served version's store (float32: the stored side is the computed one, so
    the session's other endpoint tests see the same scores): the same request is answered from the
    stored representation, with the same scores, and says so."""
    import httpx

    from feature_store.online import open_online_store as _open
    from jobs.compact.encode_users import dataset_users, encode_users

    app = serving_app
    headers = {"Authorization": f"Bearer {app.token}"}
    request = {"user_id": app.known_user, "task": "like", "candidates": app.known_items[:30], "k": 30,
               "exclude_seen": False}
    before = httpx.post(f"{app.base_url}/v1/recommend", json=request, headers=headers, timeout=30).json()
    assert before["user_encoding"] == "online"
    summary = encode_users(f"models:/{app.model_name}@champion", app.prepared.root, app.online_store,
                           tracking_uri=app.tracking_uri, compression="fp32", batch_size=64)
    assert summary.users == len(dataset_users(app.prepared)) and summary.compression == "fp32"
    with _open(app.online_store) as store:
        assert RepresentationStore(store, app.model_name, summary.model_version).meta().users == summary.users
    after = httpx.post(f"{app.base_url}/v1/recommend", json=request, headers=headers, timeout=30).json()
    assert after["user_encoding"] == "stored"
    scores = {item["item_id"]: item["score"] for item in before["items"]}
    for item in after["items"]:
        assert item["score"] == pytest.approx(scores[item["item_id"]], abs=1e-5)
