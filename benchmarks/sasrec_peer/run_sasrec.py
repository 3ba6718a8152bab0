"""SASRec from rectools as a top-N peer for grec's recommendation benchmark.

Runs in the separate venv that setup_venv.sh beside this file creates (rectools pins numpy<2, grec
needs numpy 2); it never imports grec. The benchmark exports its split as one Parquet file:

    user_id string, item_id string, time_s float64, split int8 (0 train, 1 validation, 2 test),
    order int64 (the protocol's global event order; within a user, time order with ties broken)

1. Tuning: `--trials` settings drawn (seeded by the first of `--seeds`) from GRID are each fitted on
   the split-0 events; every user with split-1 events gets a top-10 list over the items they have
   not seen in split 0, scored by NDCG@10 against their split-1 items. The best setting wins.
2. Final: for each of `--seeds`, the best setting is fitted on split<=1 events, and every user with
   split-2 events gets the top-`--k` items they have not seen in split<=1.

rectools orders each user's sequence by a datetime column (stable sort): it is given `order` as
seconds, so the sequence is exactly the protocol's order, ties included. A user whose history has no
item the model knows (no history at all, or only items outside every training window) gets the fit
events' most popular unseen items instead; result.json counts them.

Outputs in `--out`: lists_seed{S}.parquet (user_id, rank 1-based, item_id) and result.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

# Before torch is imported: its intra-op pool and OpenMP read these once.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytorch_lightning  # noqa: E402
import rectools  # noqa: E402
import torch  # noqa: E402
from rectools import Columns  # noqa: E402
from rectools.dataset import Dataset  # noqa: E402
from rectools.models import SASRecModel  # noqa: E402
from rectools.models.nn.item_net import IdEmbeddingsItemNet  # noqa: E402

PROG = "run_sasrec.py"
TUNE_K = 10
SCHEMA = {
    "user_id": pa.types.is_string,
    "item_id": pa.types.is_string,
    "time_s": pa.types.is_float64,
    "split": pa.types.is_int8,
    "order": pa.types.is_int64,
}
EXPECTED = {"user_id": "string", "item_id": "string", "time_s": "double", "split": "int8", "order": "int64"}

# The search space, sized for the CPU budget: one fit of 64 factors, 2 blocks, 50 positions costs about
# 3 s of CPU per epoch on MovieLens-100K with one thread (rectools trains one sequence per user per
# epoch: 8 batches), roughly proportional to the sequence length; 128 factors, 3 blocks and 200
# positions cost 26 s. Twelve trials from this grid take about 25 minutes of CPU there.
GRID: dict[str, list[Any]] = {
    "n_factors": [32, 64],
    "n_blocks": [1, 2],
    "dropout_rate": [0.1, 0.2, 0.3, 0.5],
    "epochs": [20, 30, 40],
    "lr": [1e-3, 2e-3, 5e-3],
    "session_max_len": [50, 100],
}
# Held fixed: full softmax over the catalogue (it fits: ~1,700 items on MovieLens-100K), rectools'
# defaults for the rest, item ids as the only item features.
FIXED: dict[str, Any] = {"n_heads": 2, "loss": "softmax", "batch_size": 128, "train_min_user_interactions": 2}


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def read_interactions(path: Path) -> pd.DataFrame:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        fail(f"{path}: cannot read as Parquet ({exc})")
    for name, is_type in SCHEMA.items():
        if name not in schema.names:
            fail(f"{path}: missing column '{name}' (expected {EXPECTED[name]}; found {schema.names})")
        if not is_type(schema.field(name).type):
            fail(f"{path}: column '{name}' must be {EXPECTED[name]}, found {schema.field(name).type}")
    events = pq.read_table(path, columns=list(SCHEMA)).to_pandas()
    for name in SCHEMA:
        if events[name].isna().any():
            fail(f"{path}: column '{name}' has nulls")
    bad = sorted(set(events["split"].unique()) - {0, 1, 2})
    if bad:
        fail(f"{path}: column 'split' must hold 0, 1 or 2, found {bad}")
    if events["order"].duplicated().any():
        fail(f"{path}: column 'order' must be unique per event")
    if not (events["split"] == 0).any() or not (events["split"] == 1).any() or not (events["split"] == 2).any():
        fail(f"{path}: every split (0, 1, 2) needs at least one event")
    return events.sort_values("order", kind="stable").reset_index(drop=True)


def cpu_trainer(epochs: int) -> pytorch_lightning.Trainer:
    """rectools' default trainer, pinned to the CPU (a GPU, where present, would change the figures)."""
    return pytorch_lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        min_epochs=epochs,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )


