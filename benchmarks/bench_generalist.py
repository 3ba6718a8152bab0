"""The generalist's case on data whose structure is known: many tasks drawn from a few latent skill
groups, little data per task (issue: "the generalist earns its parts").

Each of T binary tasks belongs to one of G latent groups. A row is one (user, item, context) event
labelled for one task only (NaN for the others, as a scenario's rows are in multi-scenario data).
Its label is drawn from sigmoid(f_g(z) + d_t(z) + b_t): z is the row's 12 context numerics with the
user's and the item's hidden 4-d vectors (the models see the ids, not the vectors), f_g a random
one-hidden-layer network of the task's group (logit std 1.5), d_t a task-specific linear deviation
(std 0.5) and b_t a task bias (std 0.5). So tasks of a group share most of their function, and a
model that shares the right parts across tasks gains from every task's rows.

Models, all on the same rows, the same early stopping (validation task-average AUC) and seeds:
GRec as configured here (task routing over 4 experts, C-Poly skills with G common skills), its
ablations (no skills; one expert, no routing), GRec's own Shared-Bottom and MMoE at GRec's
parameter count, and torch-rechub's MMoE and PLE (benchmarks/quality_peers.py). Reported per T:
test task-average AUC (mean over seeds), the paired 95% bootstrap interval of each model's
difference from GRec (seed-mean, the same resampled test rows for both), CPU seconds to the best
epoch (one thread), and for GRec how well its learned skill allocation recovers the latent groups:
the adjusted Rand index of the tasks clustered (k-means, k = G) by their eval-time allocation rows
over every adapted layer.

A new task from few labels (`--few-labels T`, see `few_label_runs`): the set's last task is held out,
the models learn the other T-1, then the new task from 1%, 5% and 25% of its training rows.

    .venv/bin/python benchmarks/bench_generalist.py --tasks 16 32 64 --few-labels 32 --seeds 0 1 2 \
        --json docs/benchmarks/generalist_results.json --page docs/benchmarks/generalist.md
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_quality import train_grec_family  # noqa: E402
from benchmarks.quality_data import BenchData, PeerArrays  # noqa: E402
from benchmarks.quality_peers import train_peer  # noqa: E402
from grec import GRecConfig, RouterConfig, SkillConfig  # noqa: E402
from grec.skills import SkillAdapter  # noqa: E402
from grec.spec import CategoricalFeature, InputSpec, NumericFeature, TaskSpec  # noqa: E402
from jobs.evaluate.bootstrap import bootstrap_intervals  # noqa: E402
from jobs.metrics import auc  # noqa: E402
from jobs.train.config import ResolvedConfig, load_config  # noqa: E402

GROUPS = 4
CONTEXT_NUMERICS, HIDDEN_DIM, GROUP_HIDDEN = 12, 4, 16
USERS, ITEMS = 400, 200
# Rows per task: little training data per task, a larger test split for tighter intervals.
ROWS_PER_TASK = {"train": 150, "validation": 100, "test": 300}
GROUP_LOGIT_STD, TASK_DEVIATION_STD, TASK_BIAS_STD = 1.5, 0.5, 0.5
MODELS = ("grec", "ablation_no_skills", "ablation_one_expert", "shared_bottom", "mmoe", "rechub_mmoe", "rechub_ple")
PEERS = ("rechub_mmoe", "rechub_ple")
RESAMPLES = 200
# The held-out task's rows (drawn from its latent group's function): fractions of the training rows
# are the few labels; validation stops early, test scores.
NEW_TASK_ROWS = {"train": 3000, "validation": 300, "test": 2000}
NEW_TASK_SEED = 1000
FEW_LABEL_MODELS = ("grec_add_task", "grec_add_task_like_nearest", "mmoe_fine_tuned", "single_task")
FEW_LABEL_NAMES = {"grec_add_task": "GRec, `add_task` (old tasks frozen)",
                   "grec_add_task_like_nearest": "GRec, `add_task` started like the old task that best ranks the "
                                                 "new task's training labels",
                   "mmoe_fine_tuned": "MMoE (GRec encoders) fine-tuned with a new gate and tower",
                   "single_task": "single-task Shared-Bottom from scratch"}
LABELS = {"grec": "GRec (task routing, C-Poly)", "ablation_no_skills": "ablation: no C-Poly skills",
          "ablation_one_expert": "ablation: one expert (no routing)",
          "shared_bottom": "Shared-Bottom (GRec encoders)", "mmoe": "MMoE (GRec encoders)",
          "rechub_mmoe": "torch-rechub MMoE", "rechub_ple": "torch-rechub PLE"}


@dataclass(frozen=True)
class LatentStructure:
    """The hidden truth of a synthetic set: each task's group, the users' and items' vectors, each
    group's network, each task's deviation and bias."""

    groups: np.ndarray  # [T]
    users: np.ndarray  # [USERS, HIDDEN_DIM]
    items: np.ndarray  # [ITEMS, HIDDEN_DIM]
    hidden: np.ndarray  # [GROUPS, width, GROUP_HIDDEN]
    readout: np.ndarray  # [GROUPS, GROUP_HIDDEN]
    scale: np.ndarray  # [GROUPS]
    deviation: np.ndarray  # [T, width]
    bias: np.ndarray  # [T]

    @classmethod
    def draw(cls, num_tasks: int, rng: np.random.Generator) -> LatentStructure:
        groups = rng.permutation(np.arange(num_tasks) % GROUPS)
        users, items = rng.standard_normal((USERS, HIDDEN_DIM)), rng.standard_normal((ITEMS, HIDDEN_DIM))
        width = CONTEXT_NUMERICS + 2 * HIDDEN_DIM
        hidden = rng.standard_normal((GROUPS, width, GROUP_HIDDEN)) / np.sqrt(width)
        readout = rng.standard_normal((GROUPS, GROUP_HIDDEN))
        deviation = rng.standard_normal((num_tasks, width)) / np.sqrt(width) * TASK_DEVIATION_STD
        bias = rng.standard_normal(num_tasks) * TASK_BIAS_STD
        # Each group's network scaled to the same logit spread, measured on a reference sample.
        reference = rng.standard_normal((4096, width))
        scale = GROUP_LOGIT_STD / np.array([np.std(np.tanh(reference @ hidden[g]) @ readout[g])
                                            for g in range(GROUPS)])
        return cls(groups, users, items, hidden, readout, scale, deviation, bias)

    def rows(self, task: np.ndarray, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray]:
        """Events of the tasks `task` [N] (each row labelled for its task only) and each row's true
        label probability."""
        rows = len(task)
        user, item = rng.integers(0, USERS, rows), rng.integers(0, ITEMS, rows)
        context = rng.standard_normal((rows, CONTEXT_NUMERICS)).astype(np.float32)
        z = np.concatenate([context, self.users[user], self.items[item]], axis=1)
        g = self.groups[task]
        logit = np.empty(rows)
        for group in range(GROUPS):
            mine = g == group
            logit[mine] = np.tanh(z[mine] @ self.hidden[group]) @ self.readout[group] * self.scale[group]
        logit += np.einsum("nd,nd->n", z, self.deviation[task]) + self.bias[task]
        probability = 1.0 / (1.0 + np.exp(-logit))
        label = (rng.random(rows) < probability).astype(np.float32)
        columns: dict[str, object] = {"user_id": user + 1, "item_id": item + 1}
        columns.update({f"x{i}": context[:, i] for i in range(CONTEXT_NUMERICS)})
        for t in range(len(self.groups)):
            columns[f"label_task{t}"] = np.where(task == t, label, np.nan).astype(np.float32)
        return pa.table(columns), probability


@dataclass(frozen=True)
class SyntheticTasks:
    """The tables of one synthetic many-task set and its hidden structure."""

    spec: InputSpec
    tables: dict[str, pa.Table]
    structure: LatentStructure
    oracle: np.ndarray  # the true label probability of every test row

    @property
    def groups(self) -> np.ndarray:
        return self.structure.groups


def synthetic_spec(num_tasks: int) -> InputSpec:
    return InputSpec(
        name=f"synthetic-{num_tasks}-tasks",
        categorical=(CategoricalFeature("user_id", USERS + 1, source="user"),
                     CategoricalFeature("item_id", ITEMS + 1, source="item")),
        numeric=tuple(NumericFeature(f"x{i}") for i in range(CONTEXT_NUMERICS)),
        tasks=tuple(TaskSpec(f"task{t}", "binary", f"label_task{t}", descriptors={"scenario": f"scenario {t}"})
                    for t in range(num_tasks)),
    )


def synthetic_many_tasks(num_tasks: int, seed: int = 0) -> SyntheticTasks:
    """T tasks in GROUPS latent groups (see the module docstring); the structure is drawn from `seed`."""
    rng = np.random.default_rng(seed)
    structure = LatentStructure.draw(num_tasks, rng)
    tables, oracle = {}, np.zeros(0)
    for split, per_task in ROWS_PER_TASK.items():
        tables[split], probability = structure.rows(np.repeat(np.arange(num_tasks), per_task), rng)
        if split == "test":
            oracle = probability
    return SyntheticTasks(synthetic_spec(num_tasks), tables, structure, oracle)


def model_config(spec: InputSpec, seed: int) -> GRecConfig:
    """GRec for this set: small encoders, task routing over 4 experts, C-Poly with one common skill
    per latent group plus one exclusive skill per task."""
    return GRecConfig(input=spec, architecture="grec", d_model=32, embedding_dim=8, num_heads=2, ffn_hidden=64,
                      expert_hidden=64, tower_hidden=32, dropout=0.1, seed=seed,
                      router=RouterConfig(mode="task", num_experts=4, top_k=1),
                      skills=SkillConfig(kind="cpoly", num_common=GROUPS, num_exclusive=1, rank=2))


def bench_data(spec: InputSpec, tables: dict[str, pa.Table], seed: int, metric: str = "val/auc_mean") -> BenchData:
    """The rows in the quality benchmark's form, so its GRec-family and peer trainers run unchanged.
    Training: batch 256, AdamW 3e-3, up to 40 epochs, patience 4 on `metric` (validation)."""
    config = load_config(REPO_ROOT / "configs/adult_grec.yaml").with_overrides(
        training={"epochs": 40, "batch_size": 256, "eval_batch_size": 4096, "seed": seed,
                  "early_stopping": {"metric": metric, "mode": "max", "patience": 4}},
        optimizer={"lr": 3e-3})
    resolved = ResolvedConfig(config, REPO_ROOT, model_config(spec, seed), (), False, "synthetic")
    arrays = {split: _arrays(table, spec) for split, table in tables.items()}
    return BenchData(spec.name, config, resolved, tables, arrays, {}, {})


def _arrays(table: pa.Table, spec: InputSpec) -> PeerArrays:
    ids = {f.name: table.column(f.name).to_numpy().astype(np.int64) for f in spec.categorical}
    numeric = {f.name: table.column(f.name).to_numpy().astype(np.float32) for f in spec.numeric}
    labels = {t.name: table.column(t.label).to_numpy().astype(np.float64) for t in spec.tasks}
    return PeerArrays(ids, {}, numeric, {}, {}, labels)


def allocation_rand_index(model: torch.nn.Module, tasks: list[str], groups: np.ndarray, seed: int) -> float:
    """Adjusted Rand index of the latent groups against the tasks clustered (k-means, k = GROUPS) by
    their eval-time common-skill allocation rows, concatenated over every adapted layer and bank."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rows = [adapter.allocation_matrix(tasks, bank).numpy()
            for adapter in model.modules() if isinstance(adapter, SkillAdapter) and adapter.num_common
            for bank in range(adapter.banks)]
    if not rows:
        return float("nan")
    clusters = KMeans(GROUPS, n_init=10, random_state=seed).fit_predict(np.concatenate(rows, axis=1))
    return float(adjusted_rand_score(groups, clusters))


