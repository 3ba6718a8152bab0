"""`build_recommendation_stage`: a registered model version's recommendation stage (recommend/), as a
Ray job: fitted on the training split, tuned on the validation split, refitted on both.

1. Fit on train, judge on validation (the users' validation items, the lists leaving out what they
   took up in training; NDCG@k of every event): the co-visitation settings of a small grid, the
   popularity window, and the next-item transformer epoch by epoch (early stopping).
2. Every binary task gets a blend of the sources' terms and the ranker's task scores, fitted on the
   same validation lists for that task's positives (recommend/blend.py).
3. Refit on train + validation with the chosen settings (the next-item model for the chosen number
   of epochs), keep the blends, and log the stage's files as the version's retrieval index
   (registry.retrieval_index): the endpoint serving that version, the batch job and the evaluation
   load them; other versions are not touched.
The fit runs in one Ray task (CPUs `train_cpus`), which loads the model and reads the dataset itself.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from grec.covisitation import CovisitationConfig
from grec.next_item import NextItemConfig
from jobs.ray_runtime import ray_session

logger = logging.getLogger(__name__)

# The co-visitation settings tried on validation (window, normalization, the user's items that vote).
COVISITATION_GRID = tuple(
    CovisitationConfig(window=window, target_exponent=exponent, last_items=last, recency_decay=decay)
    for window in (3, 10) for exponent in (0.0, 0.5) for last in (5, 20, 50) for decay in (0.9, 1.0)
)
POPULARITY_WINDOWS = (1.0, 7.0, 28.0, 91.0, None)


class IndexBuildConfig(BaseModel):
    """What `grec build-index` fits and how it tunes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(10, ge=1, description="list length the settings and blends are chosen for (NDCG@k)")
    candidates_per_source: int = Field(100, ge=1, description="items each source adds to a user's candidates")
    covisitation: bool = Field(True, description="use the co-visitation source")
    covisitation_grid: tuple[CovisitationConfig, ...] = COVISITATION_GRID
    popularity_windows: tuple[float | None, ...] = POPULARITY_WINDOWS
    next_item: NextItemConfig | None = Field(default_factory=NextItemConfig,
                                             description="the next-item transformer; None leaves it out")
    item_features: bool = Field(True, description="the next-item model reads the ranker's item token of each item")
    eval_every: int = Field(5, ge=1, description="next-item epochs between validation checks")
    patience: int = Field(3, ge=1, description="checks without improvement before the next-item model stops")
    ranker_terms: bool = Field(True, description="blends may use the ranker's task scores")
    max_validation_users: int | None = Field(None, ge=1, description="validation users judged (a seeded sample)")
    train_cpus: float = Field(1.0, gt=0, description="CPUs of the Ray task that fits the stage")
    seed: int = 0


@dataclass(frozen=True)
class IndexBuildResult:
    model_name: str
    model_version: str
    uri: str
    items: int
    validation: dict[str, Any]  # what was chosen and how it scored on validation
    seconds: dict[str, float]


def build_recommendation_stage(model_uri: str, data_dir: str | Path, config: IndexBuildConfig | None = None, *,
                               tracking_uri: str | None = None, address: str | None = None) -> IndexBuildResult:
    """Fits, tunes, refits and logs the stage of the version `model_uri` names (see the module's
    docstring). Model and data are checked before Ray starts."""
    import mlflow
    import ray

    from feature_store.storage import location_of
    from jobs.evaluate.job import prepare_evaluation
    from registry.retrieval_index import log_retrieval_index

    config = config or IndexBuildConfig()
    started = time.perf_counter()
    model, prepared = prepare_evaluation(model_uri, data_dir, "validation")
    if not any(t.kind == "binary" for t in model.spec.tasks):
        raise ValueError(f"model {model.name} has no binary task to recommend for (tasks: {model.spec.task_names})")
    tracking_uri = tracking_uri or mlflow.get_registry_uri()
    with ray_session(address):
        remote = ray.remote(num_cpus=config.train_cpus)(fit_stage_files)
        files, report = ray.get(remote.remote(model.pinned_uri, tracking_uri, location_of(prepared), config))
    mark = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        uri = log_retrieval_index(model.name, model.version, Path(tmp))
    seconds = {**report.pop("seconds"), "log": round(time.perf_counter() - mark, 2),
               "total": round(time.perf_counter() - started, 2)}
    logger.info("recommendation stage of %s version %s: %d items, validation NDCG@%d %s, %.0f s", model.name,
                model.version, report["items"], config.k,
                ", ".join(f"{t} {v['ndcg']:.4f}" for t, v in report["blends"].items()), seconds["total"])
    return IndexBuildResult(model.name, model.version, uri, report["items"], report, seconds)


def fit_stage_files(model_uri: str, tracking_uri: str, data_location: str,
                    config: IndexBuildConfig) -> tuple[dict[str, bytes], dict[str, Any]]:
    """In a Ray task: the fitted stage's files (name -> bytes, so the driver logs them from any node)
    and what the fit chose and measured."""
    import torch

    from feature_store.storage import open_dataset
    from registry.models import load_registered

    torch.set_num_threads(max(1, int(config.train_cpus)))
    loaded = load_registered(model_uri, tracking_uri=tracking_uri)
    prepared = open_dataset(data_location)
    stage, report = fit_stage(loaded, prepared, config)
    with tempfile.TemporaryDirectory() as tmp:
        stage.save(tmp)
        files = {path.name: path.read_bytes() for path in Path(tmp).iterdir()}
    return files, report


def fit_stage(loaded: Any, prepared: Any, config: IndexBuildConfig) -> tuple[Any, dict[str, Any]]:
    """The stage of the registered model `loaded` (registry.models.RegisteredModel) on `prepared`."""
    from recommend.fit import StageFitter

    return StageFitter(loaded, prepared, config).run()
