"""Quality benchmark: GRec against single-task models, Shared-Bottom, MMoE and PLE at a matched
parameter budget, on the same splits of MovieLens-100K, Women's Clothing Reviews and Adult.

Every model is built by `grec.build_model` from the same encoder settings; the baselines' expert (or
bottom) width is set with `grec.match_parameter_budget` to GRec's parameter count, and each
single-task model (Shared-Bottom with one task) gets that same budget. Training is a plain PyTorch
loop in this process (Adam, fixed epochs, the test metrics of the epoch with the best validation
task-average), so the comparison fits a 2-core CPU; the distributed trainer (Ray Train + DeepSpeed)
runs the same model code. Text goes through the small randomly initialised BERT (`tiny_bert`,
trained with the model): MiniLM would dominate the CPU budget.

    .venv/bin/python benchmarks/bench_quality.py --out docs/benchmarks/quality_results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

from feature_store.prepare import PreparedDataset, prepare_dataset  # noqa: E402
from feature_store.sources import SourceOptions  # noqa: E402
from grec import (GRecConfig, InputSpec, RouterConfig, SkillConfig, TextEncoderConfig, build_model,  # noqa: E402
                  count_parameters, match_parameter_budget)
from jobs.evaluate import metrics  # noqa: E402

DATASETS = ("movielens-100k", "womens-clothing", "adult")
MODELS = ("grec", "shared_bottom", "mmoe", "ple", "single_task")


@dataclass(frozen=True)
class Settings:
    epochs: int
    batch_size: int
    lr: float
    max_train_rows: int
    max_eval_rows: int
    sequence_length: int
    text_max_length: int


@dataclass
class SplitData:
    train: pa.Table
    validation: pa.Table
    test: pa.Table


def load_dataset(name: str, root: Path, settings: Settings, seed: int) -> tuple[InputSpec, SplitData]:
    """Prepares the dataset once and returns transformed splits (train subsampled with a fixed seed,
    shared by every model and training seed)."""
    folder = root / f"{name}-seq{settings.sequence_length}"
    if (folder / "dataset_spec.json").exists():
        prepared = PreparedDataset(folder)
    else:
        prepared = prepare_dataset(name, folder, options=SourceOptions(sequence_length=settings.sequence_length),
                                   overwrite=True)
    transforms = prepared.transforms()
    rng = np.random.default_rng(seed)

    def split(name_: str, limit: int) -> pa.Table:
        table = prepared.read_split(name_)
        if table.num_rows > limit:
            table = table.take(pa.array(np.sort(rng.choice(table.num_rows, limit, replace=False))))
        return transforms.transform(table)

    data = SplitData(split("train", settings.max_train_rows), split("validation", settings.max_eval_rows),
                     split("test", settings.max_eval_rows))
    spec = InputSpec.from_dict(prepared.spec())
    # a shorter token budget for long text (reviews) keeps the CPU budget; the same for every model
    text = tuple(dataclasses.replace(t, max_length=min(t.max_length, settings.text_max_length)) for t in spec.text)
    return dataclasses.replace(spec, text=text), data


def base_config(spec: InputSpec, architecture: str, seed: int) -> GRecConfig:
    text = TextEncoderConfig(backbone="tiny_bert", tiny_hidden=16, tiny_layers=1, tiny_heads=2,
                             tiny_intermediate=32, freeze=False) if spec.text else None
    return GRecConfig(input=spec, architecture=architecture, d_model=32, embedding_dim=16, num_heads=2, ffn_hidden=64,
                      expert_hidden=64, tower_hidden=32, text=text,
                      router=RouterConfig(mode="task", num_experts=4, top_k=2), skills=SkillConfig(), seed=seed)


def model_configs(spec: InputSpec, model: str, seed: int, budget: int) -> list[GRecConfig]:
    """The configs trained for one benchmark entry (one per task for single_task)."""
    if model == "grec":
        return [base_config(spec, "grec", seed)]
    if model == "single_task":
        return [match_parameter_budget(base_config(dataclasses.replace(spec, tasks=(task,)), "shared_bottom", seed),
                                       budget) for task in spec.tasks]
    return [match_parameter_budget(base_config(spec, model, seed), budget)]


def predict(model, table: pa.Table, batch_size: int = 2048) -> dict[str, np.ndarray]:
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, table.num_rows, batch_size):
        for task, values in model.predict(model.collate(table.slice(start, batch_size))).items():
            chunks.setdefault(task, []).append(values.numpy())
    return {task: np.concatenate(parts) for task, parts in chunks.items()}


def score(spec: InputSpec, table: pa.Table, predictions: dict[str, np.ndarray]) -> dict[str, float]:
    """AUC per binary task, RMSE per regression task, accuracy per multiclass task (tasks present)."""
    out = {}
    for task in spec.tasks:
        if task.name not in predictions:
            continue
        labels = table.column(task.label).to_numpy()
        if task.kind == "binary":
            out[f"{task.name}_auc"] = metrics.auc(labels, predictions[task.name])
        elif task.kind == "regression":
            out[f"{task.name}_rmse"] = metrics.rmse(labels, predictions[task.name])
        else:
            out[f"{task.name}_accuracy"] = metrics.multiclass_accuracy(labels, predictions[task.name])
    return out


def average_auc(values: dict[str, float]) -> float:
    aucs = [v for k, v in values.items() if k.endswith("_auc")]
    return float(np.mean(aucs)) if aucs else float("nan")


def selection_score(values: dict[str, float]) -> float:
    """Higher is better: the task-average AUC, or -RMSE / accuracy for a model without binary tasks
    (a single-task regression or multiclass model)."""
    if any(k.endswith("_auc") for k in values):
        return average_auc(values)
    return float(np.mean([-v if k.endswith("_rmse") else v for k, v in values.items()]))


def train_one(config: GRecConfig, data: SplitData, settings: Settings, seed: int) -> tuple[dict[str, float], float, int]:
    """Trains one model; returns test metrics at the best validation epoch, train seconds, parameters."""
    model = build_model(config)
    params = count_parameters(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    rng = np.random.default_rng(seed)
    best_val, best_test, seconds = -np.inf, {}, 0.0
    for _ in range(settings.epochs):
        start = time.perf_counter()
        model.train()
        order = rng.permutation(data.train.num_rows)
        for first in range(0, len(order), settings.batch_size):
            batch = model.collate(data.train.take(pa.array(order[first:first + settings.batch_size])))
            loss, _ = model.loss(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds += time.perf_counter() - start
        model.eval()
        val = selection_score(score(config.input, data.validation, predict(model, data.validation)))
        if val > best_val:
            best_val, best_test = val, score(config.input, data.test, predict(model, data.test))
    return best_test, seconds, params


def run_entry(spec: InputSpec, data: SplitData, model: str, seed: int, budget: int,
              settings: Settings) -> dict[str, object]:
    torch.manual_seed(seed)
    results, seconds, params = {}, 0.0, 0
    for config in model_configs(spec, model, seed, budget):
        test, took, count = train_one(config, data, settings, seed)
        results.update(test)
        seconds += took
        params += count
    return {"model": model, "seed": seed, "params": params, "train_seconds": seconds, "metrics": results,
            "task_average_auc": average_auc(results)}


def summarize(runs: list[dict[str, object]]) -> list[dict[str, object]]:
    """Mean and standard deviation over seeds per (dataset, model)."""
    rows = []
    keys = sorted({(r["dataset"], r["model"]) for r in runs}, key=lambda k: (DATASETS.index(k[0]), MODELS.index(k[1])))
    for dataset, model in keys:
        mine = [r for r in runs if r["dataset"] == dataset and r["model"] == model]
        metric_names = list(mine[0]["metrics"]) + ["task_average_auc"]
        stats = {}
        for name in metric_names:
            values = [r["metrics"][name] if name in r["metrics"] else r[name] for r in mine]
            stats[name] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        rows.append({"dataset": dataset, "model": model, "seeds": len(mine), "params": mine[0]["params"],
                     "train_seconds": statistics.mean(r["train_seconds"] for r in mine), "stats": stats})
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = []
    for dataset in DATASETS:
        mine = [r for r in rows if r["dataset"] == dataset]
        if not mine:
            continue
        names = list(dict.fromkeys(name for r in mine for name in r["stats"] if name != "task_average_auc"))
        names.append("task_average_auc")
        lines += [f"### {dataset}", "",
                  "| model | params | train s | " + " | ".join(names) + " |",
                  "|---|---:|---:|" + "---:|" * len(names)]
        best = max(r["stats"]["task_average_auc"][0] for r in mine)
        for r in mine:
            cells = []
            for name in names:
                if name not in r["stats"]:
                    cells.append("n/a")
                    continue
                mean, std = r["stats"][name]
                cell = f"{mean:.4f} ± {std:.4f}"
                if name == "task_average_auc" and mean == best:
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append(f"| {r['model']} | {r['params']:,} | {r['train_seconds']:.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-train-rows", type=int, default=12_800)
    parser.add_argument("--max-eval-rows", type=int, default=2_000)
    parser.add_argument("--sequence-length", type=int, default=10)
    parser.add_argument("--text-max-length", type=int, default=32, help="token budget per text feature (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--data-root", type=Path, help="where prepared datasets are cached (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write every run and the summary as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings(args.epochs, args.batch_size, args.lr, args.max_train_rows, args.max_eval_rows,
                        args.sequence_length, args.text_max_length)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or Path(tmp)
        for dataset in args.datasets:
            spec, data = load_dataset(dataset, root, settings, seed=0)
            budget = count_parameters(build_model(base_config(spec, "grec", 0)))
            print(f"{dataset}: train {data.train.num_rows} / validation {data.validation.num_rows} / test "
                  f"{data.test.num_rows} rows; budget {budget:,} parameters (GRec)", flush=True)
            for seed in args.seeds:
                for model in args.models:
                    run = run_entry(spec, data, model, seed, budget, settings)
                    run["dataset"] = dataset
                    runs.append(run)
                    print(f"  seed {seed} {model:<13} avg AUC {run['task_average_auc']:.4f} "
                          f"({run['train_seconds']:.1f} s, {run['params']:,} params) {run['metrics']}", flush=True)
                    write_results(args.out, settings, args.seeds, runs)  # partial results survive a time limit
    print()
    print(markdown(summarize(runs)))
    return 0


def write_results(out: Path | None, settings: Settings, seeds: list[int], runs: list[dict[str, object]]) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": dataclasses.asdict(settings), "seeds": seeds, "runs": runs,
                               "summary": summarize(runs)}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
