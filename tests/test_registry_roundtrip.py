"""A grec model registered, aliased and loaded back as data, and as an MLflow pyfunc model (temp SQLite store)."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from registry.models import (CHALLENGER, CHAMPION, feature_columns, load_registered, register_model,
                           resolve_version, set_alias)
from registry.tracking import use_tracking_uri


def _tiny_model(prepared):
    """A tiny GRec, untrained: the round trip must preserve whatever weights it has."""
    from grec import GRecConfig, InputSpec, RouterConfig, build_model

    config = GRecConfig(input=InputSpec.from_json(prepared.spec_path), d_model=16, embedding_dim=8, num_heads=2,
                        ffn_hidden=16, expert_hidden=16, tower_hidden=8, router=RouterConfig(num_experts=3, top_k=1))
    return build_model(config).eval()


def test_register_load_predict_and_promote(tiny_movielens, tmp_path):
    model = _tiny_model(tiny_movielens)
    rows = tiny_movielens.read_split("validation").slice(0, 8)
    with use_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        version = register_model(model, tiny_movielens.root, "roundtrip", rows.to_pandas())
        assert resolve_version("models:/roundtrip@challenger") == ("roundtrip", str(version.version))
        # The artifacts sit beside the database, not under the working directory's ./mlruns.
        artifact_uri = mlflow.get_run(version.run_id).info.artifact_uri
        assert artifact_uri.startswith(tmp_path.resolve().as_uri()), artifact_uri

        loaded = load_registered(f"models:/roundtrip@{CHALLENGER}")
        assert (loaded.name, loaded.version) == ("roundtrip", str(version.version))
        expected = model.predict(model.collate(tiny_movielens.transforms().transform(rows)))
        # Raw rows in, the saved transforms applied, one column per task out: as the version's pyfunc answers.
        scored = loaded.predict(rows.to_pandas()[feature_columns(loaded.spec)])
        assert list(scored.columns) == [f"score_{t}" for t in model.task_names]
        for task, values in expected.items():
            np.testing.assert_allclose(scored[f"score_{task}"].to_numpy(), values.numpy(), rtol=1e-5, atol=1e-6)
        only_like = loaded.predict(rows.to_pandas()[feature_columns(loaded.spec)], tasks=["like"])
        assert list(only_like.columns) == ["score_like"]
        pyfunc = mlflow.pyfunc.load_model(f"models:/roundtrip/{version.version}")  # MLflow's own loader
        np.testing.assert_allclose(pyfunc.predict(rows.to_pandas()[feature_columns(loaded.spec)])["score_like"],
                                   scored["score_like"], rtol=1e-6)

        signature = loaded.signature
        assert signature.inputs.input_names() == feature_columns(loaded.spec)
        assert "label_like" not in signature.inputs.input_names()

        set_alias("roundtrip", CHAMPION, version.version)
        assert resolve_version(f"models:/roundtrip@{CHAMPION}") == ("roundtrip", str(version.version))


def test_unknown_alias_names_the_problem(tmp_path):
    with use_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        with pytest.raises(ValueError, match="expected models:/NAME@ALIAS"):
            resolve_version("runs:/abc/model")
