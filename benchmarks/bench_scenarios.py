"""Multi-scenario real data: one model for every user group's tasks against one model per group
(issue: "the generalist earns its parts").

MovieLens-100K's ratings (the quality benchmark's prepared rows, features and global time split)
are split into scenarios by the rater's gender and age band: 8 scenarios, each with the tasks
`like` (rating >= 4) and `love` (rating = 5) labelled on its own rows only (NaN elsewhere, as a
scenario's rows are in multi-scenario data): 16 tasks, each described to GRec by the sentence of
its type and its scenario ("engagement", "women 50 and over"). A scenario with fewer than
SMALL_TRAIN_ROWS training rows is small; the small scenarios are averaged apart. The second set,
Women's Clothing Reviews by the garment's department (tops, dresses, bottoms, intimate, jackets),
gives each department the tasks `recommended` and `high_rating` on its own reviews: 10 tasks.

Models, on the same rows, the dataset config's early stopping (validation task-average AUC,
patience 2) and the same seeds: GRec as configured for MovieLens (configs/movielens_grec.yaml:
task routing over 4 experts, C-Poly skills; a task's token is its own embedding plus those of its
type and its scenario), the same routed on the task token and the row (task-sentence routing), its
ablations (no skills; one expert, no routing), GRec's own MMoE (dense gates) and PLE at GRec's
parameter count, torch-rechub MMoE and PLE (benchmarks/quality_peers.py; the installed torch-rechub
has no multi-scenario model), and one GRec per scenario trained on that scenario's rows only. Reported per model: the test AUC per scenario
(its like and love averaged), the task average over all, large and small scenarios, the paired
difference from GRec (seed-mean, 95% bootstrap interval over the same resampled test rows, and
each seed's difference), CPU seconds to the best epoch (one thread; for the per-scenario models
the sum over scenarios).

Runs accumulate in `--json` (a (model, seed) already there is skipped), seed by seed, so a stopped
run keeps whole seeds; test predictions for the intervals are kept in `--predictions`.

    .venv/bin/python benchmarks/bench_scenarios.py --seeds 0 1 2 \\
        --json docs/benchmarks/scenarios_results.json --page docs/benchmarks/scenarios_tables.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_generalist import paired_differences, task_aucs, write_results  # noqa: E402
from benchmarks.bench_quality import train_grec_family  # noqa: E402
from benchmarks.quality_data import BenchData, load, prepared_dataset  # noqa: E402
from benchmarks.quality_peers import train_peer  # noqa: E402
from feature_store.options import SPLITS  # noqa: E402
from grec.spec import TaskSpec  # noqa: E402

MODELS = ("grec", "ablation_no_skills", "ablation_one_expert", "mmoe", "rechub_mmoe", "rechub_ple", "per_scenario",
          "ple", "grec_task_sentence")
PEERS = ("rechub_mmoe", "rechub_ple")
LABELS = {"grec": "GRec (task routing, C-Poly)", "grec_task_sentence": "GRec (task-sentence routing, C-Poly)",
          "ablation_no_skills": "ablation: no C-Poly skills",
          "ablation_one_expert": "ablation: one expert (no routing)", "mmoe": "MMoE (GRec encoders, dense gates)",
          "ple": "PLE (GRec encoders)", "rechub_mmoe": "torch-rechub MMoE", "rechub_ple": "torch-rechub PLE",
          "per_scenario": "GRec per scenario (its rows only)"}
SMALL_TRAIN_ROWS = 6000


@dataclass(frozen=True)
class Scenario:
    """The rows whose `equals` columns hold the given value and whose `within` columns lie in [low, high)."""

    name: str  # in task names: women_50_plus
    description: str  # in task sentences: women 50 and over
    equals: dict[str, str]
    within: dict[str, tuple[float, float]]

    def rows(self, table: pa.Table, split: str) -> np.ndarray:
        """A mask of the split's rows in this scenario; a column the split lacks is refused."""
        missing = [c for c in [*self.equals, *self.within] if c not in table.column_names]
        if missing:
            raise ValueError(f"scenario {self.name!r} names columns {missing} that the {split} split lacks "
                             f"(it has {table.column_names})")
        mask = np.ones(table.num_rows, dtype=bool)
        for column, value in self.equals.items():
            mask &= np.array(table.column(column).to_pylist(), dtype=object) == value
        for column, (low, high) in self.within.items():
            values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
            mask &= (values >= low) & (values < high)
        return mask


