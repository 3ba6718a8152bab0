"""Quality benchmark: GRec against its own baselines and against the models users run today, on the
full prepared data of MovieLens-100K, Women's Clothing Reviews and Adult, plus MovieLens-100K as 21
tasks (like per genre) and an ablation.

Every model trains on all the train rows `grec data prepare` wrote, stops early on the validation
split and is scored on the test split; the test split chooses nothing. Per (dataset, model): the
test AUC of each binary task over seeds (mean ± std), a 95% bootstrap interval of the seed-mean
(test rows resampled, the same draws for every task), the task-average AUC, and the training CPU
seconds up to the selected epoch (one thread: `time.process_time`).

- GRec family (`grec`, `grec_sentence`, `grec_task_sentence`, `grec_shared`) and GRec's own
  `shared_bottom` / `mmoe` / `ple` at GRec's parameter count, and `single_task` (a Shared-Bottom per
  binary task at that count): the dataset's training config (`configs/*_grec.yaml`: model,
  optimizer, epochs, early stopping, feature selection) trained in process by
  `jobs.train.local_fit.fit` (the model code `grec train` runs, without Ray Train or DeepSpeed).
- Peers (benchmarks/quality_peers.py): scikit-learn HistGradientBoosting per task, TF-IDF + logistic
  regression (text), torch-rechub SharedBottom / MMoE / PLE.
- Ablation (`ablation_*`): one change to the dataset's GRec config each.

Runs are resumable: results accumulate in `--out` and a (dataset, model, seed) already there is
skipped, so the benchmark can run in pieces:

    .venv/bin/python benchmarks/bench_quality.py --datasets adult --out docs/benchmarks/quality_results.json

A size or encoding variant of the GRec family runs from the same configs with `--model-overrides`, a
JSON mapping of fields of the config's `model:` section (validated as the config is; nested sections
merged key by key), e.g. `--model-overrides '{"d_model": 32, "router": {"num_experts": 2}}'`. Its
runs carry the overrides and are kept, resumed and summarized apart from the config's own runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.quality_data import DATASETS, BenchData, load, single_task_spec, with_model_overrides  # noqa: E402
from jobs.train.config import ConfigError, load_config  # noqa: E402
from benchmarks.quality_peers import PEERS, binary_tasks, labelled, train_peer  # noqa: E402
from feature_store.definitions import select_features  # noqa: E402
from grec import GRecConfig, InputSpec, count_parameters, match_parameter_budget  # noqa: E402
from jobs.evaluate.bootstrap import bootstrap_intervals  # noqa: E402
from jobs.metrics import auc  # noqa: E402
from jobs.train.local_fit import fit  # noqa: E402

GREC_MODELS = ("grec", "grec_sentence", "grec_task_sentence", "grec_shared", "shared_bottom", "mmoe", "ple",
               "single_task")
ABLATIONS = ("ablation_no_skills", "ablation_one_expert", "ablation_raw_numerics", "ablation_history_mean",
             "ablation_history_transformer", "ablation_history_last", "ablation_no_history", "ablation_no_text",
             "ablation_no_ngrams")
MODELS = GREC_MODELS + PEERS + ABLATIONS
RESAMPLES = 200


# ---- the GRec family ------------------------------------------------------------------------------
def _without(config: GRecConfig, names: list[str]) -> GRecConfig:
    spec = InputSpec.from_dict(select_features(config.input.to_dict(), exclude=names))
    changes = {"input": spec}
    if not spec.text:
        changes["text"] = None
    return config.replace(**changes)


def variant(data: BenchData, model: str) -> GRecConfig | None:
    """The model config of a GRec-family entry; None when it does not apply to the dataset."""
    config = data.model_config
    router = config.router
    if model == "grec":
        return config
    if model in ("grec_sentence", "grec_task_sentence"):
        return config.replace(router=router.model_copy(update={"mode": model.removeprefix("grec_").replace("_", "-")}))
    if model == "grec_shared":
        return config.replace(router=router.model_copy(update={"top_k": 0, "shared_experts": 2}))
    if model == "ablation_no_skills":
        return config.replace(skills=config.skills.model_copy(update={"kind": "none"}))
    if model == "ablation_one_expert":
        return config.replace(router=router.model_copy(update={"num_experts": 1, "top_k": 1, "shared_experts": 0}))
    if model == "ablation_raw_numerics":
        periodic = config.numerics.encoding == "periodic" and config.input.numeric
        return config.replace(numerics=config.numerics.model_copy(update={"encoding": "raw"})) if periodic else None
    # The history ablations that change the config's history encoder apply: mean-pooled, one block read
    # as the mean over positions, one block read at the most recent position.
    history = config.input.sequences
    if model == "ablation_history_mean":
        return config.replace(sequence_layers=0, sequence_readout="mean") if history and config.sequence_layers else None
    if model == "ablation_history_transformer":
        same = config.sequence_layers == 1 and config.sequence_readout == "mean"
        return None if not history or same else config.replace(sequence_layers=1, sequence_readout="mean")
    if model == "ablation_history_last":
        same = config.sequence_layers == 1 and config.sequence_readout == "last"
        return None if not history or same else config.replace(sequence_layers=1, sequence_readout="last")
    if model == "ablation_no_history":
        return _without(config, [s.name for s in config.input.sequences]) if config.input.sequences else None
    if model == "ablation_no_ngrams":  # the text encoder's vectors without the n-gram bags
        buckets = config.text is not None and config.text.ngram_buckets
        return config.replace(text=config.text.model_copy(update={"ngram_buckets": 0})) if buckets else None
    if model == "ablation_no_text":
        return _without(config, [t.name for t in config.input.text]) if config.input.text else None
    raise ValueError(model)


def _stopping_metric(config: GRecConfig) -> tuple[str, str]:
    binary = [t.name for t in config.input.tasks if t.kind == "binary"]
    if len(binary) > 1:
        return "val/auc_mean", "max"
    return f"val/{binary[0]}/auc", "max"


def _at_budget(config: GRecConfig, budget: int) -> GRecConfig:
    """`config` at GRec's parameter count or, where even its narrowest model has more (many tasks: a
    tower per task), as configured: the run's params say how many it has."""
    try:
        return match_parameter_budget(config, budget)
    except ValueError:
        return config


