"""The models users run today, trained on the benchmark's rows (benchmarks/quality_data.py):

- `hgb`: scikit-learn HistGradientBoostingClassifier per binary task on the tabular features
  (low-cardinality ids as categorical, the rest as ordinal codes; genres and other small bags as
  0/1 columns; text as a 64-d SVD of TF-IDF fitted on train). Boosting rounds grow 25 at a time while
  the validation AUC improves (early stopping on the validation split, patience 3).
- `tfidf_lr`: TF-IDF (1-2 grams) of the text + logistic regression per binary task, C picked on
  validation (text datasets only).
- `rechub_shared_bottom`, `rechub_mmoe`, `rechub_ple`: torch-rechub's models on every feature the
  GRec config reads (ids and bags as embeddings, numerics and the frozen MiniLM text vectors as dense
  inputs), trained with Adam, masked losses for missing labels, early stopping on the validation
  task-average AUC.

Each returns test predictions per task and the CPU seconds of training up to the selected point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.quality_data import BenchData, PeerArrays
from jobs.metrics import auc

HGB_STEP, HGB_MAX_ITER, HGB_PATIENCE = 25, 1000, 3
HGB_MAX_CATEGORIES = 250  # HistGradientBoosting's limit is 255 categories per feature
SMALL_BAG = 64  # multi-hot vocabularies up to this size become 0/1 columns
SVD_DIM = 64
RECHUB_EMBEDDING = 16
RECHUB_BATCH, RECHUB_LR, RECHUB_MAX_EPOCHS, RECHUB_PATIENCE = 512, 1e-3, 30, 2
PEERS = ("hgb", "tfidf_lr", "rechub_shared_bottom", "rechub_mmoe", "rechub_ple")


@dataclass
class PeerResult:
    test: dict[str, np.ndarray]  # binary task -> test scores
    validation_auc: float  # task-average at the selected point
    cpu_seconds_to_best: float
    detail: dict[str, object]


def binary_tasks(data: BenchData) -> list[str]:
    return [t.name for t in data.model_config.input.tasks if t.kind == "binary"]


def labelled(labels: np.ndarray) -> np.ndarray:
    return ~np.isnan(labels)


def task_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    known = labelled(labels)
    return auc(labels[known], scores[known])


# ---- scikit-learn --------------------------------------------------------------------------------
def _text(arrays: PeerArrays) -> list[str]:
    names = list(arrays.text)
    return [" ".join(parts) for parts in zip(*(arrays.text[n] for n in names))] if names else []


def _tabular(data: BenchData) -> tuple[dict[str, np.ndarray], list[bool]]:
    """Feature matrices per split for gradient boosting, and which columns are categorical."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    spec = data.model_config.input
    columns: dict[str, list[np.ndarray]] = {split: [] for split in data.arrays}
    categorical: list[bool] = []
    for feature in spec.categorical:
        small = feature.vocab_size <= HGB_MAX_CATEGORIES
        if feature.multi_hot:
            if feature.vocab_size > SMALL_BAG:
                continue
            for split, arrays in data.arrays.items():
                bag = arrays.bags[feature.name]
                hot = np.zeros((len(bag), feature.vocab_size), dtype=np.float32)
                np.put_along_axis(hot, bag, 1.0, axis=1)
                columns[split].append(hot[:, 1:])
            categorical += [False] * (feature.vocab_size - 1)
            continue
        for split, arrays in data.arrays.items():
            columns[split].append(arrays.ids[feature.name][:, None].astype(np.float32))
        categorical.append(small)
    for feature in spec.numeric:
        for split, arrays in data.arrays.items():
            columns[split].append(arrays.numeric[feature.name][:, None])
        categorical.append(False)
    if spec.text:
        tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        svd = TruncatedSVD(SVD_DIM, random_state=0)
        svd.fit(tfidf.fit_transform(_text(data.arrays["train"])))
        for split, arrays in data.arrays.items():
            columns[split].append(svd.transform(tfidf.transform(_text(arrays))).astype(np.float32))
        categorical += [False] * SVD_DIM
    return {split: np.hstack(parts) for split, parts in columns.items()}, categorical


