"""docs/benchmarks/recommend.md from benchmarks/bench_recommend.py's results JSON."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

METRICS = ("ndcg@10", "hr@10", "mrr@10", "recall@50", "coverage", "novelty")
SYSTEM_NAMES = {"grec": "**grec /v1/recommend**", "sasrec": "SASRec (rectools)", "ease": "EASE", "als": "ALS (implicit)",
                "bpr": "BPR (implicit)", "item_knn": "item-kNN (implicit)", "recent_popularity": "recent popularity",
                "popularity": "popularity"}


def _cell(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _group(runs: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in runs if all(r.get(k) == v for k, v in match.items())]


def _cpu(run: dict[str, Any], system: str) -> float | None:
    details = run["details"].get(system, {})
    if system == "grec":
        return run["ranker"]["cpu_s_total"] + run["stage"]["cpu_s"]
    if system == "sasrec":  # benchmarks/sasrec_peer/run_sasrec.py's result: tuning trials, then a fit per seed
        result = details.get("result") or {}
        final = [s["fit_cpu_s"] for s in result.get("final", {}).get("seeds", []) if s["seed"] == run["seed"]]
        if not final:
            return None
        return final[0] + sum(t["fit_cpu_s"] for t in result.get("tuning", {}).get("trials", []))
    if "fit_cpu_s" in details:
        return details["fit_cpu_s"] + details.get("tuning_cpu_s", 0.0)
    return None


def systems_table(runs: list[dict[str, Any]]) -> list[str]:
    """Mean ± std over the runs (seeds) of every system's metrics, grec first."""
    names = list(runs[0]["systems"])
    order = ["grec", *sorted((n for n in names if n != "grec"), key=lambda n: -statistics.fmean(
        r["systems"][n]["ndcg@10"] for r in runs if n in r["systems"]))]
    lines = ["| system | " + " | ".join(METRICS) + " | training CPU s (tuning included) |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for name in order:
        cells = [_cell([r["systems"][name][m] for r in runs if name in r["systems"]], 1 if m == "novelty" else 4)
                 for m in METRICS]
        cpu = [c for c in (_cpu(r, name) for r in runs) if c is not None]
        lines.append(f"| {SYSTEM_NAMES.get(name, name)} | " + " | ".join(cells) + f" | {_cell(cpu, 0)} |")
    skipped = {name: d["skipped"] for r in runs for name, d in r["details"].items() if "skipped" in d}
    lines += [f"\n{SYSTEM_NAMES.get(n, n)} did not run: {why}" for n, why in skipped.items()]
    return lines


def intervals_table(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's paired interval of (peer - grec) for NDCG@10 and HR@10."""
    lines = ["| seed | peer | NDCG@10 peer - grec [95% interval] | HR@10 peer - grec [95% interval] | verdict |",
             "|---|---|---|---|---|"]
    for run in runs:
        for peer, values in run["intervals_vs_grec"].items():
            cells = [f"{values[m]['difference']:+.4f} [{values[m]['low']:+.4f}, {values[m]['high']:+.4f}]"
                     for m in ("ndcg@10", "hr@10")]
            low, high = values["ndcg@10"]["low"], values["ndcg@10"]["high"]
            verdict = "grec above" if high < 0 else ("grec below" if low > 0 else "tie (interval holds 0)")
            lines.append(f"| {run['seed']} | {SYSTEM_NAMES.get(peer, peer)} | {cells[0]} | {cells[1]} | {verdict} |")
    return lines


# Issue 28's aims: per setting, the peers grec must be above (interval above 0) and those it must not be
# below (interval holding or above 0).
AIMS = (
    ("per-user time split, `rated`", ("movielens-100k", "user_time", None, "rated"),
     ("recent_popularity", "als", "ease"), ("sasrec",)),
    ("leave-one-out, stated tie rule", ("movielens-100k", "leave_one_out", None, "rated"), ("ease", "als"), ("sasrec",)),
    ("leave-one-out, ties in random orders (every tie seed)", ("movielens-100k", "leave_one_out", "random", "rated"),
     ("ease", "als"), ("sasrec",)),
    ("global time split", ("movielens-100k", "global_time", None, "rated"), ("recent_popularity",), ()),
    ("21-task MovieLens, `like`", ("movielens-100k-genres", "user_time", None, "like"), (), ()),
)


def _verdict(runs: list[dict[str, Any]], peer: str, metric: str) -> str:
    """'above' when every run's interval of (peer - grec) lies below 0, 'below' when one lies above 0."""
    values = [r["intervals_vs_grec"][peer][metric] for r in runs if peer in r["intervals_vs_grec"]]
    if not values:
        return "not run"
    if all(v["high"] < 0 for v in values):
        return "above"
    return "below" if any(v["low"] > 0 for v in values) else "tie"


def aims_table(by_setting: dict[tuple, list[dict[str, Any]]]) -> list[str]:
    """Issue 28's aims, met or missed, from the runs present; settings not run say so."""
    lines = ["## The aims, met or missed", "",
             "| setting | grec first on NDCG@10 / HR@10 (mean over seeds) | must be above (NDCG@10 interval) | "
             "must not be below | met |", "|---|---|---|---|---|"]
    for title, key, above, not_below in AIMS:
        if key[2] == "random":  # every shuffled-tie run of that protocol and target together
            group = [r for k, rs in by_setting.items() if k[:2] == key[:2] and k[2] is not None and k[3] == key[3]
                     for r in rs]
        else:
            group = by_setting.get(key)
        if not group:
            lines.append(f"| {title} | not run in this results file | | | - |")
            continue
        first = []
        for metric in ("ndcg@10", "hr@10"):
            means = {name: statistics.fmean(r["systems"][name][metric] for r in group if name in r["systems"])
                     for name in group[0]["systems"]}
            best = max(means, key=means.get)
            first.append("yes" if best == "grec" else f"no ({SYSTEM_NAMES.get(best, best)} "
                         f"{means[best]:.4f} vs {means['grec']:.4f})")
        above_cells = {p: _verdict(group, p, "ndcg@10") for p in above}
        below_cells = {p: _verdict(group, p, "ndcg@10") for p in not_below}
        met = (all(f == "yes" for f in first) and all(v == "above" for v in above_cells.values())
               and all(v in ("above", "tie") for v in below_cells.values()))
        lines.append(f"| {title} | {' / '.join(first)} | "
                     + (", ".join(f"{SYSTEM_NAMES.get(p, p)}: {v}" for p, v in above_cells.items()) or "-") + " | "
                     + (", ".join(f"{SYSTEM_NAMES.get(p, p)}: {v}" for p, v in below_cells.items()) or "-")
                     + f" | {'yes' if met else 'no'} |")
    return lines + [""]


def render_page(results: dict[str, Any]) -> str:
    runs = results["runs"]
    command = results["command"]  # a list where runs were added to earlier results (--add-to)
    commands = " then ".join(f"`{c}`" for c in (command if isinstance(command, list) else [command]))
    lines = [
        "# Top-N recommendations: /v1/recommend against what a team would run instead (issue 28)", "",
        f"Generated by {commands} at commit {results['commit']} on {results['machine']} (the machine "
        "was shared with other work; CPU seconds are process CPU time on one thread).", "",
        *[f"- Note: {note}" for note in results.get("notes", [])], *([""] if results.get("notes") else []),
        "## How it is measured", "",
        "- **Data**: MovieLens-100K (943 users, 1,682 films, 100,000 ratings), prepared with `grec data prepare "
        "--split PROTOCOL`. Every rating is an interaction: the `rated` target (implicit feedback) judges what a "
        "user takes up next; `like` judges the films rated 4 or 5.",
        "- **Protocols**: `user_time` (the headline: each user's last 20% of ratings by time test, the 10% before "
        "validation); `leave_one_out` (each user's last rating test, the one before validation), once with ties in "
        "time in the source's row order (the stated rule) and again with tied ratings shuffled by seeds; "
        "`global_time` (one cut-off in time for everyone, today's default). Every user with an event in the test "
        "split is judged, not a sample.",
        "- **Lists**: every system ranks the whole catalogue minus the films the user rated before (no sampled "
        "negatives). HR@10, NDCG@10 (binary gains), MRR@10, recall@50 per user; coverage (share of the catalogue "
        "shown in anyone's top 10) and novelty (mean popularity rank of the films shown: higher is less "
        "mainstream).",
        "- **grec**: the ranker of `configs/movielens_grec.yaml` trained in process, its recommendation stage "
        "fitted as `grec build-index` fits it (co-visitation, the next-item transformer and recent popularity "
        "tuned on validation; one blend per task fitted on validation), lists from "
        "`recommend.recommender.rank_lists`, the code `/v1/recommend` and `grec recommend` run.",
        "- **Peers**, on the same users, histories and seen sets: popularity, recent popularity (window tuned), "
        "implicit's item-kNN, ALS and BPR, EASE, each trying 12 settings on validation and refitted on train + "
        "validation; SASRec from rectools in its own virtual environment (benchmarks/sasrec_peer/), also 12 "
        "settings on validation.",
        "- **Intervals**: paired bootstrap over users (1,000 draws) of each peer's mean minus grec's, per seed. An "
        "interval holding 0 is a tie.", ""]
    by_setting: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_setting[(run["dataset"], run["protocol"], run["tie_seed"], run["target"])].append(run)
    lines += aims_table(by_setting)
    sections = [
        ("## Per-user time split, every user (headline)", ("movielens-100k", "user_time", None, "rated")),
        ("## Per-user time split, target `like`", ("movielens-100k", "user_time", None, "like")),
        ("## Leave-one-out, ties in time in the source's row order", ("movielens-100k", "leave_one_out", None, "rated")),
        ("## Global time split (today's default protocol)", ("movielens-100k", "global_time", None, "rated")),
        ("## 21-task MovieLens (`movielens-100k-genres`), per-user time split, target `like`",
         ("movielens-100k-genres", "user_time", None, "like")),
    ]
    for title, key in sections:
        group = by_setting.get(key)
        if not group:
            continue
        first = group[0]
        lines += [title, "", f"{first['users']} users ({first['cold_users']} with fewer than "
                  f"{first['settings']['cold_history']} ratings before), {first['relevant_items']} relevant test "
                  f"items; seeds {[r['seed'] for r in group]}.", "", *systems_table(group), "",
                  *intervals_table(group), ""]
        if any(r["cold_systems"] for r in group):
            lines += ["Cold-start slice (users with fewer than 5 ratings before the split):", "",
                      "| system | ndcg@10 | hr@10 |", "|---|---|---|"]
            for name in group[0]["cold_systems"]:
                lines.append(f"| {SYSTEM_NAMES.get(name, name)} | "
                             f"{_cell([r['cold_systems'][name]['ndcg@10'] for r in group])} | "
                             f"{_cell([r['cold_systems'][name]['hr@10'] for r in group])} |")
            lines.append("")
    random_ties = [r for (d, p, t, target), rs in by_setting.items()
                   if p == "leave_one_out" and t is not None and target == "rated" for r in rs]
    if random_ties:
        stated = by_setting.get(("movielens-100k", "leave_one_out", None, "rated"), [])
        moved = [f"{SYSTEM_NAMES.get(n, n)} {stated[0]['systems'][n]['ndcg@10']:.4f} -> "
                 f"{statistics.fmean(r['systems'][n]['ndcg@10'] for r in random_ties):.4f}"
                 for n in random_ties[0]["systems"] if stated and n in stated[0]["systems"]]
        lines += ["## Leave-one-out with tied ratings in random order (target `rated`, one tie seed per run)", "",
                  "50,561 of MovieLens-100K's ratings share their second with the user's previous one, so which "
                  "rating is 'last' is a rule. Each run below shuffles tied ratings with its tie seed (tie seeds "
                  f"{[r['tie_seed'] for r in random_ties]}).", "",
                  *systems_table(random_ties), "", *intervals_table(random_ties), ""]
        if moved:
            lines += ["How much the rule moves NDCG@10 (stated rule -> shuffled ties, mean over tie seeds): "
                      + "; ".join(moved) + ".", ""]
    stage_runs = by_setting.get(("movielens-100k", "user_time", None, "rated"), [])
    if stage_runs:
        lines += ["## What each part of the stage earns (validation, per-user time split)", "",
                  "NDCG@10 on the validation split of each source alone and of the blend fitted for each task, "
                  "as `grec build-index` measured them (seed by seed):", "",
                  "| seed | co-visitation | next-item transformer (epochs) | recent popularity (window) | "
                  "blend `rated` | blend `like` | blend `love` |", "|---|---|---|---|---|---|---|"]
        for run in stage_runs:
            report = run["stage"]
            blends = report["blends"]
            window = report["popularity"]["window_days"]
            lines.append(
                f"| {run['seed']} | {report['covisitation']['ndcg']:.4f} | {report['next_item']['ndcg']:.4f} "
                f"({report['next_item']['epochs']}) | {report['popularity']['ndcg']:.4f} "
                f"({'all' if window is None else f'{window:g} d'}) | {blends['rated']['ndcg']:.4f} | "
                f"{blends['like']['ndcg']:.4f} | {blends['love']['ndcg']:.4f} |")
        lines += ["", "Blend weights fitted (seed 0): " + "; ".join(
            f"`{task}`: " + ", ".join(f"{n} {w:g}" for n, w in b["weights"].items())
            for task, b in stage_runs[0]["stage"]["blends"].items()), ""]
    if "latency" in results:
        lat = results["latency"]
        lines += ["## Endpoint latency", "",
                  f"Sequential `POST /v1/recommend` (no candidates, `task: like`, k 10) on loopback, "
                  f"{lat['index']['requests']} requests each after a warm-up: with the recommendation stage p50 "
                  f"{lat['index']['p50_ms']} ms / p95 {lat['index']['p95_ms']} ms; with popularity candidates p50 "
                  f"{lat['popularity']['p50_ms']} ms / p95 {lat['popularity']['p95_ms']} ms (ratio "
                  f"{lat['p50_ratio_stage_over_popularity']}x).", ""]
    return "\n".join(lines) + "\n"