def train_grec_family(data: BenchData, model: str, seed: int, keep_models: bool = False) -> dict[str, object] | None:
    """Trains the entry's model(s) on `data`; with `keep_models`, the trained models are under "models"."""
    budget = count_parameters(data.build(data.model_config))
    if model in ("shared_bottom", "mmoe", "ple"):
        configs = [_at_budget(data.model_config.replace(architecture=model), budget)]
    elif model == "single_task":
        configs = [_at_budget(single_task_spec(data.model_config, task).replace(
            architecture="shared_bottom"), budget) for task in binary_tasks(data)]
    else:
        configs = [variant(data, model)]
        if configs[0] is None:
            return None
    test, seconds, params, validation, epochs, models, history = {}, 0.0, 0, [], [], [], []
    for config in configs:
        config = config.replace(seed=seed)
        metric, mode = _stopping_metric(config)
        train_config = data.config.with_overrides(training={"seed": seed, "early_stopping": {
            **data.config.training.early_stopping.model_dump(), "metric": metric, "mode": mode}})
        network = data.build(config)
        params += count_parameters(network, trainable_only=True)
        result = fit(network, data.tables["train"], data.tables["validation"], train_config)
        seconds += result.cpu_seconds_to_best
        validation.append(result.best_metrics[metric])
        epochs.append(result.best_epoch + 1)
        history.append([{"cpu_seconds": round(e.cpu_seconds, 3), "validation": round(e.metrics[metric], 5)}
                        for e in result.history])
        test.update(_predict(result.model, data, [t for t in config.task_names if t in binary_tasks(data)]))
        models.append(result.model)
    return {"test": test, "validation_auc": float(np.mean(validation)), "cpu_seconds_to_best": seconds,
            "detail": {"params": params, "best_epoch": epochs, "epochs": history},
            **({"models": models} if keep_models else {})}


