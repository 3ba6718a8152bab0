"""`grec tune`: search spaces checked before Ray starts, and a real Ray Tune search with ASHA whose
trials are runs of the `grec train` job and MLflow child runs, and whose best config `grec train`
trains to the metric its trial reported."""

from __future__ import annotations

import typing

import pytest
import ray
import yaml
from mlflow import MlflowClient

from jobs.ray_runtime import release_orphaned_placement_groups
from jobs.train import load_config, run_training
from jobs.train.config import ConfigError
from grec import GRecConfig
from jobs.tune.cli import ARCHITECTURES
from jobs.tune.job import DEFAULT_SPACE, SearchSpace, check_space, load_space, run_tune, trial_config


def test_the_architecture_option_offers_the_config_s_architectures():
    assert ARCHITECTURES == typing.get_args(GRecConfig.model_fields["architecture"].annotation)


def test_a_space_file_names_the_bad_key(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optimizer.lr: {loguniform: [0.01, 0.001]}\n")
    with pytest.raises(ConfigError, match=r"optimizer\.lr.*low must be below high"):
        load_space(path)
    path.write_text("optimizer.lr: {between: [0.001, 0.01]}\n")
    with pytest.raises(ConfigError, match="optimizer.lr"):
        load_space(path)


def test_space_keys_must_be_training_config_keys(tiny_movielens, train_tiny_config, tmp_path):
    config = train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ConfigError, match="optimizer.learning_rate"):
        check_space(config, SearchSpace(space={"optimizer.learning_rate": {"choice": [0.1]}}))
    with pytest.raises(ConfigError, match="trainer"):
        check_space(config, SearchSpace(space={"trainer.lr": {"choice": [0.1]}}))
    with pytest.raises(ConfigError, match="features cannot be searched"):
        check_space(config, SearchSpace(space={"features.exclude": {"choice": [["title"]]}}))
    with pytest.raises(ConfigError, match="scaling cannot be searched"):  # a trial's resources are the search's
        check_space(config, SearchSpace(space={"scaling.num_workers": {"choice": [1, 2]}}))
    with pytest.raises(ConfigError, match="model.router.top_k"):  # top_k 9 > num_experts 3
        check_space(config, SearchSpace(space={"model.router.top_k": {"choice": [9]}}))
    for architecture in ("grec", "shared_bottom", "mmoe", "ple"):  # one space for GRec and its baselines
        check_space(config.with_overrides(model={"architecture": architecture}), DEFAULT_SPACE)
    assert trial_config(config, {"optimizer.lr": 0.5, "model.router.num_experts": 5}).model.router.num_experts == 5