@dataclass(frozen=True)
class ScenarioSet:
    dataset: str  # a benchmarks/quality_data.py dataset
    base_tasks: tuple[str, ...]  # each scenario gets one task per base task, on its rows only
    scenarios: tuple[Scenario, ...]


AGE_BANDS = (("under_25", "under 25", 0, 25), ("25_34", "25-34", 25, 35), ("35_49", "35-49", 35, 50),
             ("50_plus", "50 and over", 50, 200))
MOVIELENS_SCENARIOS = tuple(
    Scenario(f"{who}_{band}", f"{who} {words}", {"gender": code}, {"age": (low, high)})
    for code, who in (("F", "women"), ("M", "men")) for band, words, low, high in AGE_BANDS)
# Women's Clothing by the reviewed garment's department; "Trend" (about 120 reviews) is left out: its
# test rows cannot hold both labels of both tasks.
WOMENS_CLOTHING_SCENARIOS = tuple(Scenario(name.lower(), f"{name.lower()} department", {"department": name}, {})
                                  for name in ("Tops", "Dresses", "Bottoms", "Intimate", "Jackets"))
SETS = {"movielens-age-gender": ScenarioSet("movielens-100k", ("like", "love"), MOVIELENS_SCENARIOS),
        "womens-clothing-department": ScenarioSet("womens-clothing", ("recommended", "high_rating"),
                                                  WOMENS_CLOTHING_SCENARIOS)}


# ---- the scenario tasks -------------------------------------------------------------------------
def scenario_task(scenario: Scenario, base: TaskSpec) -> TaskSpec:
    name = f"{scenario.name}_{base.name}"
    return TaskSpec(name, "binary", f"label_{name}", descriptors={**base.descriptors, "scenario": scenario.description})


def scenario_labels(base_labels: dict[str, np.ndarray], scenario: Scenario, rows: np.ndarray,
                    split: str) -> dict[str, np.ndarray]:
    """Each base task's labels on the scenario's rows (NaN elsewhere); a scenario whose task has no
    positive or no negative in the split (AUC undefined) is refused."""
    out = {}
    for task, labels in base_labels.items():
        mine = labels[rows]
        positives = int(np.nansum(mine))
        negatives = int(np.sum(~np.isnan(mine))) - positives
        if not positives or not negatives:
            raise ValueError(f"scenario {scenario.name!r}, {split} split: task {task!r} has {positives} positives and "
                             f"{negatives} negatives among the scenario's {int(rows.sum())} rows; widen or merge it")
        out[task] = np.where(rows, labels, np.nan).astype(np.float32)
    return out


def scenario_data(scenario_set: ScenarioSet, base: BenchData, raw: dict[str, pa.Table],
                  name: str) -> tuple[BenchData, dict[str, dict[str, np.ndarray]]]:
    """The base dataset with scenario x base-task labels in place of its tasks, and each split's
    scenario masks. `raw` holds the untransformed splits (the scenarios read raw age and gender)."""
    spec = base.model_config.input
    tasks = [scenario_task(s, spec.task(t)) for s in scenario_set.scenarios for t in scenario_set.base_tasks]
    masks, tables, arrays = {}, {}, {}
    for split in SPLITS:
        masks[split] = {s.name: s.rows(raw[split], split) for s in scenario_set.scenarios}
        base_labels = {t: base.arrays[split].labels[t] for t in scenario_set.base_tasks}
        labels = {}
        for scenario in scenario_set.scenarios:
            per_task = scenario_labels(base_labels, scenario, masks[split][scenario.name], split)
            labels.update({f"{scenario.name}_{task}": values for task, values in per_task.items()})
        table = base.tables[split]
        for task in tasks:
            table = table.append_column(task.label, pa.array(labels[task.name]))
        tables[split] = table
        arrays[split] = dataclasses.replace(base.arrays[split], labels={t: v.astype(np.float64)
                                                                       for t, v in labels.items()})
    model_config = base.model_config.replace(input=spec.replace(name=name, tasks=tuple(tasks)))
    resolved = dataclasses.replace(base.resolved, model_config=model_config)
    return BenchData(name, base.config, resolved, tables, arrays, base.text_cache, base.token_cache), masks


