"""The quality benchmark's data: one prepared dataset, its transformed splits for every model, and the
same rows as arrays for the peers (scikit-learn, torch-rechub).

Every model reads the rows `grec data prepare` wrote and the transforms fitted on its train split;
the feature selection is the dataset config's (`features:`). Text goes through the frozen
all-MiniLM-L6-v2 once per distinct text: GRec-family models share one cache of pooled vectors
(exact: the encoder is frozen), and the peers get the same vectors as dense inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from feature_store.options import SPLITS, SourceOptions
from feature_store.prepare import PreparedDataset, open_prepared, prepare_dataset
from grec import GRecConfig, MultiTaskModel, TokenizedText, build_model
from jobs.train.config import ConfigError, ResolvedConfig, TrainConfig, load_config, parse_config, resolve

# benchmark dataset -> (source prepared by `grec data prepare`, the training config users start from)
DATASETS: dict[str, tuple[str, str]] = {
    "movielens-100k": ("movielens-100k", "configs/movielens_grec.yaml"),
    "womens-clothing": ("womens-clothing", "configs/womens_clothing_grec.yaml"),
    "adult": ("adult", "configs/adult_grec.yaml"),
    "movielens-genres": ("movielens-100k-genres", "configs/movielens_genres_grec.yaml"),
}
TEXT_BATCH = 256


@dataclass
class PeerArrays:
    """One split as arrays: ids (categorical [N]), bags (multi-hot and sequences, [N, L] with 0 as
    padding), numeric [N], text vectors [N, hidden] and raw text, labels [N] (NaN: no label)."""

    ids: dict[str, np.ndarray]
    bags: dict[str, np.ndarray]
    numeric: dict[str, np.ndarray]
    text_vectors: dict[str, np.ndarray]
    text: dict[str, list[str]]
    labels: dict[str, np.ndarray]

    @property
    def rows(self) -> int:
        return len(next(iter(self.labels.values())))


@dataclass
class BenchData:
    name: str
    config: TrainConfig  # the dataset's training config, pointed at the prepared data
    resolved: ResolvedConfig
    tables: dict[str, pa.Table]  # split -> transformed rows
    arrays: dict[str, PeerArrays]  # split -> the same rows for the peers
    text_cache: dict  # (max_length, text) -> pooled MiniLM vector, shared by GRec-family models
    token_cache: dict  # (max_length, text) -> its token ids, shared by GRec-family models' collators

    @property
    def model_config(self) -> GRecConfig:
        return self.resolved.model_config

    def build(self, config: GRecConfig) -> MultiTaskModel:
        """A model of `config` whose text encoder starts with every text of the dataset cached."""
        model = build_model(config)
        if model.encoder.text_encoder is not None:
            # A copy: loading the best epoch's weights clears the model's own cache.
            model.encoder.text_encoder._cache.update(self.text_cache)  # noqa: SLF001 (exact: frozen encoder)
            # The token ids (the n-gram bags read them) come from the same one-time pass over the texts.
            model.collator.tokens._ids.update(self.token_cache)  # noqa: SLF001
        return model


def prepared_dataset(source: str, root: Path) -> PreparedDataset:
    folder = root / source
    if (folder / "dataset_spec.json").exists():
        return open_prepared(folder)
    return prepare_dataset(source, folder, options=SourceOptions(), overwrite=True)


def load(name: str, root: Path, repo: Path, epochs: int | None = None,
         model_overrides: dict[str, Any] | None = None) -> BenchData:
    """The dataset prepared under `root` and its training config; `model_overrides` changes fields of
    the config's `model:` section (nested sections merged key by key), validated as the config is."""
    source, config_path = DATASETS[name]
    prepared = prepared_dataset(source, root)
    config = load_config(repo / config_path).with_overrides(dataset={"path": str(prepared.root)},
                                                            training={"epochs": epochs})
    if model_overrides:
        config = with_model_overrides(config, model_overrides)
    resolved = resolve(config)
    transforms = prepared.transforms()
    raw = {split: prepared.read_split(split) for split in SPLITS}
    tables = {split: transforms.transform(rows) for split, rows in raw.items()}
    spec = resolved.model_config.input
    vectors, cache, tokens = {}, {}, {}
    if spec.text:
        text_model = build_model(resolved.model_config)
        vectors = text_vectors(text_model, list(tables.values()), prepared.root)
        cache = dict(text_model.encoder.text_encoder._cache)  # noqa: SLF001
        tokens = dict(text_model.collator.tokens._ids)  # noqa: SLF001
    arrays = {split: _arrays(tables[split], resolved.model_config, vectors) for split in SPLITS}
    return BenchData(name, config, resolved, tables, arrays, cache, tokens)