@pytest.mark.slow
def test_tune_runs_asha_trials_as_mlflow_children_and_writes_a_trainable_best_config(
        ray_local, tiny_movielens, train_tiny_config, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = train_tiny_config(tiny_movielens.root, tracking_uri, training={"epochs": 2},
                               scaling={"num_workers": 1}, mlflow={"experiment": "tune-test"})
    space = SearchSpace(space={"optimizer.lr": {"loguniform": [1e-3, 3e-2]},
                               "model.architecture": {"choice": ["grec", "mmoe"]}})
    out = tmp_path / "best.yaml"
    result = run_tune(config, 3, space=space, out=out, name="tune-test", concurrent=2)

    assert result.trials == 3 and set(result.best_values) == {"optimizer.lr", "model.architecture"}
    best = load_config(out)  # a training config `grec train --config` takes
    assert best.optimizer.lr == pytest.approx(result.best_values["optimizer.lr"])
    assert best.model.architecture == result.best_values["model.architecture"]
    assert "grec tune" in out.read_text().splitlines()[0]

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["scheduler"] == "ASHA" and parent.info.status == "FINISHED"
    assert parent.data.metrics[f"best/{config.training.early_stopping.metric}"] == pytest.approx(result.best_metric)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 3
    statuses = [(run.info.status, run.data.tags.get("grec.tune.stopped_by")) for run in children]
    assert all(status in ("FINISHED", "KILLED") for status, _ in statuses), statuses
    assert all("val/like/auc" in run.data.metrics and "optimizer.lr" in run.data.params for run in children)
    assert sum(1 for run in children if run.info.status == "KILLED") == result.stopped_early
    assert yaml.safe_load(out.read_text())["optimizer"]["lr"] == pytest.approx(result.best_values["optimizer.lr"])


@pytest.mark.slow
def test_grec_train_on_the_best_config_reaches_the_metric_of_its_trial(ray_local, tiny_movielens, train_tiny_config,
                                                                      tmp_path):
    """One training loop: a trial fits the Ray Train job of `grec train`, so `grec train` on the best
    config, with the same seed, trains the same model to the same validation metric."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = train_tiny_config(tiny_movielens.root, tracking_uri, training={"epochs": 2, "seed": 7},
                               scaling={"num_workers": 1}, mlflow={"experiment": "tune-one-loop"})
    out = tmp_path / "best.yaml"
    # An earlier search in this session may still hold a stopped trial's workers whose controller
    # outlived that search's wait (a loaded machine): they are given back first, so that `free` is
    # what this search starts from and not what it would release on the way.
    release_orphaned_placement_groups(wait_s=60.0)
    held = _cpus_held_outside_serve()
    tuned = run_tune(config, 1, space=SearchSpace(space={"optimizer.lr": {"choice": [0.02]}}), out=out,
                     name="tune-one-loop")
    # a finished search holds nothing: the trials' workers are released for the next job
    assert _cpus_held_outside_serve(settle_to=held) == pytest.approx(held)

    trained = run_training(load_config(out), show_progress=False)
    metric = config.training.early_stopping.metric
    assert trained.best_epoch == tuned.best_epoch
    assert trained.metrics[metric] == pytest.approx(tuned.best_metric, abs=1e-6)


def _cpus_held_outside_serve(settle_to: float | None = None, within_s: float = 30.0) -> float:
    """CPUs reserved in the session's Ray by anything but the session's Serve replicas. Serve may
    replace a replica that failed its health check while a search keeps both cores busy, so the
    cluster's free CPUs alone move for reasons that are not the search's. With `settle_to`, waits up
    to `within_s` for the figure to come back to it: the last Ray Data tasks of a finished trial end
    a moment after the search returns."""
    import time

    from ray._private.state import state as global_state
    from ray.core.generated.gcs_pb2 import ActorTableData

    deadline = time.monotonic() + within_s
    while True:
        replicas = sum(actor.required_resources.get("CPU", 0.0) for actor in map(
            ActorTableData.FromString, global_state._connect_and_get_accessor().get_actor_table(None, None))
            if actor.state == ActorTableData.ALIVE and actor.class_name.startswith("ServeReplica"))
        held = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0) - replicas
        if settle_to is None or held == pytest.approx(settle_to) or time.monotonic() >= deadline:
            return held
        time.sleep(0.5)


@pytest.mark.slow
def test_a_dead_runs_placement_group_is_given_back_and_no_other(ray_local):
    """What a trial stopped by ASHA leaves behind: its Ray Train controller, dying with it, reserved
    the workers' CPUs in a placement group. The search gives those back; a living run's placement
    group and the driver's own stay."""
    import time

    from ray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=0)
    class Controller:
        def reserve(self) -> None:
            ray.get(placement_group([{"CPU": 0.25}]).ready())

    def release_within(seconds: float) -> int:  # an actor's death reaches the placement-group table soon after
        released, deadline = 0, time.monotonic() + seconds
        while not released and time.monotonic() < deadline:
            released = release_orphaned_placement_groups()
            time.sleep(0.2)
        return released

    free = ray.available_resources()["CPU"]
    dying, living = Controller.remote(), Controller.remote()
    ray.get([dying.reserve.remote(), living.reserve.remote()])
    own = placement_group([{"CPU": 0.25}])
    ray.get(own.ready())
    ray.kill(dying)
    assert release_within(10) == 1
    assert ray.available_resources()["CPU"] == pytest.approx(free - 0.5)
    remove_placement_group(own)
    ray.kill(living)
    assert release_within(10) == 1
    assert ray.available_resources()["CPU"] == pytest.approx(free)