def one_scenario(data: BenchData, scenario: Scenario, masks: dict[str, dict[str, np.ndarray]]) -> BenchData:
    """The scenario's rows and tasks only."""
    tasks = tuple(t for t in data.model_config.input.tasks if t.descriptors["scenario"] == scenario.description)
    config = data.model_config.replace(input=data.model_config.input.replace(tasks=tasks))
    tables = {split: table.filter(pa.array(masks[split][scenario.name])) for split, table in data.tables.items()}
    # The GRec family reads the tables only: no peer arrays.
    return BenchData(f"{data.name}/{scenario.name}", data.config, dataclasses.replace(data.resolved, model_config=config),
                     tables, {}, data.text_cache, data.token_cache)


# ---- training --------------------------------------------------------------------------------------
def per_scenario_models(data: BenchData, scenario_set: ScenarioSet, masks: dict[str, dict[str, np.ndarray]],
                        seed: int) -> dict[str, object]:
    """One GRec per scenario on its rows; test scores placed on the full test split's rows (each
    task is labelled on its scenario's rows only, so the rest are never read)."""
    test_rows = data.tables["test"].num_rows
    test, seconds, validation, detail = {}, 0.0, [], {}
    for scenario in scenario_set.scenarios:
        out = train_grec_family(one_scenario(data, scenario, masks), "grec", seed)
        rows = masks["test"][scenario.name]
        for task, scores in out["test"].items():
            test[task] = np.zeros(test_rows, dtype=np.float32)
            test[task][rows] = scores
        seconds += out["cpu_seconds_to_best"]
        validation.append(out["validation_auc"])
        detail[scenario.name] = out["detail"]
    return {"test": test, "validation_auc": float(np.mean(validation)), "cpu_seconds_to_best": seconds,
            "detail": detail}


def train(data: BenchData, scenario_set: ScenarioSet, masks: dict[str, dict[str, np.ndarray]], model: str,
          seed: int) -> dict[str, object]:
    if model in PEERS:
        peer = train_peer(model, data, seed)
        return {"test": peer.test, "validation_auc": peer.validation_auc,
                "cpu_seconds_to_best": peer.cpu_seconds_to_best, "detail": peer.detail}
    if model == "per_scenario":
        return per_scenario_models(data, scenario_set, masks, seed)
    return train_grec_family(data, model, seed)


# ---- the summary -----------------------------------------------------------------------------------
def task_groups(scenario_set: ScenarioSet, small: list[str]) -> dict[str, list[str]]:
    """The averages reported: every task, the large and the small scenarios' tasks, each scenario's."""
    def tasks_of(names: list[str]) -> list[str]:
        return [f"{name}_{task}" for name in names for task in scenario_set.base_tasks]

    names = [s.name for s in scenario_set.scenarios]
    return {"task_average": tasks_of(names), "large": tasks_of([n for n in names if n not in small]),
            "small": tasks_of(small), **{name: tasks_of([name]) for name in names}}


