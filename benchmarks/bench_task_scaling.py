"""How the compute cost of GRec and of the dense baselines grows with the number of tasks.

At each T in --tasks, the model grows with the tasks: GRec routes each task to top-2 of E = T experts
(`grec`), MMoE has E = T dense experts (at most 64: beyond, its T gates over T experts alone exceed
the budget), PLE one specific expert per task per level plus one shared,
and MMoE and PLE get GRec's parameter count at the same T (their expert width is matched with
grec.match_parameter_budget). `grec-shared` is GRec with bounded expert work per example
(router.shared_experts 2, top_k 0: two shared experts run once per example, each task adds only its
gates, C-Poly skills, tower and head). `heads-only` is the floor of this set-up: the same example
encoders, mean-pooled, and one linear head per task; nothing cheaper can score T tasks.

Measured in one process, one intra-op thread, in interleaved rounds (every case once per round,
the first round is warm-up), as process CPU time: on a shared 2-core machine wall time counts the
time other processes hold the core and overstates growth. Figures are medians.
  - single-task request at batch 1 and 256 (GRec: the exported per-task sub-model `-sub`, and the
    full model asked for one task; baselines: the model asked for one task),
  - all-tasks scoring at batch 1 and 256,
  - one training step (forward, loss, backward, fused Adam) at batch 256 with every task labelled, on
    all tasks and (GRec) on K=8 tasks sampled per step (`losses.tasks_per_step`),
  - parameters, and GRec's parameters added per task relative to its shared model,
  - the largest share of expert assignments any timed training step dropped (0: dropless).

    .venv/bin/python benchmarks/bench_task_scaling.py --json docs/benchmarks/task_scaling.json \
        --plot docs/benchmarks/task_scaling.png                          # T = 2 8 32 64 256
    .venv/bin/python benchmarks/bench_task_scaling.py --tasks 2 64 --rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from grec import (
    BaselineConfig,
    GRecConfig,
    LossConfig,
    RouterConfig,
    SkillConfig,
    build_model,
    count_parameters,
    match_parameter_budget,
    parameters_added_by_task,
)
from grec.synthetic import random_columns, synthetic_spec

SAMPLED_TASKS = 8
# MMoE's per-task gates over E = T experts alone outgrow GRec's budget beyond 64 tasks (T x d x T
# parameters): it keeps 64 experts there.
MMOE_MAX_EXPERTS = 64


@dataclass
class Case:
    """One timed operation; its samples are collected in interleaved rounds."""

    model: str
    tasks: int
    metric: str
    run: Callable[[], object]
    calls: int
    training: bool
    modules: list[nn.Module]
    samples: list[float] = field(default_factory=list)

    def time_round(self) -> None:
        for module in self.modules:
            # Only on a change: a model scored in eval mode stays in it, as a served model does (a
            # mode switch drops the merged expert weights GRec keeps at inference).
            if module.training != self.training:
                module.train(self.training)
        for _ in range(self.calls):
            start = time.process_time()
            self.run()
            self.samples.append(time.process_time() - start)


def run_interleaved(cases: list[Case], rounds: int) -> None:
    """Round-robin over all cases (the first round is warm-up), so load from other processes on the
    machine spreads evenly over every model and every T instead of biasing whichever ran then."""
    for case in cases:
        case.time_round()
        case.samples.clear()
    for number in range(rounds):
        for case in cases:
            case.time_round()
        print(f"  round {number + 1}/{rounds} done", flush=True)


class HeadsOnly(nn.Module):
    """The floor: the model's example encoders, mean-pooled, one linear head per task (stacked)."""

    def __init__(self, encoders_of: nn.Module, num_tasks: int, d_model: int) -> None:
        super().__init__()
        self.encoders_of = encoders_of
        self.heads = nn.Linear(d_model, num_tasks)

    def forward(self, batch) -> torch.Tensor:
        return self.heads(self.encoders_of.encode_examples(batch).mean(1)).T  # [T, B]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels)


def configs(num_tasks: int, args: argparse.Namespace) -> dict[str, GRecConfig]:
    spec = synthetic_spec(num_tasks)
    base = GRecConfig(input=spec, d_model=args.d_model, embedding_dim=32, num_heads=4, ffn_hidden=2 * args.d_model,
                      expert_hidden=args.expert_hidden, tower_hidden=args.d_model, seed=0,
                      router=RouterConfig(mode="task", num_experts=num_tasks, top_k=args.top_k),
                      skills=SkillConfig(kind="cpoly", num_common=3, num_exclusive=1, rank=2))
    budget = count_parameters(build_model(base, pretrained_text=False))
    return {
        "grec": base,
        "grec-shared": base.replace(router=RouterConfig(mode="task", num_experts=num_tasks, top_k=0,
                                                        shared_experts=2)),
        "mmoe": match_parameter_budget(base.replace(architecture="mmoe",
                                                    baseline=BaselineConfig(num_experts=min(num_tasks, MMOE_MAX_EXPERTS))),
                                       budget),
        "ple": match_parameter_budget(base.replace(architecture="ple",
                                                   baseline=BaselineConfig(num_shared_experts=1, num_specific_experts=1,
                                                                           ple_levels=2)), budget),
    }