def train_hgb(data: BenchData, seed: int) -> PeerResult:
    from sklearn.ensemble import HistGradientBoostingClassifier

    started = time.process_time()
    matrices, categorical = _tabular(data)
    shared_seconds = time.process_time() - started
    test, seconds, validation, rounds = {}, shared_seconds, [], {}
    for task in binary_tasks(data):
        y_train, y_val = data.arrays["train"].labels[task], data.arrays["validation"].labels[task]
        train_rows, val_rows = labelled(y_train), labelled(y_val)
        model = HistGradientBoostingClassifier(max_iter=HGB_STEP, warm_start=True, early_stopping=False,
                                               categorical_features=np.array(categorical), random_state=seed)
        best_auc, best_iter, best_seconds, best_test, waited = -np.inf, 0, 0.0, None, 0
        clock = time.process_time()
        while model.max_iter <= HGB_MAX_ITER and waited < HGB_PATIENCE:
            model.fit(matrices["train"][train_rows], y_train[train_rows].astype(int))
            score = auc(y_val[val_rows], model.predict_proba(matrices["validation"][val_rows])[:, 1])
            if score > best_auc:
                best_auc, best_iter, waited = score, model.max_iter, 0
                best_seconds = time.process_time() - clock
                best_test = model.predict_proba(matrices["test"])[:, 1]
            else:
                waited += 1
            model.max_iter += HGB_STEP
        test[task], seconds, rounds[task] = best_test, seconds + best_seconds, best_iter
        validation.append(best_auc)
    return PeerResult(test, float(np.mean(validation)), seconds, {"rounds": rounds})


def train_tfidf_lr(data: BenchData, seed: int) -> PeerResult:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.process_time()
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x = {"train": tfidf.fit_transform(_text(data.arrays["train"]))}
    x.update({split: tfidf.transform(_text(data.arrays[split])) for split in ("validation", "test")})
    seconds = time.process_time() - started
    test, validation, chosen = {}, [], {}
    for task in binary_tasks(data):
        y_train, y_val = data.arrays["train"].labels[task], data.arrays["validation"].labels[task]
        train_rows, val_rows = labelled(y_train), labelled(y_val)
        best = (-np.inf, None, 0.0, None)
        for c in (0.25, 1.0, 4.0, 16.0):
            clock = time.process_time()
            model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
            model.fit(x["train"][train_rows], y_train[train_rows].astype(int))
            took = time.process_time() - clock
            score = auc(y_val[val_rows], model.predict_proba(x["validation"][val_rows])[:, 1])
            if score > best[0]:
                best = (score, c, took, model.predict_proba(x["test"])[:, 1])
        validation.append(best[0])
        chosen[task], test[task] = best[1], best[3]
        seconds += best[2]
    return PeerResult(test, float(np.mean(validation)), seconds, {"C": chosen})


# ---- torch-rechub ----------------------------------------------------------------------------------
def _rechub_features(data: BenchData) -> list:
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature

    spec = data.model_config.input
    features: list = []
    for feature in spec.categorical:
        if feature.multi_hot:
            features.append(SequenceFeature(feature.name, feature.vocab_size, RECHUB_EMBEDDING, pooling="mean",
                                            padding_idx=0))
        else:
            features.append(SparseFeature(feature.name, feature.vocab_size, RECHUB_EMBEDDING))
    for sequence in spec.sequences:  # the history shares the embedding table of its vocabulary
        vocab = spec.categorical_feature(sequence.vocab_feature)
        shared = None if vocab.multi_hot else vocab.name
        features.append(SequenceFeature(sequence.name, vocab.vocab_size, RECHUB_EMBEDDING, pooling="mean",
                                        shared_with=shared, padding_idx=0))
    features += [DenseFeature(f.name) for f in spec.numeric]
    hidden = next(iter(data.arrays["train"].text_vectors.values())).shape[1] if spec.text else 0
    features += [DenseFeature(f.name, embed_dim=hidden) for f in spec.text]
    return features