def summarize(runs: list[dict[str, object]], labels: dict[str, np.ndarray], groups: dict[str, list[str]],
              predictions: Path, set_name: str) -> list[dict[str, object]]:
    """Per model: each group's seed-mean test AUC (± std over seeds), its paired difference from
    GRec with the interval and per-seed differences, and CPU seconds to the best epoch."""
    def scores(run: dict[str, object]) -> dict[str, np.ndarray]:
        return dict(np.load(predictions / f"{set_name}--{run['model']}--{run['seed']}.npz"))

    grec = {r["seed"]: r for r in runs if r["model"] == "grec"}
    out = []
    for model in MODELS:
        mine = sorted((r for r in runs if r["model"] == model), key=lambda r: r["seed"])
        if not mine:
            continue
        values = {name: [float(np.nanmean([r["test_auc"][t] for t in tasks])) for r in mine]
                  for name, tasks in groups.items()}
        row = {"model": model, "seeds": [r["seed"] for r in mine],
               "auc": {name: statistics.mean(v) for name, v in values.items()},
               "auc_std": {name: statistics.stdev(v) if len(v) > 1 else None for name, v in values.items()},
               "cpu_seconds_to_best": statistics.mean(r["cpu_seconds_to_best"] for r in mine)}
        paired = [(scores(r), scores(grec[r["seed"]])) for r in mine if r["seed"] in grec]
        if model != "grec" and paired:
            row["minus_grec"] = paired_differences(labels, paired, groups)
        out.append(row)
    return out


def _difference(versus: dict[str, object] | None, per_seed: bool = True) -> str:
    """difference [interval over rows] {interval over seeds} (each seed's difference)."""
    if versus is None:
        return ""
    low, high = versus["interval"]
    over_seeds = versus.get("seed_interval")
    seeds = f" {{{over_seeds[0]:+.4f}, {over_seeds[1]:+.4f}}}" if over_seeds else ""
    each = f" ({', '.join(f'{d:+.4f}' for d in versus['per_seed'])})" if per_seed else ""
    return f"{versus['difference']:+.4f} [{low:+.4f}, {high:+.4f}]{seeds}{each}"


def _clear_of_zero(interval: tuple[float, float] | None) -> bool:
    return interval is not None and (interval[0] > 0 or interval[1] < 0)


def _marks(versus: dict[str, object]) -> str:
    """* where the interval over rows excludes 0, ** where the interval over seeds does too."""
    return "*" * (_clear_of_zero(versus["interval"]) + (_clear_of_zero(versus["interval"])
                                                         and _clear_of_zero(versus.get("seed_interval"))))


