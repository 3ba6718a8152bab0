"""The `grec` command. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules that expose `register(subparsers)`; each adds one command (or group) to `grec`.
COMMAND_MODULES: tuple[str, ...] = ("jobs.data_cli", "jobs.train_cli", "jobs.serve_cli", "jobs.eval_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grec",
        description=(
            "grec: one generalist multi-task recommender. Prepare data into the feature store, "
            "train with DeepSpeed on Ray, evaluate and promote in the MLflow registry, serve with "
            "Ray Serve."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Every command sets `func`; it returns a process exit code.
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