def _rechub_model(kind: str, features: list, task_types: list[str]):
    from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom

    towers = [{"dims": [32]} for _ in task_types]
    if kind == "rechub_shared_bottom":
        return SharedBottom(features, task_types, {"dims": [128, 64]}, towers)
    if kind == "rechub_mmoe":
        return MMOE(features, task_types, 4, {"dims": [64]}, towers)
    return PLE(features, task_types, 2, 1, 1, {"dims": [64]}, towers)


def _inputs(arrays: PeerArrays, rows: np.ndarray) -> dict[str, torch.Tensor]:
    x = {name: torch.from_numpy(values[rows]) for name, values in arrays.ids.items()}
    x.update({name: torch.from_numpy(values[rows]) for name, values in arrays.bags.items()})
    x.update({name: torch.from_numpy(values[rows]) for name, values in arrays.numeric.items()})
    x.update({name: torch.from_numpy(values[rows]) for name, values in arrays.text_vectors.items()})
    return x


def _predict(model, arrays: PeerArrays, batch: int = 4096) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        parts = [model(_inputs(arrays, np.arange(first, min(first + batch, arrays.rows)))).numpy()
                 for first in range(0, arrays.rows, batch)]
    return np.concatenate(parts)


def _masked_loss(output: torch.Tensor, labels: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """Mean BCE (binary, output = probability) or squared error (regression) per task over its
    labelled rows, summed over tasks."""
    total = output.new_zeros(())
    for column, kind in enumerate(kinds):
        y, p = labels[:, column], output[:, column]
        known = ~torch.isnan(y)
        if not known.any():
            continue
        if kind == "binary":
            total = total + torch.nn.functional.binary_cross_entropy(p[known].clamp(1e-7, 1 - 1e-7), y[known])
        else:
            total = total + torch.nn.functional.mse_loss(p[known], y[known])
    return total


def train_rechub(kind: str, data: BenchData, seed: int) -> PeerResult:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tasks = list(data.model_config.input.tasks)
    kinds = [t.kind for t in tasks]
    binary = [i for i, t in enumerate(tasks) if t.kind == "binary"]
    model = _rechub_model(kind, _rechub_features(data), ["classification" if k == "binary" else "regression"
                                                         for k in kinds])
    optimizer = torch.optim.Adam(model.parameters(), lr=RECHUB_LR)
    train, validation = data.arrays["train"], data.arrays["validation"]
    labels = torch.from_numpy(np.stack([train.labels[t.name] for t in tasks], axis=1).astype(np.float32))
    best = (-np.inf, -1, None)
    seconds, best_seconds, waited = 0.0, 0.0, 0
    for epoch in range(RECHUB_MAX_EPOCHS):
        model.train()
        clock = time.process_time()
        order = rng.permutation(train.rows)
        for first in range(0, len(order), RECHUB_BATCH):
            rows = order[first:first + RECHUB_BATCH]
            loss = _masked_loss(model(_inputs(train, rows)), labels[torch.from_numpy(rows)], kinds)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds += time.process_time() - clock
        scores = _predict(model, validation)
        value = float(np.nanmean([task_auc(validation.labels[tasks[i].name], scores[:, i]) for i in binary]))
        if value > best[0]:
            best, best_seconds, waited = (value, epoch, {k: v.clone() for k, v in model.state_dict().items()}), \
                seconds, 0
        else:
            waited += 1
            if waited >= RECHUB_PATIENCE:
                break
    model.load_state_dict(best[2])
    scores = _predict(model, data.arrays["test"])
    test = {tasks[i].name: scores[:, i] for i in binary}
    params = sum(p.numel() for p in model.parameters())
    return PeerResult(test, best[0], best_seconds, {"best_epoch": best[1], "params": params})


def train_peer(name: str, data: BenchData, seed: int) -> PeerResult | None:
    """None when the peer does not apply (TF-IDF on a dataset without text)."""
    if name == "hgb":
        return train_hgb(data, seed)
    if name == "tfidf_lr":
        return train_tfidf_lr(data, seed) if data.model_config.input.text else None
    return train_rechub(name, data, seed)
