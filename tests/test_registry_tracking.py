"""`use_tracking_uri` points MLflow at a store for a block and leaves no trace of it after."""

from __future__ import annotations

import os

import mlflow
import mlflow.tracking._model_registry.utils as registry_state
import mlflow.tracking._tracking_service.utils as tracking_state
import pytest
from mlflow import MlflowClient

from registry.tracking import REGISTRY_URI_ENV, TRACKING_URI_ENV, use_tracking_uri


def _state() -> tuple:
    """What decides the store of a client made without URIs: MLflow's URIs and the two variables."""
    return (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), os.environ.get(TRACKING_URI_ENV),
            os.environ.get(REGISTRY_URI_ENV))


@pytest.fixture
def outside(monkeypatch, tmp_path) -> tuple:
    """A process whose MLflow was pointed at one store, with variables naming others."""
    set_uri = f"sqlite:///{tmp_path / 'set.db'}"
    monkeypatch.setattr(tracking_state, "_tracking_uri", set_uri)
    monkeypatch.setattr(registry_state, "_registry_uri", set_uri)
    monkeypatch.setenv(TRACKING_URI_ENV, f"sqlite:///{tmp_path / 'tracking-variable.db'}")
    monkeypatch.setenv(REGISTRY_URI_ENV, f"sqlite:///{tmp_path / 'registry-variable.db'}")
    return _state()


def test_the_block_points_tracking_registry_and_variables_at_the_store(outside, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with use_tracking_uri(uri) as resolved:
        assert resolved == uri
        assert _state() == (uri, uri, uri, uri)
        client = MlflowClient()
        assert (client._tracking_client.tracking_uri, client._registry_uri) == (uri, uri)


def test_the_previous_uris_and_variables_come_back_after_the_block(outside, tmp_path) -> None:
    with use_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        pass
    assert _state() == outside


def test_the_previous_uris_and_variables_come_back_when_the_block_raises(outside, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="inside"), use_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        raise RuntimeError("inside")
    assert _state() == outside


def test_nested_blocks_restore_the_outer_one_and_unset_stays_unset(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(tracking_state, "_tracking_uri", None)
    monkeypatch.setattr(registry_state, "_registry_uri", None)
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(REGISTRY_URI_ENV, raising=False)
    outer, inner = f"sqlite:///{tmp_path / 'outer.db'}", f"sqlite:///{tmp_path / 'inner.db'}"
    with use_tracking_uri(outer):
        with use_tracking_uri(inner):
            assert _state() == (inner, inner, inner, inner)
        assert _state() == (outer, outer, outer, outer)
    assert TRACKING_URI_ENV not in os.environ and REGISTRY_URI_ENV not in os.environ
    # MLflow follows the variables again, as it did before the blocks
    later = f"sqlite:///{tmp_path / 'later.db'}"
    monkeypatch.setenv(TRACKING_URI_ENV, later)
    assert mlflow.get_tracking_uri() == later and mlflow.get_registry_uri() == later
