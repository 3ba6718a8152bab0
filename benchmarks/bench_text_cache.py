"""Training throughput with a frozen NLP head: every distinct text encoded once (the text cache) against
re-encoding each row's text at every step (cache off, as per-row text was handled before), on
Women's Clothing Reviews (review title and text, the per-row text of that dataset) with the packaged
all-MiniLM-L6-v2.

A plain single-process loop (read -> transform -> collate -> step) over the same rows, one torch
thread, both variants in one run; samples per second per epoch. Epoch 1 fills the cache, so the
steady state is epoch 2 on.

    .venv/bin/python benchmarks/bench_text_cache.py [--rows 2048] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL = {"d_model": 32, "embedding_dim": 16, "num_heads": 2, "ffn_hidden": 64, "expert_hidden": 64,
         "tower_hidden": 16, "router": {"num_experts": 4, "top_k": 1}}
BATCH = 256


def run(prepared, rows: int, epochs: int, cache_size: int) -> list[float]:
    """Samples/s of each epoch with the given text cache size (0: no cache)."""
    import pyarrow as pa
    import torch

    from grec import GRecConfig, InputSpec, build_model

    spec = InputSpec.from_json(prepared.spec_path)
    config = GRecConfig.from_dict({**MODEL, "text": {"backbone": "minilm", "freeze": True, "cache_size": cache_size},
                                   "input": spec.to_dict()})
    model = build_model(config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    transforms = prepared.transforms()
    table = pa.concat_tables(list(prepared.iter_split("train", batch_size=BATCH))).slice(0, rows)
    rates = []
    for _ in range(epochs):
        started = time.process_time()
        for raw in table.to_batches(BATCH):
            batch = model.collate(transforms.transform(pa.Table.from_batches([raw])))
            loss, _ = model.loss(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rates.append(table.num_rows / (time.process_time() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048, help="training rows per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from feature_store.prepare import prepare_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_dataset("womens-clothing", Path(tmp) / "wc")
        results = {"cached": run(prepared, args.rows, args.epochs, 100_000),
                   "uncached": run(prepared, args.rows, args.epochs, 0)}
    print("| text cache | " + " | ".join(f"epoch {i + 1} samples/s" for i in range(args.epochs)) + " |")
    print("|---|" + "---|" * args.epochs)
    for name, rates in results.items():
        print(f"| {name} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")
    speedup = results["cached"][-1] / results["uncached"][-1]
    print(f"\nsteady state (epoch {args.epochs}): {speedup:.1f}x with the cache; {args.rows} rows, batch {BATCH}, "
          "1 thread, CPU time")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
