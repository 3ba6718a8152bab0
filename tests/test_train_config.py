"""Configuration errors fail before any cluster starts, with a message naming the problem."""

from __future__ import annotations

import pytest

from jobs.cli import main


def _fails_before_ray(config, match: str) -> None:
    """The error is raised and no Ray was started for it (one started by other tests stays as it was)."""
    import ray

    from jobs.train import ConfigError, run_training

    ray_was_running = ray.is_initialized()
    with pytest.raises(ConfigError, match=match):
        run_training(config, show_progress=False)
    assert ray.is_initialized() == ray_was_running


def test_unknown_task(train_tiny_config, tiny_movielens, tmp_path):
    config = train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db").model_copy(update={"tasks": ["buy"]})
    _fails_before_ray(config, r"tasks: unknown task\(s\) \['buy'\]; the dataset has \['like', 'love', 'rating', 'rated'\]")


def test_missing_dataset(train_tiny_config, tmp_path):
    config = train_tiny_config(tmp_path / "nowhere", f"sqlite:///{tmp_path}/m.db")
    _fails_before_ray(config, r"dataset.path: .*nowhere is not a prepared dataset")


def test_inconsistent_dimensions(train_tiny_config, tiny_movielens, tmp_path):
    from jobs.train import ConfigError

    with pytest.raises(ConfigError, match=r"model: .*d_model 15 must split into num_heads"):
        train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db", model={"d_model": 15})
    with pytest.raises(ConfigError, match=r"model.router.top_k: .*greater than or equal to 0"):
        train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db", model={"router": {"top_k": -1}})


def test_unknown_early_stopping_metric(train_tiny_config, tiny_movielens, tmp_path):
    config = train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db",
                               training={"early_stopping": {"metric": "val/rating/auc", "mode": "max"}})
    _fails_before_ray(config, r"training.early_stopping.metric: unknown metric 'val/rating/auc'")


def test_invalid_fields_are_all_named(tmp_path):
    from jobs.train import ConfigError, load_config

    path = tmp_path / "bad.yaml"
    path.write_text("dataset: {path: x}\ntraining: {epochs: 0, learning_rate: 1}\n"
                    "deepspeed: {zero_stage: 4}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "training.epochs: Input should be greater than or equal to 1" in message
    assert "training.learning_rate: Extra inputs are not permitted" in message
    assert "deepspeed.zero_stage" in message


def test_cli_exits_2_with_the_message(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text(f"dataset: {{path: {tmp_path / 'missing'}}}\n")
    import ray

    ray_was_running = ray.is_initialized()
    assert main(["train", "--config", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--no-progress"]) == 2
    assert ray.is_initialized() == ray_was_running
    assert "grec train: error: dataset.path:" in capsys.readouterr().err


def test_offload_without_zero_is_rejected_with_the_reason(tmp_path):
    from jobs.train import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"deepspeed: .*offload_optimizer needs zero_stage >= 1"):
        parse_config({"dataset": {"path": str(tmp_path)}, "deepspeed": {"offload_optimizer": True}})


def _grec_train(config_path, *options: str):
    """`grec train` in a fresh interpreter (no Ray started by other tests in this process)."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    code = "import sys\nfrom jobs.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "train", "--config", str(config_path), *options],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def test_a_run_that_this_machine_cannot_place_is_refused_before_ray_starts(train_tiny_config, tiny_movielens,
                                                                            tmp_path):
    import os

    import torch
    import yaml

    config = train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    cpus = len(os.sched_getaffinity(0))
    refused = _grec_train(path, "--num-workers", "64")
    assert refused.returncode == 2, refused.stderr
    assert (f"grec train: error: scaling: 64 workers x 0.5 CPUs per worker = 32 CPUs, plus 1 for the data pipeline, "
            f"need 33 CPUs; this machine has {cpus}") in refused.stderr
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    refused = _grec_train(path, "--use-gpu", "--num-workers", str(gpus + 1))
    assert refused.returncode == 2, refused.stderr
    assert (f"grec train: error: scaling.use_gpu: {gpus + 1} workers need a GPU each; this machine has {gpus} GPUs"
            in refused.stderr)
    assert "Traceback" not in refused.stderr and "starting a local Ray" not in refused.stderr


def test_a_cluster_without_the_resources_is_named_with_its_numbers():
    from jobs.train import ConfigError
    from jobs.train.config import ScalingSection
    from jobs.train.job import check_fits

    check_fits(ScalingSection(num_workers=2, cpus_per_worker=1.5), {"CPU": 4.0}, "the Ray cluster")  # 3 + 1 fit
    with pytest.raises(ConfigError, match=r"need 5 CPUs; the Ray cluster has 4 "):
        check_fits(ScalingSection(num_workers=2, cpus_per_worker=2), {"CPU": 4.0}, "the Ray cluster")
    with pytest.raises(ConfigError, match="scaling.use_gpu: 2 workers need a GPU each; the Ray cluster has 1 GPUs"):
        check_fits(ScalingSection(num_workers=2, use_gpu=True), {"CPU": 8.0, "GPU": 1.0}, "the Ray cluster")


def test_a_split_too_big_for_the_cluster_s_nodes_is_refused_before_the_mlflow_run(ray_local, train_tiny_config,
                                                                                  tiny_movielens, tmp_path,
                                                                                  monkeypatch):
    """The read-size check runs before the run is created: a refused run leaves no FAILED run behind."""
    from mlflow import MlflowClient

    import jobs.train.job as train_job
    from jobs.train import ConfigError, run_training
    from jobs.train.data import ReadPlan

    tracking_uri = f"sqlite:///{tmp_path}/m.db"
    config = train_tiny_config(tiny_movielens.root, tracking_uri, mlflow={"experiment": "refused-reads"})
    monkeypatch.setattr(train_job, "split_read_plans",
                        lambda resolved: {"train": ReadPlan(row_bytes=1_000, row_group_bytes=2**50)})
    with pytest.raises(ConfigError, match=r"the train split's read tasks need .* MiB each .* the largest node of the "
                                          r"Ray cluster has"):
        run_training(config, show_progress=False)
    experiment = MlflowClient(tracking_uri).get_experiment_by_name("refused-reads")
    assert experiment is None or not MlflowClient(tracking_uri).search_runs([experiment.experiment_id])


def test_the_trainer_reads_with_the_plans_the_fit_check_made(ray_local, train_tiny_config, tiny_movielens, tmp_path,
                                                             monkeypatch):
    """The split read plans are read from the footers once: check_split_reads_fit hands the ones it
    checked to the trainer (build_trainer), which does not read them again."""
    import jobs.train.job as train_job
    from jobs.train import run_training

    made, passed = [], {}
    real = train_job.split_read_plans
    monkeypatch.setattr(train_job, "split_read_plans", lambda resolved: made.append(real(resolved)) or made[-1])

    def register(resolved, tracking_uri, show_progress, listeners, extension=None, plans=None):
        passed["plans"] = plans
        passed["trainer"] = train_job.build_trainer(resolved, tracking_uri, "run", None, name="plans", plans=plans)

    monkeypatch.setattr(train_job, "_train_and_register", register)
    run_training(train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db"), show_progress=False)
    assert len(made) == 1 and passed["plans"] is made[0]
    assert set(passed["trainer"].datasets) == {"train", "validation"}