def with_model_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """`config` with fields of its `model:` section replaced: a nested mapping (`router`, `numerics`,
    ...) updates that section's fields and keeps the rest. Raises ConfigError naming every bad field."""

    def merged(base: dict[str, Any], changes: dict[str, Any], where: str) -> dict[str, Any]:
        out = dict(base)
        for key, value in changes.items():
            if key not in base:
                raise ConfigError(f"{where}{key}: no such field")
            out[key] = (merged(base[key], value, f"{where}{key}.") if isinstance(value, dict)
                        and isinstance(base[key], dict) else value)
        return out

    data = config.model_dump()
    data["model"] = merged(data["model"], overrides, "model.")
    return parse_config(data, "model overrides")


def _arrays(table: pa.Table, config: GRecConfig, vectors: dict[str, dict[str, np.ndarray]]) -> PeerArrays:
    spec = config.input
    ids, bags = {}, {}
    for feature in spec.categorical:
        column = table.column(feature.name)
        if feature.multi_hot:
            bags[feature.name] = _padded(column.to_pylist())
        else:
            ids[feature.name] = column.to_numpy().astype(np.int64)
    for sequence in spec.sequences:
        bags[sequence.name] = np.stack(table.column(sequence.name).to_numpy(zero_copy_only=False)).astype(np.int64)
    numeric = {f.name: np.nan_to_num(table.column(f.name).to_numpy(zero_copy_only=False).astype(np.float32))
               for f in spec.numeric}
    text = {f.name: table.column(f.name).to_pylist() for f in spec.text}
    text_vectors = {name: np.stack([vectors[name][t] for t in texts]) for name, texts in text.items()}
    labels = {t.name: table.column(t.label).to_numpy(zero_copy_only=False).astype(np.float64) for t in spec.tasks}
    return PeerArrays(ids, bags, numeric, text_vectors, text, labels)


def _padded(rows: list[list[int] | None]) -> np.ndarray:
    width = max(1, max((len(r or []) for r in rows), default=1))
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            out[i, :len(row)] = row
    return out


def text_vectors(model: MultiTaskModel, tables: list[pa.Table], folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """feature -> text -> pooled MiniLM vector for every distinct text of the tables, encoded once
    (sorted by length, so batches pad little) into the model's cache and kept in `folder` for the
    next run (texts in JSON, vectors in .npy); every text's token ids go into the model's collator."""
    encoder = model.encoder.text_encoder
    out = {}
    model.eval()
    for feature in model.config.input.text:
        texts_file, vectors_file = folder / f"text-{feature.name}.json", folder / f"text-{feature.name}.npy"
        # By length, then text: a set's order changes with each process's string hashing.
        texts = sorted({t for table in tables for t in table.column(feature.name).to_pylist()},
                       key=lambda text: (len(text), text))
        kept = json.loads(texts_file.read_text()) if texts_file.exists() else []
        for first in range(0, len(texts), TEXT_BATCH):  # token ids of every text, into the collator's cache
            model.collator.tokens(texts[first:first + TEXT_BATCH], feature.max_length)
        if set(kept) >= set(texts):
            texts, vectors = kept, np.load(vectors_file)
        else:
            parts = []
            with torch.no_grad():
                for first in range(0, len(texts), TEXT_BATCH):
                    chunk = texts[first:first + TEXT_BATCH]
                    input_ids, mask = model.collator.tokens(chunk, feature.max_length)
                    parts.append(encoder(TokenizedText(chunk, input_ids, mask)).numpy())
            vectors = np.concatenate(parts)
            np.save(vectors_file, vectors)
            texts_file.write_text(json.dumps(texts))
        out[feature.name] = dict(zip(texts, vectors))
        for text, vector in out[feature.name].items():
            encoder._cache[(feature.max_length, text)] = torch.from_numpy(vector)  # noqa: SLF001
    return out


def single_task_spec(config: GRecConfig, task: str) -> GRecConfig:
    return config.replace(input=config.input.replace(tasks=(config.input.task(task),)))