def run_model(data: BenchData, tasks: SyntheticTasks, model: str, seed: int) -> dict[str, object]:
    if model in PEERS:
        peer = train_peer(model, data, seed)
        out = {"test": peer.test, "validation_auc": peer.validation_auc,
               "cpu_seconds_to_best": peer.cpu_seconds_to_best, "detail": peer.detail}
    else:
        out = train_grec_family(data, model, seed, keep_models=True)
    record = {"model": model, "seed": seed, "test": out["test"], "validation_auc": out["validation_auc"],
              "cpu_seconds_to_best": out["cpu_seconds_to_best"], "detail": out["detail"]}
    if model == "grec":
        record["allocation_ari"] = allocation_rand_index(out["models"][0], list(data.model_config.task_names),
                                                         tasks.groups, seed)
    return record


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties averaged): the number sklearn's roc_auc_score gives,
    written here because the paired bootstrap asks for it ~500k times at T=64 and sklearn's checks on
    every call made that summary take over 20 minutes; NaN with one class only."""
    from scipy.stats import rankdata

    positives = int(labels.sum())
    negatives = len(labels) - positives
    if not positives or not negatives:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def task_aucs(labels: dict[str, np.ndarray], scores: dict[str, np.ndarray],
              rows: np.ndarray | None = None) -> dict[str, float]:
    """Each task's test AUC over its labelled rows (of `rows`, when given)."""
    out = {}
    for task, y in labels.items():
        y, s = (y, scores[task]) if rows is None else (y[rows], scores[task][rows])
        known = ~np.isnan(y)
        out[task] = rank_auc(y[known], s[known])
    return out


