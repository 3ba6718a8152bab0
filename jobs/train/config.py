"""The training job's config: a YAML file validated once, then resolved against the prepared
dataset and the model library before any cluster starts.

Every error names the field that is wrong and what was expected (`ConfigError`, a ValueError).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grec import GRecConfig, InputSpec, TableInfo


class ConfigError(ValueError):
    """The training config is invalid or does not fit the dataset / model."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSection(_Section):
    path: Path = Field(description="prepared-dataset directory (`grec data prepare --out DIR`), relative to the working directory")
    train_split: str = "train"
    validation_split: str = "validation"
    shuffle_buffer: int = Field(1024, ge=0, description="rows in each worker's local shuffle buffer; 0 keeps file order")


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
    max_failures: int = Field(2, ge=-1, description="worker failures to recover from (-1: unlimited)")
    checkpoints_to_keep: int = Field(2, ge=1)
    address: str | None = Field(None, description="Ray cluster address; None: $RAY_ADDRESS or a local Ray")
    storage_path: str | None = Field(None, description="checkpoint storage (a shared path on a cluster); default .grec/ray_results")


class MlflowSection(_Section):
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI or .grec/mlflow.db")
    experiment: str = "grec"
    registered_model: str = "grec"
    run_name: str | None = None


class TrainConfig(_Section):
    dataset: DatasetSection
    model: dict[str, Any] = Field(default_factory=dict, description="grec.GRecConfig fields except `input`")
    tasks: list[str] | None = Field(None, description="tasks to train (default: every task of the dataset)")
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
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Reads and validates a YAML training config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return parse_config(data, str(path))


# ---- resolution against the dataset and the model -------------------------------------------------
def metric_names(spec: InputSpec) -> list[str]:
    """Validation metrics the job computes for the spec's tasks (early stopping picks one)."""
    names = ["val/loss"]
    for task in spec.tasks:
        if task.kind == "binary":
            names += [f"val/{task.name}/auc", f"val/{task.name}/logloss"]
        elif task.kind == "regression":
            names += [f"val/{task.name}/rmse"]
        else:
            names += [f"val/{task.name}/logloss", f"val/{task.name}/accuracy"]
    return names


@dataclass(frozen=True)
class ResolvedConfig:
    """A config checked against its dataset: everything a worker needs, as plain data."""

    config: TrainConfig
    dataset_dir: Path
    model_config: GRecConfig
    tables: tuple[TableInfo, ...]
    sharded: bool  # True: the DistributedModelParallel path

    @property
    def task_names(self) -> list[str]:
        return self.model_config.task_names


def resolve(config: TrainConfig) -> ResolvedConfig:
    """Checks the dataset, the tasks, the model config and the metric names; builds the model once
    (without pretrained text weights) so inconsistent dimensions fail here, not in a worker."""
    from feature_store.errors import FeatureStoreError
    from feature_store.prepare import open_prepared
    from grec import build_model

    try:
        prepared = open_prepared(config.dataset.path)
    except FeatureStoreError as err:
        raise ConfigError(f"dataset.path: {err}") from None
    for split in (config.dataset.train_split, config.dataset.validation_split):
        if not any((prepared.training_dir / f"split={split}").glob("*.parquet")):
            raise ConfigError(f"dataset: split {split!r} has no Parquet files under {prepared.training_dir}")
    spec = InputSpec.from_dict(prepared.spec())
    spec = _select_tasks(spec, config.tasks)
    if "input" in config.model:
        raise ConfigError("model.input: the input spec comes from the dataset; remove it from the config")
    try:
        model_config = GRecConfig.from_dict({**config.model, "input": spec.to_dict()})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from None
    metric = config.training.early_stopping.metric
    if metric not in metric_names(spec):
        raise ConfigError(f"training.early_stopping.metric: unknown metric {metric!r}; expected one of {metric_names(spec)}")
    try:
        tables = tuple(build_model(model_config, pretrained_text=False).embedding_tables())
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"model: cannot build the model ({err})") from None
    return ResolvedConfig(config, prepared.root, model_config, tables, _use_sharding(config.sparse, tables))


def _select_tasks(spec: InputSpec, tasks: list[str] | None) -> InputSpec:
    if tasks is None:
        return spec
    known = [t.name for t in spec.tasks]
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(f"tasks: unknown task(s) {unknown}; the dataset has {known}")
    if not tasks:
        raise ConfigError(f"tasks: empty; name at least one of {known}")
    return dataclasses.replace(spec, tasks=tuple(t for t in spec.tasks if t.name in tasks))


def _use_sharding(sparse: SparseSection, tables: tuple[TableInfo, ...]) -> bool:
    if sparse.mode != "auto":
        return sparse.mode == "dmp"
    return any(t.num_parameters >= sparse.shard_threshold for t in tables)