def make_model(settings: dict[str, Any]) -> SASRecModel:
    return SASRecModel(
        **FIXED,
        n_factors=settings["n_factors"],
        n_blocks=settings["n_blocks"],
        dropout_rate=settings["dropout_rate"],
        session_max_len=settings["session_max_len"],
        lr=settings["lr"],
        item_net_block_types=(IdEmbeddingsItemNet,),
        get_trainer_func=cpu_trainer,
        get_trainer_func_kwargs={"epochs": settings["epochs"]},
        recommend_torch_device="cpu",
    )


def to_dataset(events: pd.DataFrame) -> Dataset:
    frame = pd.DataFrame(
        {
            Columns.User: events["user_id"].to_numpy(),
            Columns.Item: events["item_id"].to_numpy(),
            Columns.Weight: 1.0,
            # The protocol's order as seconds: rectools' stable sort by datetime then keeps it exactly.
            Columns.Datetime: pd.to_datetime(events["order"].to_numpy(), unit="s"),
        }
    )
    return Dataset.construct(frame)


def fit(settings: dict[str, Any], seed: int, history: pd.DataFrame) -> tuple[SASRecModel, Dataset, float, float]:
    """Fitted model, its dataset, and the fit's CPU and wall seconds."""
    dataset = to_dataset(history)
    pytorch_lightning.seed_everything(seed, workers=True, verbose=False)
    model = make_model(settings)
    cpu, wall = time.process_time(), time.perf_counter()
    model.fit(dataset)
    return model, dataset, time.process_time() - cpu, time.perf_counter() - wall


def recommend(
    model: SASRecModel, dataset: Dataset, history: pd.DataFrame, users: np.ndarray, k: int
) -> tuple[dict[str, list[str]], int]:
    """Top-k unseen items per user, and how many users got the popularity fallback."""
    recos = model.recommend(users=users, dataset=dataset, k=k, filter_viewed=True, on_unsupported_targets="ignore")
    recos = recos.sort_values([Columns.User, Columns.Rank], kind="stable")
    lists = {str(u): list(group[Columns.Item]) for u, group in recos.groupby(Columns.User, sort=False)}
    missing = [u for u in users if u not in lists]
    if missing:
        popular = history["item_id"].value_counts(sort=False).sort_values(ascending=False, kind="stable").index
        seen = history.groupby("user_id")["item_id"].agg(set)
        for user in missing:
            exclude = seen.get(user, set())
            lists[user] = list(itertools.islice((i for i in popular if i not in exclude), k))
    return lists, len(missing)


def ndcg(ranked: list[str], truth: set[str], n: int) -> float:
    dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(ranked[:n]) if item in truth)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(n, len(truth))))
    return dcg / ideal


def draw_settings(n_trials: int, seed: int) -> list[dict[str, Any]]:
    names = list(GRID)
    combos = list(itertools.product(*(GRID[name] for name in names)))
    if n_trials > len(combos):
        fail(f"--trials {n_trials} is more than the grid's {len(combos)} settings")
    picked = np.random.default_rng(seed).choice(len(combos), size=n_trials, replace=False)
    return [dict(zip(names, combos[i])) for i in picked]


