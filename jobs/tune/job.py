"""`run_tune`: hyperparameter search for a training config with Ray Tune and the ASHA scheduler.

Each trial is a training config: the base config with one draw of the search space (dotted keys of
the training config, e.g. `optimizer.lr` or `model.router.num_experts`; the architecture is one
such key, so GRec and its baselines get the same search and the same budget). A trial trains with
the job `grec train` runs: its Tune function is the driver of the Ray Train TorchTrainer that
`jobs.train.job.build_trainer` builds (the same workers, DeepSpeed engine, Ray Data pipeline, seed
and validation), whose per-epoch reports reach Tune through Ray Train's TuneReportCallback; ASHA
stops the trials that trail at each rung. The best config therefore trains, with `grec train` and
the same seed, to the metric its trial reported.

MLflow: one parent run (the search: space, budget, the best trial's values and metric, the best
config as an artifact) and one child run per trial (its values; its step and epoch metrics, logged
by the trial's training workers as `grec train` logs them; whether ASHA stopped it). The best config
is written as a training config YAML that `grec train --config` takes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobs.ray_runtime import release_orphaned_placement_groups
from jobs.train.config import ConfigError, TrainConfig, load_config, metric_names, parse_config, resolve

TUNE_DIR = Path(".grec") / "tune"
# Sections a search cannot vary: every trial is compared on the same rows and tasks, holds the
# resources the search reserved for a trial, and logs to the search's experiment.
FIXED_SECTIONS = ("dataset", "features", "tasks", "scaling", "mlflow")
# A trial's function only drives its Ray Train run, whose workers and data pipeline hold the CPUs
# (Tune refuses a request of none); `max_concurrent_trials` bounds how many runs are in flight.
TRIAL_DRIVER_CPUS = 0.01
# How often the search gives back stopped trials' workers, and how long it waits at its end for the
# last stopped trials' training runs to end.
RELEASE_EVERY_S, STOPPED_TRIAL_WAIT_S = 1.0, 30.0
# The child run's tag naming its Tune trial, so that the search can tell stopped trials from failed ones.
TRIAL_ID_TAG = "grec.tune.trial_id"
# ASHA: trials are compared after 1, 2, 4, ... epochs; half go on at each rung.
GRACE_EPOCHS, REDUCTION_FACTOR = 1, 2


class Distribution(BaseModel):
    """One key's distribution: exactly one of `loguniform` / `uniform` ([low, high]), `randint`
    ([low, high), integers) or `choice` (a list of values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [name for name in ("loguniform", "uniform", "randint", "choice") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, randint, choice (got {given or 'none'})")
        bounds = self.loguniform or self.uniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"bounds {list(bounds)}: low must be below high")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        return self

    def sampler(self) -> Any:
        from ray import tune

        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.randint is not None:
            return tune.randint(*self.randint)
        return tune.choice(self.choice)

    def example(self) -> Any:
        """A value inside the distribution (the low end), to check that the key takes it."""
        if self.choice is not None:
            return self.choice[0]
        return (self.loguniform or self.uniform or self.randint)[0]


class SearchSpace(BaseModel):
    """Dotted training-config keys -> distributions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: dict[str, Distribution] = Field(min_length=1)


# The default search: what matters for every architecture, so baselines searched with it get the
# same budget as GRec.
DEFAULT_SPACE = SearchSpace(space={
    "optimizer.lr": Distribution(loguniform=(3e-4, 3e-3)),
    "optimizer.weight_decay": Distribution(choice=[0.0, 0.01, 0.1]),
    "model.dropout": Distribution(choice=[0.0, 0.1, 0.2]),
    "training.batch_size": Distribution(choice=[256, 512, 1024]),
})


def load_space(path: str | Path) -> SearchSpace:
    """A YAML mapping of dotted keys to distributions, e.g. `optimizer.lr: {loguniform: [1e-4, 1e-2]}`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file {path} does not exist")
    try:
        return SearchSpace(space=yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or '(root)'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path}: {problems}") from None


def apply(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config's plain data with dotted keys set; a key must name an existing section."""
    data = copy.deepcopy(data)
    for dotted, value in values.items():
        *path, leaf = dotted.split(".")
        node = data
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"search space key {dotted!r}: {part!r} is not a section of the training config")
            node = node[part]
        node[leaf] = value
    return data


def trial_config(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    return parse_config(apply(base.model_dump(mode="json"), values), "trial config")


def check_space(base: TrainConfig, space: SearchSpace) -> None:
    """Fails before Ray starts when a key is not in the training config or does not take its values."""
    for key, distribution in space.space.items():
        if key.split(".")[0] in FIXED_SECTIONS:
            raise ConfigError(f"search space key {key!r}: {key.split('.')[0]} cannot be searched (every trial "
                              "reads the same rows with the same resources into the same experiment)")
        try:
            trial_config(base, {key: distribution.example()})
        except ConfigError as err:
            raise ConfigError(f"search space key {key!r}: {err}") from None


@dataclass(frozen=True)
class TuneResult:
    best_values: dict[str, Any]
    best_metric: float
    best_epoch: int
    best_config_path: Path
    parent_run_id: str
    trials: int
    stopped_early: int  # trials ASHA stopped before their last epoch


def run_tune(config: TrainConfig | str | Path, trials: int, *, space: SearchSpace | None = None,
             concurrent: int | None = None, out: str | Path | None = None, name: str | None = None) -> TuneResult:
    """Searches `space` (default DEFAULT_SPACE) with `trials` samples and ASHA on the config's
    early-stopping metric; returns the best trial and writes its training config to `out`
    (default .grec/tune/<name>/best_config.yaml). Each trial trains with the config's `scaling`
    (its workers and their CPUs, plus a CPU for its data pipeline); `concurrent` trials at once."""
    from jobs.ray_runtime import ray_session
    from jobs.train.config import cluster_address
    from jobs.train.job import check_fits, check_split_reads_fit, run_cpus
    from registry.tracking import use_tracking_uri

    if not isinstance(config, TrainConfig):
        config = load_config(config)
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    space = space or DEFAULT_SPACE
    check_space(config, space)
    resolved = resolve(config)  # configuration errors surface before Ray starts
    stopping = config.training.early_stopping
    if stopping.metric not in metric_names(resolved.model_config.input):
        raise ConfigError(f"training.early_stopping.metric: {stopping.metric!r} is not a validation metric")
    name = name or f"{config.mlflow.experiment}-tune"
    out = Path(out) if out else TUNE_DIR / name / "best_config.yaml"
    concurrent = concurrent or 1
    address = cluster_address(config)
    # A local Ray gets CPUs for `concurrent` trials (logical CPUs: trials share the cores they find).
    local_cpus = max(2, math.ceil(concurrent * run_cpus(config.scaling)))
    with use_tracking_uri(config.mlflow.tracking_uri) as tracking_uri, \
            ray_session(address, num_cpus=None if address else local_cpus):
        import ray

        check_fits(config.scaling, ray.cluster_resources(), "the Ray cluster")
        check_split_reads_fit(resolve(config))
        return _search(config, space, trials, concurrent, out, name, tracking_uri)


def _search(config: TrainConfig, space: SearchSpace, trials: int, concurrent: int, out: Path, name: str,
            tracking_uri: str) -> TuneResult:
    from mlflow import MlflowClient
    from ray import tune

    from registry.tracking import ensure_experiment, flatten_params

    stopping = config.training.early_stopping
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, config.mlflow.experiment, tracking_uri)
    parent = client.create_run(experiment_id, run_name=name, tags={"grec.job": "tune"}).info.run_id
    try:
        client.log_batch(parent, params=[_param(k, v) for k, v in sorted({
            "trials": str(trials), "concurrent": str(concurrent), "scheduler": "ASHA",
            "metric": stopping.metric, "mode": stopping.mode, "max_epochs": str(config.training.epochs),
            **{f"space.{k}": str(v.model_dump(exclude_none=True)) for k, v in space.space.items()},
            **flatten_params(config.model_dump(mode="json"), "base.")}.items())])
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=_anchored(config).model_dump(mode="json"), tracking_uri=tracking_uri,
                                 experiment_id=experiment_id, parent_run_id=parent),
            {"cpu": TRIAL_DRIVER_CPUS})
        scheduler = _recording_asha(time_attr="training_iteration", max_t=config.training.epochs,
                                    grace_period=GRACE_EPOCHS, reduction_factor=REDUCTION_FACTOR)
        watch = _trial_watch()
        tuner = tune.Tuner(
            trainable,
            param_space={key: distribution.sampler() for key, distribution in space.space.items()},
            tune_config=tune.TuneConfig(metric=stopping.metric, mode=stopping.mode, scheduler=scheduler,
                                        num_samples=trials, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=name, verbose=0, storage_path=config.scaling.storage_path
                                      or str((Path.cwd() / TUNE_DIR / "ray_results").resolve()),
                                      callbacks=[watch]),
        )
        results = tuner.fit()
        release_orphaned_placement_groups(wait_s=STOPPED_TRIAL_WAIT_S)  # the last trials' workers
        errors = [r.error for r in results if r.error is not None]
        if errors and len(errors) == len(results):
            raise RuntimeError(f"every trial failed; the first: {errors[0]}")
        best = results.get_best_result(metric=stopping.metric, mode=stopping.mode, scope="all")
        values = dict(best.config)
        frame = best.metrics_dataframe
        column = frame[stopping.metric]
        best_row = column.idxmax() if stopping.mode == "max" else column.idxmin()
        best_metric, best_epoch = float(column[best_row]), int(frame["epoch"][best_row])
        stopped = _close_trial_runs(client, experiment_id, parent, stopped=scheduler.stopped, errored=watch.errored)
        best_config = trial_config(config, values)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_best_config_yaml(best_config, values, best_metric, stopping.metric, trials))
        client.log_batch(parent, params=[_param(f"best.{k}", str(v)) for k, v in sorted(values.items())])
        client.log_metric(parent, f"best/{stopping.metric}", best_metric)
        client.log_metric(parent, "trials_stopped_by_asha", stopped)
        client.log_artifact(parent, str(out), "tune")
    except BaseException:
        _close_trial_runs(client, experiment_id, parent, stopped=set(), errored=None)
        client.set_terminated(parent, status="FAILED")
        raise
    client.set_terminated(parent)
    return TuneResult(values, best_metric, best_epoch, out, parent, len(results), stopped)


