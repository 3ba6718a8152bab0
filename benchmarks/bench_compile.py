"""Does `torch.compile` pay for GRec's training on CPU? (issue 25: "a compiled step where it pays on
CPU; measure it").

One dataset of the quality benchmark, its shipped GRec config, trained for a fixed number of epochs
(no early stop) by `jobs.train.local_fit.fit`, the loop the quality benchmark times, once on the
model as built and once on `torch.compile(model)` (inductor, default mode), the same seed. Per
epoch: training CPU seconds (`time.process_time`, one thread; the compiled run's first epoch holds
the compilation) and validation task-average AUC. Inductor keeps compiled kernels in its cache
directory: a second run of this script compiles faster than the first, so the page says which it is.

    .venv/bin/python benchmarks/bench_compile.py --dataset adult --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.quality_data import DATASETS, load  # noqa: E402
from jobs.train.local_fit import fit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="adult")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root", type=Path, default=Path(".grec/bench/data"),
                        help="where the prepared dataset is kept (shared with bench_quality.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load(args.dataset, args.data_root, REPO_ROOT)
    stopping = data.config.training.early_stopping
    config = data.config.with_overrides(training={"epochs": args.epochs, "early_stopping": {
        **stopping.model_dump(), "patience": args.epochs}})
    print(f"| {args.dataset}, GRec, one thread | epoch CPU s | later epochs, median | validation {stopping.metric} |")
    print("|---|---|---|---|")
    for kind in ("eager", "torch.compile"):
        model = data.build(data.model_config)
        result = fit(torch.compile(model) if kind == "torch.compile" else model, data.tables["train"],
                     data.tables["validation"], config)
        seconds = [record.cpu_seconds for record in result.history]
        metrics = [record.metrics[stopping.metric] for record in result.history]
        print(f"| {kind} | {', '.join(f'{s:.2f}' for s in seconds)} | {statistics.median(seconds[1:]):.2f} | "
              f"{', '.join(f'{m:.4f}' for m in metrics)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