def inference(fn: Callable, batch) -> Callable[[], object]:
    """fn(batch) without gradients (binds its arguments now, not at call time)."""
    def run() -> object:
        with torch.no_grad():
            return fn(batch)
    return run


def train_step(model: nn.Module, batch, sampled: int | None, dropped: list[float]) -> Callable[[], None]:
    """One optimizer step on all tasks, or on `sampled` tasks drawn per step (loss scaled by T / K);
    each step's share of dropped expert assignments is appended to `dropped`."""
    # The fused update, as grec's in-process training runs it (DeepSpeed updates flat partitions):
    # torch's per-tensor loop on CPU would time Python over the per-task skill tensors instead.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    names = model.task_names
    steps = iter(range(10**9))

    def run() -> None:
        tasks, scale = names, 1.0
        if sampled is not None:
            tasks, scale = model.training_tasks(next(steps))
        optimizer.zero_grad()
        out = model(batch, tasks)
        if out.router_stats is not None:
            dropped.append(float(out.router_stats.dropped_fraction))
        loss, _ = model.loss(out, batch, task_scale=scale)
        loss.backward()
        optimizer.step()
    return run


def floor_cases(model: nn.Module, num_tasks: int, args: argparse.Namespace, one, many) -> tuple[dict, list[Case]]:
    floor = HeadsOnly(model, num_tasks, args.d_model)
    labels = torch.stack([many.labels[t] for t in model.task_names])
    optimizer = torch.optim.Adam(floor.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        optimizer.zero_grad()
        floor.loss(floor(many), labels).backward()
        optimizer.step()

    row = {"model": "heads-only", "tasks": num_tasks, "params": count_parameters(floor), "expert_hidden": 0}
    return row, [Case("heads-only", num_tasks, "all_tasks_b1_ms", inference(floor, one), args.calls, False, [floor]),
                 Case("heads-only", num_tasks, "all_tasks_b256_ms", inference(floor, many), 1, False, [floor]),
                 Case("heads-only", num_tasks, "train_step_ms", step, 1, True, [floor])]


def prepare(num_tasks: int, args: argparse.Namespace) -> tuple[list[dict], list[Case]]:
    """Builds the models of one T; returns their static rows and their timed cases."""
    rows, cases = [], []
    for name, config in configs(num_tasks, args).items():
        # A copy of the training model per phase: training steps must not move the weights that the
        # inference cases time, and their optimizer states must not be shared.
        model = build_model(config, pretrained_text=False)
        trained = build_model(config, pretrained_text=False)
        spec = config.input
        task = spec.task_names[0]
        one = model.collate(random_columns(spec, 1, seed=1))
        many = model.collate(random_columns(spec, args.batch, seed=2))
        row = {"model": name, "tasks": num_tasks, "params": count_parameters(model), "expert_hidden": config.expert_hidden}
        if name.startswith("grec"):
            per_task = parameters_added_by_task(config, spec.tasks[-1])
            row["per_task_params"] = per_task
            row["per_task_pct_of_shared"] = 100.0 * per_task / (count_parameters(model) - num_tasks * per_task)
            sub = model.eval().export_task(task)
            rows.append({**row, "model": f"{name}-sub"})
            for size, batch, calls in ((1, one, args.calls), (256, many, 1)):
                cases.append(Case(f"{name}-sub", num_tasks, f"single_b{size}_ms", inference(sub, batch), calls, False,
                                  [model]))
        rows.append(row)
        single = lambda batch, model=model, task=task: model(batch, tasks=[task]).logits[task]  # noqa: E731
        for size, batch, calls in ((1, one, args.calls), (256, many, 1)):
            cases.append(Case(name, num_tasks, f"single_b{size}_ms", inference(single, batch), calls, False, [model]))
            cases.append(Case(name, num_tasks, f"all_tasks_b{size}_ms", inference(model, batch), calls, False, [model]))
        dropped = row.setdefault("train_dropped", [])  # every timed training step's dropped share
        cases.append(Case(name, num_tasks, "train_step_ms", train_step(trained, many, None, dropped), 1, True,
                          [trained]))
        if name.startswith("grec") and num_tasks > SAMPLED_TASKS:
            sampler = build_model(config.replace(losses=LossConfig(tasks_per_step=SAMPLED_TASKS)), pretrained_text=False)
            cases.append(Case(name, num_tasks, "train_k8_ms", train_step(sampler, many, SAMPLED_TASKS, dropped), 1,
                              True, [sampler]))
        if name == "grec":
            floor_row, more = floor_cases(model, num_tasks, args, one, many)
            rows.append(floor_row)
            cases += more
    return rows, cases


def measure(args: argparse.Namespace) -> list[dict]:
    rows, cases = [], []
    for num_tasks in args.tasks:
        more_rows, more_cases = prepare(num_tasks, args)
        rows += more_rows
        cases += more_cases
        print(f"built the models of T={num_tasks}", flush=True)
    run_interleaved(cases, args.rounds)
    by_key = {(r["model"], r["tasks"]): r for r in rows}
    for case in cases:
        by_key[(case.model, case.tasks)][case.metric] = 1e3 * statistics.median(case.samples)
    for row in rows:  # the largest share any training step dropped (routed models only)
        dropped = row.pop("train_dropped", [])
        if dropped:
            row["train_dropped_fraction"] = max(dropped)
    return rows


METRICS = ("single_b1_ms", "single_b256_ms", "all_tasks_b1_ms", "all_tasks_b256_ms", "train_step_ms", "train_k8_ms")


def _cell(row: dict, key: str, fmt: str = "{:.2f}") -> str:
    return fmt.format(row[key]) if key in row else "-"


def report(rows: list[dict]) -> str:
    lines = ["| model | T | params | expert width | " + " | ".join(METRICS)
             + " | per task % shared | dropped in training |", "|" + "---|" * (6 + len(METRICS))]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tasks']} | {r['params']:,} | {r['expert_hidden']} | "
                     + " | ".join(_cell(r, m, "{:.1f}" if "train" in m else "{:.2f}") for m in METRICS)
                     + f" | {_cell(r, 'per_task_pct_of_shared', '{:.3f}')}"
                     + f" | {_cell(r, 'train_dropped_fraction', '{:.1%}')} |")
    smallest = min(r["tasks"] for r in rows)
    base = {r["model"]: r for r in rows if r["tasks"] == smallest}
    lines += ["", f"Growth: cost at T / the same model's cost at T={smallest} (train_k8: / its all-tasks step at "
                  f"T={smallest})", "| model | T | " + " | ".join(METRICS) + " |", "|" + "---|" * (2 + len(METRICS))]
    for r in rows:
        cells = []
        for m in METRICS:
            reference = base.get(r["model"], {}).get("train_step_ms" if m == "train_k8_ms" else m)
            cells.append(f"{r[m] / reference:.2f}x" if m in r and reference else "-")
        lines.append(f"| {r['model']} | {r['tasks']} | " + " | ".join(cells) + " |")
    lines += ["", "Against MMoE at the same T (< 1: cheaper than MMoE)",
              "| model | T | " + " | ".join(METRICS) + " |", "|" + "---|" * (2 + len(METRICS))]
    for r in rows:
        mmoe = next(x for x in rows if x["model"] == "mmoe" and x["tasks"] == r["tasks"])
        cells = [f"{r[m] / mmoe[m]:.2f}x" if m in r and m in mmoe else "-" for m in METRICS]
        lines.append(f"| {r['model']} | {r['tasks']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """CPU ms against T for each model (log-log): all-tasks scoring at batch 256 and a training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("all_tasks_b256_ms", "all tasks, batch 256"), ("all_tasks_b1_ms", "all tasks, batch 1"),
              ("train_step_ms", "training step, batch 256"))
    for axis, (metric, title) in zip(axes, panels):
        for model in dict.fromkeys(r["model"] for r in rows):
            points = sorted((r["tasks"], r[metric]) for r in rows if r["model"] == model and metric in r)
            if points:
                axis.plot(*zip(*points), marker="o", label=model)
        if metric == "train_step_ms":
            for model in ("grec", "grec-shared"):
                points = sorted((r["tasks"], r["train_k8_ms"]) for r in rows if r["model"] == model and "train_k8_ms" in r)
                if points:
                    axis.plot(*zip(*points), marker="x", linestyle="--", label=f"{model}, K=8 sampled")
        axis.set(xscale="log", yscale="log", xlabel="tasks T", ylabel="CPU ms (1 thread)", title=title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)  # the K=8 lines appear only here
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8, 32, 64, 256])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: CPU time is the op's cost)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--expert-hidden", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds after one warm-up round")
    parser.add_argument("--calls", type=int, default=5, help="batch-1 calls per round")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--plot", type=Path, help="also draw cost against T into this PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = measure(args)
    print(report(rows))
    print(f"\n{args.threads} thread(s), batch {args.batch}, d_model {args.d_model}, top-k {args.top_k}, "
          f"{args.rounds} rounds, CPU time; {time.perf_counter() - started:.0f} s wall")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