def task_average_auc(labels: dict[str, np.ndarray], scores: dict[str, np.ndarray],
                     rows: np.ndarray | None = None) -> float:
    return float(np.nanmean(list(task_aucs(labels, scores, rows).values())))


def paired_differences(labels: dict[str, np.ndarray], pairs: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
                       groups: dict[str, list[str]]) -> dict[str, dict[str, object]]:
    """Per group of tasks: the seed-mean difference of the group's average test AUC (a model minus
    a reference, `pairs` holding both one's test scores per seed), its 95% bootstrap interval over
    the test rows (the same draws for both models and every group), the difference in each seed and
    the 95% interval over seeds of their mean."""
    def group_means(scores: dict[str, np.ndarray], rows: np.ndarray | None) -> np.ndarray:
        aucs = task_aucs(labels, scores, rows)
        return np.array([np.nanmean([aucs[t] for t in tasks]) for tasks in groups.values()])

    def difference(rows: np.ndarray | None) -> np.ndarray:
        return np.mean([group_means(model, rows) - group_means(reference, rows) for model, reference in pairs], axis=0)

    low, high = bootstrap_intervals(difference, len(next(iter(labels.values()))), resamples=RESAMPLES)
    per_seed = [group_means(model, None) - group_means(reference, None) for model, reference in pairs]
    return {name: {"difference": float(difference(None)[i]), "interval": (float(low[i]), float(high[i])),
                   "per_seed": [float(d[i]) for d in per_seed], "seed_interval": seed_interval([d[i] for d in per_seed])}
            for i, name in enumerate(groups)}