def _trial_watch():
    """A Tune callback that records the trials that failed and, every RELEASE_EVERY_S of the search,
    gives back the CPUs of stopped trials' training workers (jobs.ray_runtime.
    release_orphaned_placement_groups says why they stay reserved): without it a search with more
    trials than the cluster holds at once waits forever."""
    import time

    from ray import tune

    class TrialWatch(tune.Callback):
        def __init__(self) -> None:
            self.last = time.monotonic()
            self.errored: set[str] = set()

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.last >= RELEASE_EVERY_S:
                release_orphaned_placement_groups()
                self.last = time.monotonic()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.errored.add(trial.trial_id)

    return TrialWatch()


def _recording_asha(**kwargs: Any) -> Any:
    """An ASHAScheduler(**kwargs) whose `stopped` holds the trials it stopped before their last epoch."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        """ASHA that remembers the trials it stopped before their last epoch. Tune cannot say so
        afterwards: a stopped trial is TERMINATED like a finished one, or ERROR when its training
        call saw the stop first."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.stopped: set[str] = set()

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
                self.stopped.add(trial.trial_id)
            return decision

    return RecordingASHA(**kwargs)


def _anchored(config: TrainConfig) -> TrainConfig:
    """The config with a local dataset path and the checkpoint storage made absolute: a trial's
    function runs in its own working directory (Tune's trial directory)."""
    from feature_store.storage import is_uri
    from jobs.train.job import checkpoint_storage

    path = config.dataset.path
    return config.with_overrides(dataset={"path": path if is_uri(path) else str(Path(path).resolve())},
                                 scaling={"storage_path": checkpoint_storage(config)})