def markdown(block: dict[str, object]) -> str:
    """The scenarios' sizes, the averages with paired differences from GRec, and per-scenario AUC."""
    scenarios, small = block["scenarios"], block["small"]
    shares = [key for key in scenarios[0] if key.endswith("_share")]  # one per base task
    lines = ["| scenario | train / validation / test rows | "
             + " | ".join(f"{key.removesuffix('_share')} share (train)" for key in shares) + " | small |",
             "|---|---|" + "---|" * len(shares) + "---|"]
    for s in scenarios:
        lines.append(f"| {s['description']} | {s['rows']['train']:,} / {s['rows']['validation']:,} / "
                     f"{s['rows']['test']:,} | " + " | ".join(f"{s[key]:.2f}" for key in shares)
                     + f" | {'yes' if s['name'] in small else ''} |")
    lines += ["", "| model | seeds | task-average AUC (± std) | minus GRec [95% over rows] {95% over seeds} (per seed) | "
              "large scenarios | minus GRec | small scenarios | minus GRec | CPU s to best epoch |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in block["summary"]:
        versus = row.get("minus_grec", {})
        std = row["auc_std"]["task_average"]
        lines.append(f"| {LABELS[row['model']]} | {len(row['seeds'])} | {row['auc']['task_average']:.4f}"
                     f"{f' ± {std:.4f}' if std is not None else ''} | {_difference(versus.get('task_average'))} | "
                     f"{row['auc']['large']:.4f} | {_difference(versus.get('large'), False)} | "
                     f"{row['auc']['small']:.4f} | {_difference(versus.get('small'), False)} | "
                     f"{row['cpu_seconds_to_best']:.0f} |")
    lines += ["", "Per scenario (its tasks averaged; seed-mean test AUC, and for the other models the "
              "difference from GRec, * where its 95% paired interval over rows excludes 0, ** where the one over "
              "seeds does too):", "",
              "| model | " + " | ".join(s["description"] + (" (small)" if s["name"] in small else "")
                                      for s in scenarios) + " |",
              "|---|" + "---|" * len(scenarios)]
    for row in block["summary"]:
        cells = []
        for s in scenarios:
            versus = row.get("minus_grec", {}).get(s["name"])
            mark = "" if versus is None else f" ({versus['difference']:+.4f}{_marks(versus)})"
            cells.append(f"{row['auc'][s['name']]:.4f}{mark}")
        lines.append(f"| {LABELS[row['model']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scenario_sizes(scenario_set: ScenarioSet, data: BenchData,
                   masks: dict[str, dict[str, np.ndarray]]) -> list[dict[str, object]]:
    train_labels = data.arrays["train"].labels
    return [{"name": s.name, "description": s.description,
             "rows": {split: int(masks[split][s.name].sum()) for split in SPLITS},
             **{f"{task}_share": float(np.nanmean(train_labels[f"{s.name}_{task}"])) for task in scenario_set.base_tasks}}
            for s in scenario_set.scenarios]


# ---- the command -----------------------------------------------------------------------------------
def run_set(set_name: str, args: argparse.Namespace, results: dict[str, object]) -> None:
    scenario_set = SETS[set_name]
    base = load(scenario_set.dataset, args.data_root, REPO_ROOT)
    prepared = prepared_dataset(scenario_set.dataset, args.data_root)
    raw = {split: prepared.read_split(split) for split in SPLITS}
    data, masks = scenario_data(scenario_set, base, raw, set_name)
    sizes = scenario_sizes(scenario_set, data, masks)
    small = [s["name"] for s in sizes if s["rows"]["train"] < SMALL_TRAIN_ROWS]
    block = results["sets"].setdefault(set_name, {"runs": []})
    block.update(scenarios=sizes, small=small)
    labels = data.arrays["test"].labels
    args.predictions.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for model in args.models:
            if any(r["model"] == model and r["seed"] == seed for r in block["runs"]):
                continue
            out = train(data, scenario_set, masks, model, seed)
            np.savez_compressed(args.predictions / f"{set_name}--{model}--{seed}.npz", **out["test"])
            aucs = task_aucs(labels, out["test"])
            block["runs"].append({"model": model, "seed": seed, "test_auc": aucs,
                                  "task_average_auc": float(np.nanmean(list(aucs.values()))),
                                  "validation_auc": out["validation_auc"],
                                  "cpu_seconds_to_best": out["cpu_seconds_to_best"], "detail": out["detail"]})
            print(f"{set_name} seed {seed} {model}: test task-average AUC {block['runs'][-1]['task_average_auc']:.4f}"
                  f", {out['cpu_seconds_to_best']:.1f} CPU s to best", flush=True)
            write_results(results, args.json, None)  # a stopped run keeps what it did
    block["summary"] = summarize(block["runs"], labels, task_groups(scenario_set, small), args.predictions, set_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--data-root", type=Path, default=Path(".grec/bench/data"),
                        help="where prepared datasets are kept (default .grec/bench/data)")
    parser.add_argument("--predictions", type=Path, default=Path(".grec/bench/scenario-predictions"),
                        help="every run's test predictions, for the paired intervals")
    parser.add_argument("--json", type=Path, help="runs and summaries: read to resume, written as runs end")
    parser.add_argument("--page", type=Path, help="write the tables as markdown here")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)  # cost is CPU seconds of one thread, for every model
    threadpool_limits(1)
    results = json.loads(args.json.read_text()) if args.json and args.json.exists() else {"sets": {}}
    results["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                       text=True).stdout.strip()
    results["command"] = " ".join(["benchmarks/bench_scenarios.py", *sys.argv[1:]])
    for set_name in args.sets:
        run_set(set_name, args, results)
        print(markdown(results["sets"][set_name]), flush=True)
        write_results(results, args.json, args.page, _sets_markdown)
    return 0


def _sets_markdown(results: dict[str, object]) -> str:
    return "\n".join(f"### {name}\n\n{markdown(block)}" for name, block in results["sets"].items()
                     if block.get("summary"))


if __name__ == "__main__":
    raise SystemExit(main())