def seed_interval(differences: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of paired per-seed differences (seeds as the units, the test
    rows fixed); None with fewer than two seeds."""
    from scipy import stats

    if len(differences) < 2:
        return None
    mean, error = float(np.mean(differences)), float(stats.sem(differences))
    half = float(stats.t.ppf((1 + confidence) / 2, len(differences) - 1)) * error
    return mean - half, mean + half


def summarize(runs: list[dict[str, object]], labels: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """Per model: the seed-mean test task-average AUC, its paired difference from GRec with a 95%
    bootstrap interval over the test rows, CPU seconds to the best epoch and (GRec) the ARI."""
    by_model = {m: sorted((r for r in runs if r["model"] == m), key=lambda r: r["seed"]) for m in MODELS}
    grec = {r["seed"]: r for r in by_model["grec"]}
    out = []
    for model, mine in by_model.items():
        if not mine:
            continue
        row = {"model": model, "seeds": [r["seed"] for r in mine],
               "auc": statistics.mean(task_average_auc(labels, r["test"]) for r in mine),
               "auc_std": statistics.stdev(task_average_auc(labels, r["test"]) for r in mine) if len(mine) > 1 else None,
               "cpu_seconds_to_best": statistics.mean(r["cpu_seconds_to_best"] for r in mine)}
        paired = [(r, grec[r["seed"]]) for r in mine if r["seed"] in grec]
        if model != "grec" and paired:
            versus = paired_differences(labels, [(p["test"], g["test"]) for p, g in paired], {"all": list(labels)})["all"]
            row["minus_grec"], row["interval"] = versus["difference"], versus["interval"]
        aris = [r["allocation_ari"] for r in mine if "allocation_ari" in r]
        if aris:
            row["allocation_ari"] = statistics.mean(aris)
            row["allocation_ari_per_seed"] = aris
        out.append(row)
    return out


def few_label_runs(num_tasks: int, seeds: list[int], fractions: list[float]) -> dict[str, object]:
    """A new task from few labels: the set's last task is held out; GRec and GRec's MMoE are trained
    on the other T-1 tasks, then the new task is learned from a fraction of its NEW_TASK_ROWS training
    rows (early stopping on its own validation rows): GRec with `add_task` (everything else frozen,
    the old tasks' scores checked unchanged), the MMoE fine-tuned whole with a new gate and tower,
    and a single-task Shared-Bottom from scratch. Scored on the new task's test rows."""
    import pyarrow.compute as pc

    from benchmarks.bench_quality import _at_budget
    from grec import build_model, count_parameters
    from jobs.train.local_fit import fit

    tasks = synthetic_many_tasks(num_tasks)
    new_spec = tasks.spec.tasks[-1]
    base_spec = tasks.spec.replace(tasks=tasks.spec.tasks[:-1])
    base_tables = {split: table.filter(pc.is_nan(table.column(new_spec.label))).drop_columns([new_spec.label])
                   for split, table in tasks.tables.items()}
    rng = np.random.default_rng(NEW_TASK_SEED)
    pool = {split: tasks.structure.rows(np.full(rows, num_tasks - 1), rng)[0] for split, rows in NEW_TASK_ROWS.items()}
    test_labels = pool["test"].column(new_spec.label).to_numpy()
    metric = f"val/{new_spec.name}/auc"
    runs = []
    for seed in seeds:
        base = bench_data(base_spec, base_tables, seed)
        grec_base = train_grec_family(base, "grec", seed, keep_models=True)["models"][0]
        mmoe_base = train_grec_family(base, "mmoe", seed, keep_models=True)["models"][0]
        old_scores = _scores(grec_base, base_tables["test"], base_spec.task_names)
        for fraction in fractions:
            train = pool["train"].slice(0, max(1, round(fraction * NEW_TASK_ROWS["train"])))
            config = bench_data(tasks.spec, tasks.tables, seed, metric).config
            models = {"grec_add_task": copy.deepcopy(grec_base), "grec_add_task_like_nearest": copy.deepcopy(grec_base),
                      "mmoe_fine_tuned": copy.deepcopy(mmoe_base)}
            models["grec_add_task"].add_task(new_spec)
            nearest = nearest_task(grec_base, train, new_spec.label, base_spec.task_names)
            models["grec_add_task_like_nearest"].add_task(new_spec, like=nearest)
            fine_tuned = build_model(mmoe_base.config.with_task(new_spec))
            fine_tuned.load_state_dict(models["mmoe_fine_tuned"].state_dict(), strict=False)  # new gate, tower
            models["mmoe_fine_tuned"] = fine_tuned
            single = _at_budget(model_config(tasks.spec.replace(tasks=(new_spec,)), seed).replace(
                architecture="shared_bottom"), count_parameters(grec_base))
            models["single_task"] = build_model(single.replace(seed=seed))
            for name, model in models.items():
                torch.manual_seed(seed)
                result = fit(model, train, pool["validation"], config)
                scores = _scores(result.model, pool["test"], [new_spec.name])[new_spec.name]
                record = {"model": name, "seed": seed, "fraction": fraction, "labels": train.num_rows,
                          "auc": auc(test_labels, scores), "cpu_seconds_to_best": result.cpu_seconds_to_best}
                if name == "grec_add_task_like_nearest":
                    record["like"] = nearest
                    record["like_group"] = int(tasks.groups[base_spec.task_names.index(nearest)])
                if name.startswith("grec_add_task"):
                    after = _scores(result.model, base_tables["test"], base_spec.task_names)
                    record["old_tasks_max_change"] = float(max(np.max(np.abs(after[t] - old_scores[t]))
                                                               for t in base_spec.task_names))
                runs.append(record)
                print(f"new task, T={num_tasks} seed {seed} {fraction:.0%} ({train.num_rows} labels) {name}: "
                      f"test AUC {record['auc']:.4f}", flush=True)
    summary = []
    for fraction in fractions:
        for name in FEW_LABEL_MODELS:
            mine = [r for r in runs if r["fraction"] == fraction and r["model"] == name]
            summary.append({"fraction": fraction, "labels": mine[0]["labels"], "model": name,
                            "auc": statistics.mean(r["auc"] for r in mine),
                            "auc_std": statistics.stdev(r["auc"] for r in mine) if len(mine) > 1 else None,
                            "cpu_seconds_to_best": statistics.mean(r["cpu_seconds_to_best"] for r in mine),
                            **({"old_tasks_max_change": max(r["old_tasks_max_change"] for r in mine)}
                               if name.startswith("grec_add_task") else {}),
                            **({"like_in_the_new_tasks_group": sum(r["like_group"] == int(tasks.groups[-1])
                                                                   for r in mine)}
                               if name == "grec_add_task_like_nearest" else {})})
    return {"tasks": num_tasks, "new_task_group": int(tasks.groups[-1]), "summary": summary, "runs": runs}


def nearest_task(model: torch.nn.Module, rows: pa.Table, label: str, task_names: list[str]) -> str:
    """The trained task whose scores best rank a new task's labelled rows (highest AUC on them): the
    one a new task from few labels starts like."""
    labels = rows.column(label).to_numpy()
    scores = _scores(model, rows, task_names)
    return max(task_names, key=lambda task: np.nan_to_num(auc(labels, scores[task]), nan=0.0))


def _scores(model: torch.nn.Module, table: pa.Table, task_names: list[str]) -> dict[str, np.ndarray]:
    return {task: values.numpy() for task, values in model.predict(model.collate(table), task_names).items()}


def markdown(results: dict[str, object]) -> str:
    lines = []
    for num_tasks, block in results["per_tasks"].items():
        lines += [f"### T = {num_tasks} tasks ({GROUPS} latent groups, {ROWS_PER_TASK['train']} training rows per task)",
                  "", f"The true label probabilities score {block['oracle_auc']:.4f} (the ceiling).", "",
                  "| model | test task-average AUC (± std over seeds) | minus GRec [95% paired interval] | "
                      "CPU s to best epoch | allocation ARI |", "|---|---|---|---|---|"]
        for row in block["summary"]:
            spread = f" ± {row['auc_std']:.4f}" if row.get("auc_std") is not None else ""
            diff = (f"{row['minus_grec']:+.4f} [{row['interval'][0]:+.4f}, {row['interval'][1]:+.4f}]"
                    if "interval" in row else "")
            ari = (f"{row['allocation_ari']:.2f} ({', '.join(f'{a:.2f}' for a in row['allocation_ari_per_seed'])})"
                   if "allocation_ari" in row else "")
            lines.append(f"| {LABELS[row['model']]} | {row['auc']:.4f}{spread} | {diff} | "
                         f"{row['cpu_seconds_to_best']:.1f} | {ari} |")
        lines.append("")
    for block in results.get("few_labels") or []:
        lines += [f"### A new task from few labels (T = {block['tasks']}: trained on {block['tasks'] - 1}, the new task "
                  f"from latent group {block['new_task_group']})", "",
                  "| labels of the new task | model | test AUC of the new task (± std over seeds) | CPU s to best epoch |",
                  "|---|---|---|---|"]
        for row in block["summary"]:
            spread = f" ± {row['auc_std']:.4f}" if row.get("auc_std") is not None else ""
            group = (f" (a task of its latent group in {row['like_in_the_new_tasks_group']} of the seeds)"
                     if "like_in_the_new_tasks_group" in row else "")
            lines.append(f"| {row['fraction']:.0%} ({row['labels']}) | {FEW_LABEL_NAMES[row['model']]}{group} | "
                         f"{row['auc']:.4f}{spread} | {row['cpu_seconds_to_best']:.1f} |")
        changes = [r["old_tasks_max_change"] for r in block["summary"] if "old_tasks_max_change" in r]
        lines += ["", f"Largest change of any old task's test score after `add_task` training: {max(changes):.1e}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="*", default=[16, 32, 64], help="numbers of tasks T (none: skip)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds (the set's structure is drawn from seed 0 at every T)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--few-labels", type=int, nargs="*", default=[32],
                        help="numbers of tasks T for the new-task-from-few-labels runs (none: skip them)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.25],
                        help="shares of the new task's training rows it learns from")
    parser.add_argument("--json", type=Path, help="write the runs and summaries here")
    parser.add_argument("--page", type=Path, help="write the tables as markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    results: dict[str, object] = {"commit": commit, "command": " ".join(["benchmarks/bench_generalist.py", *sys.argv[1:]]),
                                  "per_tasks": {}}
    for num_tasks in args.tasks:
        tasks = synthetic_many_tasks(num_tasks)
        runs = []
        for seed in args.seeds:
            data = bench_data(tasks.spec, tasks.tables, seed)
            for model in args.models:
                record = run_model(data, tasks, model, seed)
                runs.append(record)
                ari = f" allocation ARI {record['allocation_ari']:.2f}" if "allocation_ari" in record else ""
                print(f"T={num_tasks} seed {seed} {model}: test task-average AUC "
                      f"{task_average_auc(data.arrays['test'].labels, record['test']):.4f}, "
                      f"{record['cpu_seconds_to_best']:.1f} CPU s to best{ari}", flush=True)
        labels = _arrays(tasks.tables["test"], tasks.spec).labels
        results["per_tasks"][str(num_tasks)] = {
            "oracle_auc": task_average_auc(labels, {task: tasks.oracle for task in labels}),
            "summary": summarize(runs, labels),
            "runs": [{k: v for k, v in r.items() if k != "test"} for r in runs]}
        print(markdown({"per_tasks": {str(num_tasks): results["per_tasks"][str(num_tasks)]}}), flush=True)
        write_results(results, args.json, args.page)  # each T as it ends: a long run stopped midway keeps what it did
    results["few_labels"] = [few_label_runs(num_tasks, args.seeds, args.fractions) for num_tasks in args.few_labels]
    print(markdown({"per_tasks": {}, "few_labels": results["few_labels"]}), flush=True)
    write_results(results, args.json, args.page)
    return 0


def write_results(results: dict[str, object], json_path: Path | None, page: Path | None,
                  render: Callable[[dict[str, object]], str] = markdown) -> None:
    """The results as JSON and, rendered by `render`, as a markdown page (either path None: not written)."""
    if json_path:
        json_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    if page:
        page.write_text(render(results) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
