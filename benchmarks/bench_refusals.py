"""Refusals under overload, before and after, interleaved in one run (issue 31: "refusals under
overload must be fast").

"before" is the code of `--baseline` (a commit of this repository), "after" this working tree
(benchmarks/code_versions.py). Each (round, code) runs in a fresh child process with its own local
Ray (as grec starts one: loopback, token auth, 2 CPUs) and Serve running `serving.app.build_app`
with the default serving config but for the store; the codes alternate within and across rounds so
that the machine's other load falls on both alike.

Per code and concurrency (`--concurrency`, default 32 128): closed-loop clients (bench_serving_load's
load generator: each waits Retry-After after a 503) send POST /v1/recommend with `--candidates`
given items for a random known user; answers by status, throughput and p50/p99 of the admitted
requests, p50/p99 of the refused ones (as the client sees them), 5xx other than 503, and the CPU
of the server's processes per admitted answer.

Set-up once, in a temporary directory: MovieLens-100K (`--events`) prepared and materialized into a
SQLite online store; a GRec with default widths (tiny BERT text head) trained for a few steps and
registered as champion.

    .venv/bin/python benchmarks/bench_refusals.py --baseline COMMIT --out docs/benchmarks/refusals_results.json \\
        --page docs/benchmarks/refusals.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "benchmarks") not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from code_versions import export_commit, run_child, use_code_root_if_child, working_tree  # noqa: E402
from page_parts import machine_facts, machine_line, statuses_cell  # noqa: E402

CODES = ("before", "after")


def _child(code: str, set_up: dict, args: argparse.Namespace) -> None:
    """One code on a fresh local Ray: one JSON line per concurrency."""
    from bench_serve_modes import load_levels, served_endpoint

    with served_endpoint(set_up, json.loads(args.serving_config)) as (base_url, headers):
        for level in load_levels(base_url, headers, set_up["payloads"], args.concurrency, args.time_cap,
                                 args.requests):
            print(json.dumps({"code": code, **level}), flush=True)


def _median(runs: list[dict], code: str, clients: int, key: str) -> float | None:
    values = [r[key] for r in runs if r.get("code") == code and r.get("concurrency") == clients
              and r.get(key) is not None]
    return statistics.median(values) if values else None


def _page(report: dict) -> str:
    s = report["settings"]
    after_config = s["after_config"] if json.loads(s["after_config"]) else ""
    lines = [
        "# Serving: refusals under overload, before and after (issue 31)", "",
        "```", report["command"], "```", "",
        f"before: commit `{report['baseline']}`; after: commit `{report['after']}`"
        f"{' plus uncommitted changes' if report['after_dirty'] else ''}"
        f"{f', serving config values `{after_config}` over the default' if after_config else ''}.", "",
        f"What runs: MovieLens-100K ({s['events']:,} events) prepared and materialized into a SQLite online store; "
        f"a GRec with default widths (tiny BERT text head) trained for {s['train_steps']} steps, registered as "
        f"`champion`. For each of {s['rounds']} rounds, both codes in alternating order, each in a fresh child "
        "process with its own local Ray (loopback, token auth, 2 CPUs) and Serve running `serving.app.build_app` "
        "with the default serving config. Per code and concurrency "
        f"({', '.join(map(str, s['concurrency']))}): closed-loop clients (aiohttp; each waits Retry-After after a "
        f"503) send `POST /v1/recommend` (k 10, {s['candidates']} given candidates) for a random known user; at "
        f"most {s['requests']} answers or {s['time_cap']:g} s per level. Latencies are the client's. Server CPU: "
        "user + system time of every process the child's Ray started, per admitted answer.", "",
        f"{machine_line(report['machine'])} Read the figures as a comparison within a round.", "",
        "| round | code | concurrency | answers | admitted/s | admitted p50 ms | p99 ms | p99 / p50 | "
        "refused p50 ms | refused p99 ms | 5xx other than 503 | server CPU ms / answer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        if "failed" in run:
            lines.append(f"| {run['round']} | {run['code']} | failed ({run['failed']}) | | | | | | | | | |")
            continue
        statuses = statuses_cell(run["statuses"])
        lines.append(f"| {run['round']} | {run['code']} | {run['concurrency']} | {statuses} | "
                     f"{run['throughput_ok_rps']} | {run['ok_p50_ms']} | {run['ok_p99_ms']} | {run['p99_over_p50']} | "
                     f"{run['refused_p50_ms'] or '-'} | {run['refused_p99_ms'] or '-'} | "
                     f"{run['server_errors_other_than_503']} | {run['server_cpu_ms_per_answer']} |")
    lines += ["", "Medians over the rounds:", "",
              "| concurrency | admitted/s before | after | admitted p50 ms before | after | p99 / p50 before | after | "
              "refused p50 ms before | after |", "|---|---|---|---|---|---|---|---|---|"]
    for clients in s["concurrency"]:
        cells = []
        for key in ("throughput_ok_rps", "ok_p50_ms", "p99_over_p50", "refused_p50_ms"):
            for code in CODES:
                value = _median(report["runs"], code, clients, key)
                cells.append(f"{value:.1f}" if value is not None else "-")
        lines.append(f"| {clients} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    use_code_root_if_child()
    from bench_serve_modes import set_up_champion
    from bench_serving_load import add_load_options

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser, concurrency=[32, 128], requests=600, time_cap=15.0)
    parser.add_argument("--baseline", default="HEAD", help="the commit measured as 'before' (default HEAD)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both codes, interleaved (default 2)")
    parser.add_argument("--after-config", default="{}",
                        help="serving config values (JSON) over the default for the 'after' side only")
    parser.add_argument("--page", type=Path, help="write the markdown page here")
    parser.add_argument("--child", choices=CODES, help=argparse.SUPPRESS)
    parser.add_argument("--serving-config", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--code-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set-up", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, json.loads(args.set_up.read_text()), args)
        return

    command = ".venv/bin/python benchmarks/bench_refusals.py " + shlex.join(sys.argv[1:])
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        codes = {"before": root / "before", "after": REPO_ROOT}
        baseline = export_commit(args.baseline, codes["before"])
        set_up_file = root / "set_up.json"
        set_up_file.write_text(json.dumps(set_up_champion(root, args.events, args.train_steps, args.candidates,
                                                          args.requests)))
        for round_index in range(args.rounds):
            for code in CODES if round_index % 2 == 0 else CODES[::-1]:
                levels = run_child(__file__, code, codes[code], [
                    "--set-up", str(set_up_file), "--requests", str(args.requests), "--time-cap", str(args.time_cap),
                    "--concurrency", *map(str, args.concurrency),
                    "--serving-config", args.after_config if code == "after" else "{}"])
                runs += [{"round": round_index, **level} for level in levels]
                print(json.dumps(levels), flush=True)
    report = {
        "machine": machine_facts(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("child", "code_root", "set_up", "serving_config", "out", "page")},
        "baseline": baseline, **working_tree(), "command": command, "runs": runs,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.page:
        args.page.write_text(_page(report))


if __name__ == "__main__":
    main()
