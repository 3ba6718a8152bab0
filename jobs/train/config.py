"""The training job's config: a YAML file validated once, then resolved against the prepared
dataset and the model library before any cluster starts.

Every error names the field that is wrong and what was expected (`ConfigError`, a ValueError).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grec import GRecConfig, InputSpec, ModelSettings, TableInfo


class ConfigError(ValueError):
    """The training config is invalid or does not fit the dataset / model."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSection(_Section):
    path: str = Field(description="prepared dataset (`grec data prepare --out ...`): a directory, relative to the "
                                  "working directory, or an s3://BUCKET/PREFIX URI, read from the store by every node")
    train_split: str = "train"
    validation_split: str = "validation"
    shuffle_buffer: int = Field(1024, ge=0, description="rows in each worker's local shuffle buffer; 0 keeps file order")


class FeaturesSection(_Section):
    """Which of the dataset's features the model reads: `include` (None: every feature of the
    dataset spec) minus `exclude`. Sequences need the feature whose vocabulary they use."""

    include: list[str] | None = Field(None, description="the only features the model reads (default: all)")
    exclude: list[str] = Field(default_factory=list, description="features the model does not read")


class OptimizerSection(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class DeepSpeedSection(_Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_clipping: float = Field(1.0, ge=0, description="max global gradient norm; 0 disables clipping")
    offload_optimizer: bool = Field(False, description="ZeRO optimizer state offload to CPU (stage >= 1)")

    @model_validator(mode="after")
    def _supported(self) -> DeepSpeedSection:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        return self


class SparseSection(_Section):
    """Where the embedding tables train. `auto`: inside the DeepSpeed engine unless a table holds at
    least `shard_threshold` parameters, then every table is sharded by torchrec's
    DistributedModelParallel with a fused optimizer (`optimizer`, `lr`) applied in backward."""

    mode: Literal["auto", "engine", "dmp"] = "auto"
    shard_threshold: int = Field(10_000_000, ge=1, description="parameters (rows x dim) of a table that make `auto` shard")
    optimizer: Literal["adagrad", "sgd", "adam"] = "adagrad"
    lr: float = Field(0.05, gt=0)


class EarlyStoppingSection(_Section):
    metric: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(2, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class TrainingSection(_Section):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=1, description="micro-batch per worker")
    eval_batch_size: int = Field(1024, ge=1)
    seed: int = 0
    log_every_n_steps: int = Field(10, ge=1)
    early_stopping: EarlyStoppingSection = EarlyStoppingSection()


class ScalingSection(_Section):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(2, ge=-1, description="worker-group failures to recover from (one dead worker "
                              "restarts the whole group: one failure; -1: unlimited)")
    checkpoints_to_keep: int = Field(2, ge=1)
    address: str | None = Field(None, description="Ray cluster address; None: $RAY_ADDRESS or a local Ray")
    storage_path: str | None = Field(None, description="checkpoint storage every node sees: s3://BUCKET/PREFIX or a "
                                                       "shared file system path; required on a cluster, default "
                                                       ".grec/ray_results on a local Ray")


class MlflowSection(_Section):
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI or .grec/mlflow.db")
    experiment: str = "grec"
    registered_model: str = "grec"
    run_name: str | None = None


class TrainConfig(_Section):
    dataset: DatasetSection
    model: ModelSettings = Field(default_factory=ModelSettings,
                                 description="the model (grec.ModelSettings); its input spec comes from the dataset")
    tasks: list[str] | None = Field(None, description="tasks to train (default: every task of the dataset)")
    features: FeaturesSection = Field(default_factory=FeaturesSection,
                                      description="features the model reads (default: every feature of the dataset)")
    optimizer: OptimizerSection = OptimizerSection()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    sparse: SparseSection = SparseSection()
    training: TrainingSection = TrainingSection()
    scaling: ScalingSection = ScalingSection()
    mlflow: MlflowSection = MlflowSection()

    def with_overrides(self, **sections: dict[str, Any]) -> TrainConfig:
        """A copy with fields of sections replaced, e.g. with_overrides(scaling={"num_workers": 1});
        None values are ignored (unset command-line options)."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section].update({k: v for k, v in values.items() if v is not None})
        return parse_config(data)


def parse_config(data: Any, source: str = "config") -> TrainConfig:
    """A TrainConfig from plain data; errors list every bad field as `section.field: problem`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_problems(err)}") from None


def _problems(err: ValidationError) -> str:
    """Every error of a validation as `path: problem` (a whole-section check: the problem alone),
    without pydantic's dump of the input."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) + ': ' if e['loc'] else ''}"
                     f"{e['msg'].removeprefix('Value error, ')}" for e in err.errors())


def read_config_file(path: str | Path) -> Any:
    """The parsed YAML of a config file, not yet validated (a clear error if missing or not YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None


def load_config(path: str | Path) -> TrainConfig:
    """Reads and validates a YAML training config."""
    return parse_config(read_config_file(path), str(path))


# ---- resolution against the dataset and the model -------------------------------------------------
def metric_names(spec: InputSpec) -> list[str]:
    """Validation metrics the job computes for the spec's tasks (early stopping picks one): the
    definitions shared with offline evaluation (jobs/metrics)."""
    from jobs.metrics import validation_metric_names
    from jobs.train.metrics import TASK_AVERAGE_AUC

    average = [TASK_AVERAGE_AUC] if any(task.kind == "binary" for task in spec.tasks) else []
    return ["val/loss", *(name for task in spec.tasks for name in validation_metric_names(task.name, task.kind)),
            *average]


def cluster_address(config: TrainConfig) -> str | None:
    """The Ray cluster the run joins (scaling.address, else $RAY_ADDRESS); None: a local Ray."""
    address = config.scaling.address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def check_storage(config: TrainConfig) -> None:
    """Checkpoints must go where every node can write and the driver can read: on a cluster the
    default (a folder on the driver's machine) would lose them, so a cluster run names its storage.
    Object-store locations (checkpoints, MLflow artifacts) must answer with credentials."""
    from feature_store.errors import FeatureStoreError
    from feature_store.storage import check_bucket, is_uri

    storage, address = config.scaling.storage_path, cluster_address(config)
    if address and storage is None:
        raise ConfigError(f"scaling.storage_path: a run on the Ray cluster at {address} needs checkpoint storage every "
                          "node sees (s3://BUCKET/PREFIX or a shared file system path); the default "
                          ".grec/ray_results is on this machine only")
    if storage is not None and is_uri(storage):
        try:
            check_bucket(storage)
        except FeatureStoreError as err:
            raise ConfigError(f"scaling.storage_path: {err}") from None
    elif address and storage is not None and not Path(storage).is_absolute():
        raise ConfigError(f"scaling.storage_path: {storage!r} is relative to this machine's working directory; on a "
                          "cluster give an absolute path on a shared file system or an s3:// URI")
    from registry.tracking import ARTIFACT_ROOT_ENV

    artifacts = os.environ.get(ARTIFACT_ROOT_ENV)
    if artifacts and is_uri(artifacts):
        try:
            check_bucket(artifacts)
        except FeatureStoreError as err:
            raise ConfigError(f"{ARTIFACT_ROOT_ENV}: {err}") from None


@dataclass(frozen=True)
class ResolvedConfig:
    """A config checked against its dataset: everything a worker needs, as plain data."""

    config: TrainConfig
    dataset_dir: Path  # on this machine: the dataset, or (for a URI) a copy of its JSON files
    model_config: GRecConfig
    tables: tuple[TableInfo, ...]
    sharded: bool  # True: the DistributedModelParallel path
    dataset_location: str  # where the training set is read: the dataset directory or its URI

    @property
    def task_names(self) -> list[str]:
        return self.model_config.task_names


def resolve(config: TrainConfig) -> ResolvedConfig:
    """Checks the dataset, the tasks, the model config and the metric names; builds the model once
    (without pretrained text weights) so inconsistent dimensions fail here, not in a worker."""
    from feature_store.errors import FeatureStoreError
    from feature_store.prepare import PreparedDataset, open_prepared
    from feature_store.storage import fetch_metadata, is_uri, list_files
    from grec import build_model

    location = config.dataset.path.rstrip("/")
    try:
        if is_uri(location):  # the version published now: the whole run reads that one
            metadata, location = fetch_metadata(location)
            prepared = PreparedDataset(metadata)
        else:
            prepared = open_prepared(location)
        for split in (config.dataset.train_split, config.dataset.validation_split):
            if not list_files(location, f"training_set/split={split}"):
                raise ConfigError(f"dataset: split {split!r} has no Parquet files under {location}/training_set")
    except FeatureStoreError as err:
        raise ConfigError(f"dataset.path: {err}") from None
    check_storage(config)
    from feature_store.definitions import select_features

    try:
        spec = InputSpec.from_dict(select_features(prepared.spec(), config.features.include, config.features.exclude))
    except ValueError as err:
        raise ConfigError(f"features: {err}") from None
    spec = _select_tasks(spec, config.tasks)
    try:
        model_config = GRecConfig.from_settings(config.model, spec)
    except ValidationError as err:
        raise ConfigError(f"model: {_problems(err)}") from None
    metric = config.training.early_stopping.metric
    if metric not in metric_names(spec):
        raise ConfigError(f"training.early_stopping.metric: unknown metric {metric!r}; expected one of {metric_names(spec)}")
    try:
        tables = tuple(build_model(model_config, pretrained_text=False).embedding_tables())
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"model: cannot build the model ({err})") from None
    return ResolvedConfig(config, prepared.root, model_config, tables, _use_sharding(config.sparse, tables),
                          location if is_uri(location) else str(prepared.root))


def _select_tasks(spec: InputSpec, tasks: list[str] | None) -> InputSpec:
    if tasks is None:
        return spec
    known = [t.name for t in spec.tasks]
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(f"tasks: unknown task(s) {unknown}; the dataset has {known}")
    if not tasks:
        raise ConfigError(f"tasks: empty; name at least one of {known}")
    return spec.replace(tasks=tuple(t for t in spec.tasks if t.name in tasks))


def _use_sharding(sparse: SparseSection, tables: tuple[TableInfo, ...]) -> bool:
    if sparse.mode != "auto":
        return sparse.mode == "dmp"
    return any(t.num_parameters >= sparse.shard_threshold for t in tables)