def _predict(model, data: BenchData, tasks: list[str], batch_size: int = 2048) -> dict[str, np.ndarray]:
    table, parts = data.tables["test"], {t: [] for t in tasks}
    for first in range(0, table.num_rows, batch_size):
        for task, values in model.predict(model.collate(table.slice(first, batch_size)), tasks).items():
            parts[task].append(values.numpy())
    return {task: np.concatenate(values) for task, values in parts.items()}


# ---- one run, the summary ------------------------------------------------------------------------
def overrides_key(overrides: dict[str, object] | None) -> str:
    """The model overrides of a run as one canonical string ("" for the config as shipped)."""
    return json.dumps(overrides, sort_keys=True, separators=(", ", ": ")) if overrides else ""


def _predictions_name(dataset: str, model: str, seed: int, overrides: dict[str, object] | None) -> str:
    if not overrides:
        return f"{dataset}--{model}--{seed}.npz"
    digest = hashlib.sha256(overrides_key(overrides).encode()).hexdigest()[:12]
    return f"{dataset}--{model}--{digest}--{seed}.npz"


def run_one(data: BenchData, model: str, seed: int, predictions_dir: Path,
            overrides: dict[str, object] | None = None) -> dict[str, object] | None:
    """One (model, seed) on `data`; `overrides` are the model overrides `data` was loaded with, recorded
    on GRec-family runs (the peers read the same features and none of the model section)."""
    started = time.perf_counter()
    if model in PEERS:
        overrides = None
        peer = train_peer(model, data, seed)
        if peer is None:
            return None
        out = {"test": peer.test, "validation_auc": peer.validation_auc,
               "cpu_seconds_to_best": peer.cpu_seconds_to_best, "detail": peer.detail}
    else:
        out = train_grec_family(data, model, seed)
        if out is None:
            return None
    labels = data.arrays["test"].labels
    test_auc = {task: auc(labels[task][labelled(labels[task])], scores[labelled(labels[task])])
                for task, scores in out["test"].items()}
    predictions_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(predictions_dir / _predictions_name(data.name, model, seed, overrides), **out["test"])
    return {"dataset": data.name, "model": model, **({"model_overrides": overrides} if overrides else {}),
            "seed": seed, "test_auc": test_auc,
            "task_average_auc": float(np.mean(list(test_auc.values()))), "validation_auc": out["validation_auc"],
            "cpu_seconds_to_best": out["cpu_seconds_to_best"], "wall_seconds": time.perf_counter() - started,
            "detail": out["detail"]}


