"""Every dataset's training config (configs/*_grec.yaml) trains end to end on a small slice of its
dataset, in process (`jobs.train.local_fit.fit`: the model code `grec train` runs, without Ray Train
or DeepSpeed); a config used on the wrong dataset fails naming the key to change."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from feature_store.prepare import prepare_dataset
from feature_store.sources import SourceOptions, SyntheticOptions
from grec import build_model
from jobs.train import load_config
from jobs.train.config import ConfigError, resolve
from jobs.train.local_fit import fit

REPO_ROOT = Path(__file__).resolve().parent.parent

# config -> (dataset it is for, events in the slice)
CONFIGS = {
    "movielens_grec.yaml": ("movielens-100k", 400),
    "movielens_genres_grec.yaml": ("movielens-100k-genres", 400),
    "womens_clothing_grec.yaml": ("womens-clothing", 200),
    "adult_grec.yaml": ("adult", 400),
    "synthetic_grec.yaml": ("synthetic", 400),
}


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    root = tmp_path_factory.mktemp("config_slices")
    prepared = {}
    for dataset, events in CONFIGS.values():
        options = SourceOptions(max_events=events, sequence_length=8,
                                synthetic=SyntheticOptions(num_events=events, num_items=50))
        prepared[dataset] = prepare_dataset(dataset, root / dataset, options=options)
    return prepared


def small(config_name: str, dataset_dir: Path, tmp_path: Path):
    """The config on a slice, one epoch; a MiniLM text head becomes the tiny BERT (MiniLM's weights and
    cost are the text tests' business, not the configs'), keeping the config's other text keys."""
    config = load_config(REPO_ROOT / "configs" / config_name)
    text = config.model.text
    model = {"text": {**text.model_dump(), "backbone": "tiny_bert", "freeze": True}} if text is not None else {}
    return config.with_overrides(
        dataset={"path": str(dataset_dir)}, training={"epochs": 1, "batch_size": 64, "eval_batch_size": 256},
        mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, model=model)


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_each_dataset_config_trains_on_a_slice(slices, config_name, tmp_path):
    dataset, _ = CONFIGS[config_name]
    prepared = slices[dataset]
    config = small(config_name, prepared.root, tmp_path)
    resolved = resolve(config)
    transforms = prepared.transforms()
    train = transforms.transform(prepared.read_split("train"))
    validation = transforms.transform(prepared.read_split("validation"))
    result = fit(build_model(resolved.model_config), train, validation, config)
    metric = config.training.early_stopping.metric
    assert math.isfinite(result.history[0].train_loss) and math.isfinite(result.best_metrics[metric])
    assert [record.dropped_fraction for record in result.history] == [0.0]  # dropless: trained = served
    predictions = result.model.predict(result.model.collate(validation.slice(0, 8)))
    assert set(predictions) == set(resolved.task_names)
    assert "user_id" not in [f.name for f in resolved.model_config.input.categorical] or dataset in (
        "movielens-100k", "movielens-100k-genres", "synthetic")  # only real users are a feature


def test_a_config_on_the_wrong_dataset_names_the_key_to_change(slices, tmp_path):
    config = small("movielens_grec.yaml", slices["adult"].root, tmp_path)
    with pytest.raises(ConfigError, match=r"tasks: unknown task\(s\) \['like', 'love', 'rating'\]"):
        resolve(config)
    config = load_config(REPO_ROOT / "configs" / "movielens_grec.yaml").model_dump()
    config.update(dataset={"path": str(slices["adult"].root)}, tasks=None,
                  training={**config["training"], "early_stopping": {"metric": "val/auc_mean", "mode": "max"}})
    from jobs.train.config import parse_config

    with pytest.raises(ConfigError, match=r"model: model.text is set but dataset .adult. has no text features: "
                                          r"delete the `text:` section"):
        resolve(parse_config(config))