def _close_trial_runs(client, experiment_id: str, parent: str, stopped: set[str], errored: set[str] | None) -> int:
    """Closes the search's child runs; returns how many ASHA stopped. Only the search closes them: a
    stopped trial's training call may still be unwinding when the search ends, and a status it wrote
    then would overwrite the search's. Trials in `stopped` end KILLED with tag
    grec.tune.stopped_by=asha, those in `errored` FAILED, the rest FINISHED (`errored` None: the
    search itself failed, every open run ends FAILED)."""
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    killed = 0
    for run in children:
        if run.info.status != "RUNNING":
            continue
        trial_id = run.data.tags.get(TRIAL_ID_TAG)
        if trial_id in stopped:
            client.set_tag(run.info.run_id, "grec.tune.stopped_by", "asha")
            client.set_terminated(run.info.run_id, status="KILLED")
            killed += 1
        else:
            client.set_terminated(run.info.run_id,
                                  status="FAILED" if errored is None or trial_id in errored else "FINISHED")
    return killed


def _best_config_yaml(config: TrainConfig, values: dict[str, Any], metric_value: float, metric: str,
                      trials: int) -> str:
    chosen = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
    header = (f"# The best of {trials} `grec tune` trials ({metric} {metric_value:.4f} on validation): {chosen}\n"
              "# Train it with: grec train --config THIS_FILE (with the same scaling.num_workers and seed it trains "
              "to that metric)\n")
    return header + yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value[:6000])


def _trial(values: dict[str, Any], *, base: dict[str, Any], tracking_uri: str, experiment_id: str,
           parent_run_id: str) -> None:
    """One trial, in its Tune function: open its MLflow child run, then fit the Ray Train job of
    `grec train` on the trial's config, every epoch's report passed on to Tune."""
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.train.job import best_reported, build_trainer
    from jobs.train.progress import ProgressBoard
    from registry.tracking import flatten_params

    resolved = resolve(parse_config(apply(base, values), "trial config"))
    stopping = resolved.config.training.early_stopping
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = client.create_run(experiment_id, run_name=tune.get_context().get_trial_name(),
                               tags={"mlflow.parentRunId": parent_run_id, "grec.job": "tune-trial",
                                     TRIAL_ID_TAG: tune.get_context().get_trial_id()}).info.run_id
    client.log_batch(run_id, params=[_param(k, str(v)) for k, v in sorted(flatten_params(values).items())])
    # The run stays open: the search closes it, knowing whether ASHA stopped the trial (_close_trial_runs).
    trainer = build_trainer(resolved, tracking_uri, run_id, ProgressBoard.remote(), name=f"grec-tune-{run_id}",
                            callbacks=(TuneReportCallback(),))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    _, best_metrics = best_reported(result.best_checkpoints, stopping.metric, stopping.mode)
    client.set_tag(run_id, "grec.tune.best_epoch", str(int(best_metrics["epoch"])))