def seed_mean_intervals(labels: dict[str, np.ndarray], runs: list[dict[str, np.ndarray]],
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals of each task's seed-mean test AUC and of their average, over the same
    resampled test rows (a task's unlabelled rows left out of each draw)."""
    tasks = list(runs[0])

    def statistic(rows: np.ndarray) -> np.ndarray:
        values = []
        for task in tasks:
            y = labels[task][rows]
            known = ~np.isnan(y)
            values.append(np.mean([auc(y[known], run[task][rows][known]) for run in runs]))
        return np.array([*values, np.mean(values)])

    low, high = bootstrap_intervals(statistic, len(next(iter(labels.values()))), resamples=RESAMPLES, seed=seed)
    return {name: (float(a), float(b)) for name, a, b in zip([*tasks, "task_average"], low, high)}


def summarize(runs: list[dict[str, object]], predictions_dir: Path) -> list[dict[str, object]]:
    rows = []
    for dataset in DATASETS:
        labels_file = predictions_dir / f"{dataset}--labels.npz"
        labels = dict(np.load(labels_file)) if labels_file.exists() else None
        variants = sorted({(r["model"], overrides_key(r.get("model_overrides")))
                           for r in runs if r["dataset"] == dataset}, key=lambda v: (MODELS.index(v[0]), v[1]))
        for model, key in variants:
            mine = sorted((r for r in runs if r["dataset"] == dataset and r["model"] == model
                           and overrides_key(r.get("model_overrides")) == key), key=lambda r: r["seed"])
            tasks = list(mine[0]["test_auc"])
            stats = {}
            for name in [*tasks, "task_average"]:
                values = [r["test_auc"][name] if name != "task_average" else r["task_average_auc"] for r in mine]
                stats[name] = {"mean": statistics.mean(values),  # no spread from one seed
                               "std": statistics.stdev(values) if len(values) > 1 else None}
            if labels is not None:
                predictions = [dict(np.load(predictions_dir / _predictions_name(dataset, model, r["seed"],
                                                                                r.get("model_overrides"))))
                               for r in mine]
                for name, interval in seed_mean_intervals(labels, predictions).items():
                    stats[name]["interval"] = interval
            rows.append({"dataset": dataset, "model": model, **({"model_overrides": mine[0]["model_overrides"]}
                                                                if key else {}),
                         "seeds": [r["seed"] for r in mine], "stats": stats,
                         "validation_auc": statistics.mean(r["validation_auc"] for r in mine),
                         "cpu_seconds_to_best": statistics.mean(r["cpu_seconds_to_best"] for r in mine),
                         "params": mine[0]["detail"].get("params")})
    return rows


LABELS = {"grec": "GRec (task routing)", "grec_sentence": "GRec (sentence routing)",
          "grec_task_sentence": "GRec (task-sentence routing)", "grec_shared": "GRec (2 shared experts, top_k 0)",
          "shared_bottom": "Shared-Bottom (GRec encoders)", "mmoe": "MMoE (GRec encoders)",
          "ple": "PLE (GRec encoders)", "single_task": "single-task (GRec encoders, one per task)",
          "hgb": "sklearn HistGradientBoosting per task", "tfidf_lr": "TF-IDF + logistic regression per task",
          "rechub_shared_bottom": "torch-rechub SharedBottom", "rechub_mmoe": "torch-rechub MMoE",
          "rechub_ple": "torch-rechub PLE", "ablation_no_skills": "ablation: no C-Poly skills",
          "ablation_one_expert": "ablation: one expert (no routing)",
          "ablation_raw_numerics": "ablation: raw numerics (no periodic embeddings)",
          "ablation_history_mean": "ablation: history mean-pooled (no transformer)",
          "ablation_history_transformer": "ablation: history through one transformer block",
          "ablation_history_last": "ablation: history through one block read at the most recent position",
          "ablation_no_history": "ablation: no history", "ablation_no_text": "ablation: no text",
          "ablation_no_ngrams": "ablation: no n-gram bags (text encoder only)"}


def markdown(summary: list[dict[str, object]], many_tasks: tuple[str, ...] = ("movielens-genres",)) -> str:
    """One table per dataset: per-task test AUC (mean ± std over seeds; 95% bootstrap interval of
    the seed-mean), the task average, training CPU seconds to the best epoch and its ratio to
    torch-rechub MMoE's. Many-task datasets show the task average and the per-task wins only."""
    lines = []
    for dataset in DATASETS:
        rows = [r for r in summary if r["dataset"] == dataset]
        if not rows:
            continue
        tasks = [t for t in rows[0]["stats"] if t != "task_average"]
        mmoe = next((r["cpu_seconds_to_best"] for r in rows if r["model"] == "rechub_mmoe"), None)
        main = [r for r in rows if not r["model"].startswith("ablation_")]
        best = max(r["stats"]["task_average"]["mean"] for r in main)
        shown = [] if dataset in many_tasks else tasks
        lines += [f"### {dataset}", "",
                  "| model | seeds | " + " | ".join(f"{t} AUC" for t in shown) + (" | " if shown else "")
                  + "task-average AUC | CPU s to best | vs rechub MMoE |",
                  "|---|---:|" + "---:|" * (len(shown) + 3)]
        for r in rows:
            cells = [_cell(r["stats"][t]) for t in shown]
            average = _cell(r["stats"]["task_average"])
            if r["stats"]["task_average"]["mean"] == best:
                average = f"**{average}**"
            ratio = f"{r['cpu_seconds_to_best'] / mmoe:.1f}x" if mmoe else "n/a"
            label = LABELS[r["model"]]
            if r.get("model_overrides"):
                label += f" `{overrides_key(r['model_overrides'])}`"
            lines.append(f"| {label} | {len(r['seeds'])} | " + " | ".join([*cells, average])
                         + f" | {r['cpu_seconds_to_best']:.0f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def _cell(stat: dict[str, object]) -> str:
    interval = stat.get("interval")
    text = f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if stat["std"] is not None else "")
    return f"{text} [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(GREC_MODELS + PEERS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="at most this many epochs (default: the dataset config's)")
    parser.add_argument("--data-root", type=Path, default=Path(".grec/bench/data"),
                        help="where prepared datasets are kept (default .grec/bench/data)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/quality_results.json"))
    parser.add_argument("--predictions", type=Path, default=Path(".grec/bench/predictions"),
                        help="test labels and every run's test predictions, for the bootstrap intervals")
    parser.add_argument("--model-overrides", type=_overrides, default=None, metavar="JSON",
                        help="a JSON mapping of fields of the configs' model: section for the GRec-family models, "
                             "e.g. '{\"d_model\": 32, \"router\": {\"num_experts\": 2}}'")
    parser.add_argument("--report", action="store_true",
                        help="only print the tables of the results in --out (summarized again) as markdown")
    args = parser.parse_args(argv)
    if args.model_overrides:  # every field checked against the config's model before anything trains
        for dataset in args.datasets:
            try:
                with_model_overrides(load_config(REPO_ROOT / DATASETS[dataset][1]), args.model_overrides)
            except ConfigError as err:
                parser.error(f"--model-overrides for {dataset}: {err}")
    if args.report:
        runs = json.loads(args.out.read_text())["runs"]
        summary = summarize(runs, args.predictions)
        _write(args.out, runs, summary)
        print(markdown(summary))
        return 0
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)  # cost is CPU seconds of one thread, for every model
    threadpool_limits(1)
    args.predictions.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    def key(model: str) -> str:
        return "" if model in PEERS else overrides_key(args.model_overrides)

    done = {(r["dataset"], r["model"], r["seed"], overrides_key(r.get("model_overrides"))) for r in runs}
    for dataset in args.datasets:
        todo = [(m, s) for s in args.seeds for m in args.models if (dataset, m, s, key(m)) not in done]
        if not todo:
            continue
        data = load(dataset, args.data_root, REPO_ROOT, args.epochs, args.model_overrides)
        np.savez_compressed(args.predictions / f"{dataset}--labels.npz", **data.arrays["test"].labels)
        print(f"{dataset}: train {data.tables['train'].num_rows} / validation {data.tables['validation'].num_rows} "
              f"/ test {data.tables['test'].num_rows} rows, tasks {data.model_config.task_names}", flush=True)
        for model, seed in todo:
            run = run_one(data, model, seed, args.predictions, args.model_overrides)
            if run is None:
                continue
            runs.append(run)
            print(f"  {model:<22} seed {seed}: test task-average AUC {run['task_average_auc']:.4f} (validation "
                  f"{run['validation_auc']:.4f}), {run['cpu_seconds_to_best']:.1f} CPU s to best", flush=True)
            _write(args.out, runs, None)  # partial results survive an interruption
    _write(args.out, runs, summarize(runs, args.predictions))
    return 0


def _overrides(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON mapping of model fields, got {type(value).__name__}")
    return value


def _write(out: Path, runs: list[dict[str, object]], summary: list[dict[str, object]] | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
