"""What a scorer's first requests pay for item titles, with and without the warm-up at version load
(issue 31, part 3: "the catalogue's titles through MiniLM at replica start, not on first sight").

MovieLens-100K prepared as `make demo` prepares it and materialized into a SQLite online store; the
model of configs/movielens_grec.yaml (frozen all-MiniLM-L6-v2 title encoder) built untrained, which
costs what the trained one does (the text encoder is frozen and the rest is the same size). Per
round, a freshly built version (empty text cache): `/v1/recommend`'s scoring of 100 catalogue items
for a known user, the store read included (`request_rows` + `ServableModel.score`), first cold,
then after `serving.warmup.warm_item_texts` with the serving default, on another 100 items. Process
CPU time with one torch thread; medians over the rounds.

    .venv/bin/python benchmarks/bench_warmup.py --rounds 3 --out docs/benchmarks/warmup_results.json \
        --page docs/benchmarks/warmup.md
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.code_versions import working_tree  # noqa: E402
from benchmarks.page_parts import machine_facts, machine_line  # noqa: E402
from benchmarks.quality_data import prepared_dataset  # noqa: E402
from feature_store.online import materialize, open_online_store  # noqa: E402
from grec import build_model  # noqa: E402
from jobs.train.config import load_config, resolve  # noqa: E402
from serving.config import ServingConfig  # noqa: E402
from serving.features import RowsQuery, StoreGuard, request_rows  # noqa: E402
from serving.servable import ServableModel  # noqa: E402
from serving.warmup import warm_item_texts  # noqa: E402

CANDIDATES = 100


def _cpu_ms(work) -> tuple[float, object]:
    started = time.process_time()
    result = work()
    return (time.process_time() - started) * 1000, result


def _page(report: dict, command: str) -> str:
    """The markdown page: the command, what ran, per-round figures and medians."""
    m = report["medians"]
    lines = [
        "# Serving: item titles encoded when a version loads, not on first sight (issue 31, part 3)", "",
        "```", command, "```", "",
        f"Commit `{report['after']}`{' plus uncommitted changes' if report['after_dirty'] else ''}. "
        + __doc__.split("\n\n")[1].replace("\n", " "), "",
        machine_line(report["machine"]), "",
        f"Catalogue: {report['catalogue']:,} items (the item vocabulary), {report['candidates']} candidates a "
        f"request, `warm_item_texts` {report['warm_item_texts']:,} (the serving default).", "",
        "| round | first request, cold: CPU ms | warm-up: CPU ms | items warmed | first request after the warm-up "
        "(other items) | the cold request's items again |",
        "|---|---|---|---|---|---|",
        *(f"| {r['round']} | {r['first_request_cold_ms']} | {r['warm_up_ms']} | {r['items_warmed']} | "
          f"{r['first_request_warmed_ms']} | {r['cold_items_again_ms']} |" for r in report["rounds"]),
        f"| median | {m['first_request_cold_ms']} | {m['warm_up_ms']} | | {m['first_request_warmed_ms']} | "
        f"{m['cold_items_again_ms']} |", "",
        "## Reading it", "",
        f"- A request whose 100 candidates' titles are not cached costs {m['first_request_cold_ms']:.0f} ms of CPU, "
        f"{m['first_request_cold_ms'] / m['first_request_warmed_ms']:.0f}x a request after the warm-up "
        f"({m['first_request_warmed_ms']} ms), which costs what a request on titles it has seen before does "
        f"({m['cold_items_again_ms']} ms).",
        f"- The warm-up is {m['warm_up_ms'] / 1000:.1f} CPU s per scorer replica and version load: the same "
        "encoder work the first requests would otherwise do, paid before the replica takes traffic, for "
        "every catalogue item instead of the ones requests meet.",
        "- A larger catalogue warms its `warm_item_texts` most frequent items (at most the model's text cache); "
        "`warm_item_texts: 0` leaves every title to first sight.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", type=Path, default=Path(".grec/bench/data"),
                        help="where the prepared dataset is kept (shared with bench_quality.py)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--page", type=Path, help="write the markdown page here")
    args = parser.parse_args(argv)
    command = ".venv/bin/python benchmarks/bench_warmup.py " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(1)
    prepared = prepared_dataset("movielens-100k", args.data_root)
    resolved = resolve(load_config(REPO_ROOT / "configs" / "movielens_grec.yaml")
                       .with_overrides(dataset={"path": str(prepared.root)}))
    most = ServingConfig.model_fields["warm_item_texts"].default
    users = prepared.read_split("test").column("user_id").unique().to_pylist()
    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        path = str(Path(scratch) / "online.sqlite")
        with open_online_store(path, create=True) as online:
            materialize(prepared.offline_store(), prepared.definition(), online)
        with open_online_store(path) as online:
            guard = StoreGuard(online, "degrade", 1.0)
            for index in range(args.rounds):
                model = build_model(resolved.model_config).eval()
                servable = ServableModel(name="bench", version=str(index), alias=None, uri="models:/bench/1",
                                         model=model, transforms=prepared.transforms(), spec=model.config.input,
                                         definition=prepared.definition())
                pick = random.Random(index)
                cold_items, warm_items = (pick.sample(servable.popular, CANDIDATES) for _ in range(2))
                user = pick.choice(users)

                def request(items, user=user, servable=servable):
                    rows = request_rows(guard, servable.definition, RowsQuery(user, items)).rows
                    return servable.score("like", rows)

                cold_ms, _ = _cpu_ms(lambda: request(cold_items))
                warm_up_ms, warmed = _cpu_ms(lambda: warm_item_texts(servable, guard, most))
                warm_ms, _ = _cpu_ms(lambda: request(warm_items))
                again_ms, _ = _cpu_ms(lambda: request(cold_items))
                rounds.append({"round": index, "first_request_cold_ms": round(cold_ms, 1),
                               "warm_up_ms": round(warm_up_ms, 1), "items_warmed": warmed,
                               "first_request_warmed_ms": round(warm_ms, 1),
                               "cold_items_again_ms": round(again_ms, 1)})
                print(json.dumps(rounds[-1]), flush=True)
    summary = {key: statistics.median(r[key] for r in rounds) for key in rounds[0] if key.endswith("_ms")}
    report = {**working_tree(), "machine": machine_facts(), "catalogue": len(servable.popular),
              "candidates": CANDIDATES, "warm_item_texts": most, "rounds": rounds, "medians": summary}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.page:
        args.page.write_text(_page(report, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