def write_atomic(path: Path, write: Any) -> None:
    """write(tmp_path) into a file beside `path`, renamed over it only once complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def lists_table(lists: dict[str, list[str]]) -> pa.Table:
    users = sorted(lists)
    return pa.table(
        {
            "user_id": pa.array([u for u in users for _ in lists[u]], pa.string()),
            "rank": pa.array([r for u in users for r in range(1, len(lists[u]) + 1)], pa.int32()),
            "item_id": pa.array([i for u in users for i in lists[u]], pa.string()),
        }
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", type=Path, required=True, help="Parquet file (see the module doc)")
    parser.add_argument("--out", type=Path, required=True, help="folder for lists_seed{S}.parquet and result.json")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.k < 1 or args.threads < 1:
        fail("--trials, --k and --threads must be at least 1")
    if len(set(args.seeds)) != len(args.seeds):
        fail(f"--seeds must be distinct, got {args.seeds}")
    return args


def quiet_libraries() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Lightning's advice about dataloader workers and the like; nothing here acts on it.
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    # rectools 0.19 with pandas 2.3 and pydantic 2.14: a deprecation inside rectools, and its config
    # serializer not knowing the item net tuple; neither changes what is fitted.
    warnings.filterwarnings("ignore", category=FutureWarning, module="rectools")
    warnings.filterwarnings("ignore", message="Pydantic serializer warnings", category=UserWarning)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    if not args.interactions.is_file():
        fail(f"{args.interactions}: no such file")
    events = read_interactions(args.interactions)
    tuning_seed = args.seeds[0]
    candidates = draw_settings(args.trials, tuning_seed)
    args.out.mkdir(parents=True, exist_ok=True)

    train = events[events["split"] == 0]
    validation = events[events["split"] == 1]
    val_truth = validation.groupby("user_id")["item_id"].agg(set)
    val_users = val_truth.index.to_numpy()
    trials = []
    for number, settings in enumerate(candidates):
        model, dataset, cpu_s, wall_s = fit(settings, tuning_seed, train)
        lists, fallback = recommend(model, dataset, train, val_users, TUNE_K)
        score = float(np.mean([ndcg(lists[u], val_truth[u], TUNE_K) for u in val_users]))
        trials.append(
            {
                "settings": settings,
                "validation_ndcg10": score,
                "fit_cpu_s": cpu_s,
                "fit_wall_s": wall_s,
                "popularity_fallback_users": fallback,
            }
        )
        print(f"trial {number + 1}/{args.trials}: {settings} validation NDCG@10 {score:.4f} (fit {cpu_s:.1f} s CPU)")
    best = max(trials, key=lambda t: t["validation_ndcg10"])["settings"]
    print(f"chosen: {best}")

    history = events[events["split"] <= 1]
    test_users = events.loc[events["split"] == 2, "user_id"].unique()
    finals = []
    for seed in args.seeds:
        model, dataset, cpu_s, wall_s = fit(best, seed, history)
        lists, fallback = recommend(model, dataset, history, test_users, args.k)
        name = f"lists_seed{seed}.parquet"
        write_atomic(args.out / name, lambda tmp, table=lists_table(lists): pq.write_table(table, tmp))
        finals.append(
            {
                "seed": seed,
                "fit_cpu_s": cpu_s,
                "fit_wall_s": wall_s,
                "users": len(test_users),
                "popularity_fallback_users": fallback,
                "lists": name,
            }
        )
        print(f"seed {seed}: fit {cpu_s:.1f} s CPU, {len(test_users)} users -> {name}")

    result = {
        "library": "rectools",
        "library_version": rectools.__version__,
        "torch_version": torch.__version__,
        "model": "SASRecModel",
        "torch_threads": args.threads,
        "fixed_settings": FIXED,
        "grid": GRID,
        "tuning": {
            "seed": tuning_seed,
            "metric": f"NDCG@{TUNE_K}",
            "validation_users": len(val_users),
            "trials": trials,
        },
        "chosen_settings": best,
        "final": {"k": args.k, "seeds": finals},
        "wall_s": time.perf_counter() - wall_start,
    }
    text = json.dumps(result, indent=2) + "\n"
    write_atomic(args.out / "result.json", lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {args.out / 'result.json'}")


if __name__ == "__main__":
    main()
