"""The serving config is validated once, at load, with errors that say what is wrong."""

from __future__ import annotations

import json

import pytest

from serving.config import ServingConfig, ServingConfigError


def test_defaults_listen_on_loopback_without_token():
    config = ServingConfig.load({"model_uri": "models:/grec@champion"})
    assert config.host == "127.0.0.1"
    assert config.api_token is None
    assert (config.model_name, config.model_alias) == ("grec", "champion")


def test_defaults_bound_queues_and_keep_a_spare_scorer():
    config = ServingConfig.load({"model_uri": "models:/grec@champion"})
    assert config.scorer.num_replicas >= 2
    for replicas in (config.ingress, config.scorer):
        assert replicas.max_queued_requests > 0 and replicas.health_check_period_s > 0


def test_the_online_store_defaults_to_where_materialize_writes(tmp_path, monkeypatch):
    from feature_store.online import default_online_store

    monkeypatch.chdir(tmp_path)
    assert ServingConfig.load({"model_uri": "models:/grec@champion"}).online_store == \
        str(tmp_path / ".grec" / "online.sqlite") == default_online_store()
    # materialize's URL forms; file paths are made absolute (replicas run elsewhere)
    for given in ("sqlite:///data/online.sqlite", "data/online.sqlite"):
        assert ServingConfig.load({"model_uri": "models:/g/1", "online_store": given}).online_store == \
            str(tmp_path / "data" / "online.sqlite")
    assert ServingConfig.load({"model_uri": "models:/g/1", "online_store": "redis://h:6379/2"}).online_store == \
        "redis://h:6379/2"


def test_pinned_version_has_no_alias():
    config = ServingConfig.load({"model_uri": "models:/grec/3"})
    assert (config.model_name, config.model_alias) == ("grec", None)


def test_token_is_read_from_the_named_variable_and_not_printed(monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    config = ServingConfig.load({"model_uri": "models:/grec@champion"}, token_env="MY_TOKEN")
    assert config.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(("values", "named"), [
    ({"model_uri": "runs:/abc/model"}, "model_uri"),
    ({"model_uri": "models:/grec@champion", "max_candidates": 0}, "max_candidates"),
    ({"model_uri": "models:/grec@champion", "retrieval": "random"}, "retrieval"),
    ({"model_uri": "models:/grec@champion", "online_store": "postgres://db"}, "online_store"),
    ({"model_uri": "models:/grec@champion", "batching": {"max_batch_size": 64},
      "scorer": {"max_ongoing_requests": 8}}, "max_ongoing_requests"),
    # the former deployments' sections name the one that replaced them
    ({"model_uri": "models:/grec@champion", "ranker": {"num_replicas": 2}}, "ranker.*scorer"),
    ({"model_uri": "models:/grec@champion", "features": {"num_replicas": 2}}, "features.*scorer"),
    ({"model_uri": "models:/grec@champion", "unknown_option": 1}, "unknown_option"),
])
def test_invalid_values_are_named(values, named):
    with pytest.raises(ServingConfigError, match=named):
        ServingConfig.load(values)


def test_file_values_are_overridden_by_explicit_ones(tmp_path):
    path = tmp_path / "serving.json"
    path.write_text(json.dumps({"model_uri": "models:/grec@champion", "port": 9000, "max_candidates": 50}))
    config = ServingConfig.load({"port": 9100, "max_candidates": None}, file=path)
    assert (config.port, config.max_candidates) == (9100, 50)


def test_grec_serve_rejects_a_bad_config_before_starting_anything(capsys):
    from jobs.cli import main

    assert main(["serve", "--model", "runs:/abc/model"]) == 2
    assert "models:/NAME@ALIAS" in capsys.readouterr().err


def test_grec_serve_refuses_a_missing_online_store_before_starting_anything(tmp_path, capsys, monkeypatch):
    """A typo in --online-store (or nothing materialized) stops the start, naming the file."""
    from jobs.cli import main

    monkeypatch.chdir(tmp_path)  # the default MLflow store goes here (the registry itself is stubbed)
    monkeypatch.setattr("registry.models.resolve_version", lambda uri, client=None: ("grec", "1"))
    missing = tmp_path / "typo.sqlite"
    assert main(["serve", "--model", "models:/grec@champion", "--online-store", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err and "grec data materialize" in err
    assert not missing.exists()  # nothing was created on the fly
