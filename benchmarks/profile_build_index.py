"""Where `grec build-index`'s fitting task's memory goes: runs the task's work (jobs/retrieval/job.py's
`fit_stage_files`, which `grec build-index` runs in a Ray task) in this process, without Ray, with the
fit's phases wrapped, and prints per phase the RSS before it, its peak during it (sampled every
10 ms) and after it, and its wall seconds; then the process's peak RSS, which is the task's.

    .venv/bin/python benchmarks/profile_build_index.py --model models:/NAME@ALIAS --data DIR [options] [--out DIR]
    # a model to profile with, without Ray: bench_scale.py's small model trained 30 steps in this process
    .venv/bin/python benchmarks/profile_build_index.py --register-model NAME --data DIR --tracking-uri URI

The options are `grec build-index`'s (--address and --require-integrity are not used). --out writes
the fitted stage's files to DIR; --same-as DIR2 then says whether the stage is the one in DIR2 (another
commit's): the catalogue, settings and blends, the popularity counts, the co-visitation matrix and
the next-item weights, each compared value by value (the built time and the seconds aside).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from profile_evaluate_driver import MB, PhaseRss

# (module, function or Class.method) of the fit's phases, looked up where the caller finds them.
PHASES = [
    ("registry.models", "load_registered"),
    *(("recommend.fit", name) for name in (
        "StageFitter.run", "read_interactions", "split_users", "latest_item_rows", "StageFitter._item_features",
        "_sequences", "_best_covisitation", "build_covisitations", "StageFitter._fit_next_item", "train_next_item",
        "StageFitter._fit_blends", "build_covisitation")),
]


def differences(directory: Path, other: Path) -> list[str]:
    """What differs between the stages saved in two directories (empty: none)."""
    import numpy as np

    from recommend.stage import RecommendationStage

    one, two = RecommendationStage.load(directory), RecommendationStage.load(other)
    found = []
    for name in ("item_ids", "popularity_window_days", "candidates_per_source", "blends"):
        if getattr(one, name) != getattr(two, name):
            found.append(name)
    meta = [{k: v for k, v in s.metadata.items() if k != "built_at"} for s in (one, two)]
    for m in meta:
        m.get("validation", {}).pop("seconds", None)
    if meta[0] != meta[1]:
        found.append("metadata")
    if one.popularity.first_day != two.popularity.first_day or (one.popularity.daily != two.popularity.daily).nnz:
        found.append("popularity")
    covisitations = [s.covisitation for s in (one, two)]
    if None in covisitations:
        same = covisitations[0] is covisitations[1]
    else:
        same = covisitations[0].config == covisitations[1].config and \
            (covisitations[0].matrix != covisitations[1].matrix).nnz == 0
    if not same:
        found.append("covisitation")
    models = [s.next_item for s in (one, two)]
    if None in models:
        same = models[0] is models[1]
    else:
        states = [m.state_dict() for m in models]
        same = states[0].keys() == states[1].keys() and all(
            np.array_equal(states[0][k].numpy(), states[1][k].numpy()) for k in states[0])
    if not same:
        found.append("next_item")
    return found


def register_model(name: str, data: str, tracking_uri: str) -> None:
    """A model of bench_scale.py's size (its train config's model) trained 30 steps in this process on
    the split's first 20,000 training rows, registered as NAME@challenger: the fit's memory does not
    depend on how well the ranker was trained."""
    import tempfile

    from bench_scale import train_config

    from feature_store.storage import open_dataset
    from grec import build_model
    from jobs.train.config import parse_config, resolve
    from jobs.train.in_process import train_steps
    from registry.models import register_model as register
    from registry.tracking import use_tracking_uri

    with tempfile.TemporaryDirectory() as storage:
        resolved = resolve(parse_config(train_config(Path(data), Path(storage))))
    prepared = open_dataset(data)
    rows = next(iter(prepared.iter_split("train", batch_size=20_000)))
    model = train_steps(build_model(resolved.model_config), prepared.transforms().transform(rows), steps=30,
                        batch_size=512, lr=1e-2, seed=0)
    with use_tracking_uri(tracking_uri):
        version = register(model, prepared.root, name, rows.slice(0, 3).to_pandas(), alias="challenger")
    print(f"registered {name} version {version.version} as challenger")


def main() -> None:
    profile = PhaseRss(live=True)
    threading.Thread(target=profile.sample_forever, daemon=True).start()
    from jobs.retrieval import cli
    from jobs.retrieval.job import fit_stage_files
    from registry.tracking import use_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the fitted stage's files here")
    parser.add_argument("--same-as", type=Path, help="compare the fitted stage with the one in this directory")
    parser.add_argument("--register-model", metavar="NAME", help="only register a model to profile with (alias "
                        "challenger) and stop")
    own, rest = parser.parse_known_args()
    if own.register_model:
        setup = argparse.ArgumentParser()
        setup.add_argument("--data", required=True)
        setup.add_argument("--tracking-uri", required=True)
        register_model(own.register_model, **vars(setup.parse_args(rest)))
        return
    commands = argparse.ArgumentParser(prog="grec").add_subparsers()
    cli.register(commands)
    args = commands.choices["build-index"].parse_args(rest)
    for module, name in PHASES:
        profile.wrap(module, name)

    started = time.perf_counter()
    with use_tracking_uri(args.tracking_uri) as tracking_uri:
        files, report = fit_stage_files(args.model, tracking_uri, args.data, cli.index_config(args))
    seconds = time.perf_counter() - started
    if own.out is not None:
        own.out.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (own.out / name).write_bytes(content)
    if own.same_as is not None:
        print(f"same stage as {own.same_as}: {differences(own.out, own.same_as) or 'yes'}")
    print(f"fit: {seconds:.1f} s; seconds per part {json.dumps(report['seconds'])}")
    print(f"validation: {json.dumps({t: round(b['ndcg'], 5) for t, b in report['blends'].items()})}")
    print(profile.table())
    print(f"fitting process peak RSS {profile.peak / MB:.0f} MB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
