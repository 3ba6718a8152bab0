"""How the cost of GRec and of the dense baselines grows with the number of tasks (issue 3, Measure).

At each T in --tasks, capacity grows with the tasks (one expert per task: GRec and MMoE get E = T
experts; PLE one specific expert per task per level plus one shared) and every model gets GRec's
parameter budget (the baselines' expert width is matched with grec.match_parameter_budget).
Measured in one run, same threads, medians after warm-up:
  - single-task request latency at batch 1 and 256 (GRec: the exported per-task sub-model, and the
    full model asked for one task; baselines: the model asked for one task),
  - all-tasks scoring of one example,
  - one training step (forward, loss, backward, Adam) on a batch with every task labelled,
  - dense parameters a single-task request touches (those its output depends on; embedding rows
    actually looked up),
  - GRec's parameters added per task relative to its shared model.

    .venv/bin/python benchmarks/bench_task_scaling.py            # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from grec import (
    BaselineConfig,
    GRecConfig,
    RouterConfig,
    SkillConfig,
    build_model,
    count_parameters,
    match_parameter_budget,
    parameters_added_by_task,
)
from grec.synthetic import random_columns, synthetic_spec


@dataclass
class Case:
    """One timed operation; its samples are collected in interleaved rounds."""

    model: str
    tasks: int
    metric: str
    run: Callable[[], object]
    calls: int
    samples: list[float] = field(default_factory=list)

    def time_round(self) -> None:
        for _ in range(self.calls):
            start = time.perf_counter()
            self.run()
            self.samples.append(time.perf_counter() - start)


def run_interleaved(cases: list[Case], rounds: int) -> None:
    """Round-robin over all cases (the first round is warm-up), so load from other processes on the
    machine spreads evenly over every model and every T instead of biasing whichever ran then."""
    for case in cases:
        case.time_round()
        case.samples.clear()
    for _ in range(rounds):
        for case in cases:
            case.time_round()


def touched_parameters(module: torch.nn.Module, forward: Callable[[], torch.Tensor],
                       sparse: torch.nn.Module) -> int:
    """Parameters the output of `forward` depends on: whole dense tensors that receive a gradient,
    and only the looked-up rows of embedding tables."""
    params = list(module.parameters())
    saved = [p.requires_grad for p in params]
    sparse_ids = {id(p) for p in sparse.parameters()}
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    try:
        with torch.enable_grad():
            forward().float().sum().backward()
        touched = 0
        for p in params:
            if p.grad is None:
                continue
            if id(p) in sparse_ids:
                touched += int((p.grad.abs().sum(dim=1) > 0).sum()) * p.shape[1]
            else:
                touched += p.numel()
        return touched
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
            p.grad = None


def configs(num_tasks: int, args: argparse.Namespace) -> dict[str, GRecConfig]:
    spec = synthetic_spec(num_tasks)
    base = GRecConfig(input=spec, d_model=args.d_model, embedding_dim=32, num_heads=4, ffn_hidden=2 * args.d_model,
                      expert_hidden=args.expert_hidden, tower_hidden=args.d_model, seed=0,
                      router=RouterConfig(mode="task", num_experts=num_tasks, top_k=args.top_k),
                      skills=SkillConfig(kind="cpoly", num_common=3, num_exclusive=1, rank=2))
    budget = count_parameters(build_model(base))
    return {
        "grec": base,
        "mmoe": match_parameter_budget(replace(base, architecture="mmoe",
                                               baseline=BaselineConfig(num_experts=num_tasks)), budget),
        "ple": match_parameter_budget(replace(base, architecture="ple",
                                              baseline=BaselineConfig(num_shared_experts=1, num_specific_experts=1,
                                                                      ple_levels=2)), budget),
    }


def inference(fn: Callable, batch) -> Callable[[], object]:
    """fn(batch) without gradients (binds its arguments now, not at call time). Modes are set once
    per phase, outside the timed calls: .eval() walks every submodule, which costs more with more
    experts and would be counted as model cost."""
    def run() -> object:
        with torch.no_grad():
            return fn(batch)
    return run


def train_step(model: torch.nn.Module, batch) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run() -> None:
        optimizer.zero_grad()
        loss, _ = model.loss(model(batch), batch)
        loss.backward()
        optimizer.step()
    return run


def prepare(num_tasks: int, args: argparse.Namespace) -> tuple[list[dict], list[Case], list[torch.nn.Module]]:
    """Builds the models of one T; returns their static rows, their timed cases and the models."""
    rows, cases, models = [], [], []
    for name, config in configs(num_tasks, args).items():
        model = build_model(config).eval()
        models.append(model)
        spec = config.input
        task = spec.task_names[0]
        one = model.collate(random_columns(spec, 1, seed=1))
        many = model.collate(random_columns(spec, args.batch, seed=2))
        variants: dict[str, tuple[torch.nn.Module, Callable]] = {}
        if name == "grec":
            sub = model.export_task(task)
            variants["grec-sub"] = (sub, lambda batch, sub=sub: sub(batch))
        variants[name] = (model, lambda batch, model=model, task=task: model(batch, tasks=[task]).logits[task])
        for label, (module, single) in variants.items():
            row = {"model": label, "tasks": num_tasks, "params": count_parameters(model),
                   "expert_hidden": config.expert_hidden,
                   "touched_params": touched_parameters(module, lambda: single(one), model.sparse_arch)}
            if name == "grec":
                per_task = parameters_added_by_task(config, spec.tasks[-1])
                row["per_task_params"] = per_task
                row["per_task_pct_of_shared"] = 100.0 * per_task / (count_parameters(model) - num_tasks * per_task)
            rows.append(row)
            cases.append(Case(label, num_tasks, "single_b1_ms", inference(single, one), args.calls))
            cases.append(Case(label, num_tasks, "single_b256_ms", inference(single, many), 2))
        cases.append(Case(name, num_tasks, "all_tasks_b1_ms", inference(model, one), args.calls))
        cases.append(Case(name, num_tasks, "train_step_ms", train_step(model, many), 1))
    return rows, cases, models


def measure(args: argparse.Namespace) -> list[dict]:
    rows, cases, models = [], [], []
    for num_tasks in args.tasks:
        more_rows, more_cases, more_models = prepare(num_tasks, args)
        rows += more_rows
        cases += more_cases
        models += more_models
    for model in models:  # sub-models share their encoders with these
        model.eval()
    run_interleaved([c for c in cases if c.metric != "train_step_ms"], args.rounds)
    for model in models:
        model.train()
    run_interleaved([c for c in cases if c.metric == "train_step_ms"], args.train_rounds)
    by_key = {(r["model"], r["tasks"]): r for r in rows}
    for case in cases:
        value = 1e3 * statistics.median(case.samples)
        by_key[(case.model, case.tasks)][case.metric] = value
    return rows


METRICS = ("single_b1_ms", "single_b256_ms", "all_tasks_b1_ms", "train_step_ms", "touched_params")


def report(rows: list[dict]) -> str:
    lines = ["| model | T | params | expert width | single b=1 ms | single b=256 ms | all tasks b=1 ms | "
             "train step ms | touched params | per task % shared |", "|" + "---|" * 10]
    for r in rows:
        cell = lambda k, fmt="{:.2f}": fmt.format(r[k]) if k in r else "-"  # noqa: E731
        lines.append(f"| {r['model']} | {r['tasks']} | {r['params']:,} | {r['expert_hidden']} | {cell('single_b1_ms')} | "
                     f"{cell('single_b256_ms')} | {cell('all_tasks_b1_ms')} | {cell('train_step_ms', '{:.1f}')} | "
                     f"{r['touched_params']:,} | {cell('per_task_pct_of_shared', '{:.3f}')} |")
    smallest = min(r["tasks"] for r in rows)
    lines += ["", f"Growth: cost at T divided by the same model's cost at T={smallest}",
              "| model | T | " + " | ".join(METRICS) + " |", "|" + "---|" * (2 + len(METRICS))]
    base = {r["model"]: r for r in rows if r["tasks"] == smallest}
    for r in rows:
        ratios = [f"{r[m] / base[r['model']][m]:.2f}x" if m in r else "-" for m in METRICS]
        lines.append(f"| {r['model']} | {r['tasks']} | " + " | ".join(ratios) + " |")
    lines += ["", "Against GRec's sub-model at the same T (single-task) and GRec's full model (all tasks, training)",
              "| model | T | " + " | ".join(METRICS) + " |", "|" + "---|" * (2 + len(METRICS))]
    for r in rows:
        same_t = {x["model"]: x for x in rows if x["tasks"] == r["tasks"]}
        ratios = []
        for m in METRICS:
            reference = same_t["grec"] if m in ("all_tasks_b1_ms", "train_step_ms") else same_t["grec-sub"]
            ratios.append(f"{r[m] / reference[m]:.2f}x" if m in r and m in reference else "-")
        lines.append(f"| {r['model']} | {r['tasks']} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8, 32, 64])
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads; 1 avoids OpenMP barrier stalls when other work shares the cores")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--expert-hidden", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (inference)")
    parser.add_argument("--calls", type=int, default=5, help="batch-1 calls per round")
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = measure(args)
    print(report(rows))
    print(f"\n{args.threads} threads, batch {args.batch}, d_model {args.d_model}, top-k {args.top_k}; "
          f"{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
