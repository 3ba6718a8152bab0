"""`grec config-reference`: print (or write) the configuration reference generated from the config
models' JSON schemas (docs/CONFIG.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config-reference", help="print the reference of every config key (type, default, meaning)",
        description="Generate the configuration reference (every key of the training and serving configs with "
                    "its type, default and meaning) from the pydantic models that validate them, as Markdown.",
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="write it to FILE (e.g. docs/CONFIG.md) instead of stdout")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from jobs.config.reference import reference_markdown

    page = reference_markdown()
    if args.out is None:
        print(page, end="")
    else:
        args.out.write_text(page)
        print(f"wrote {args.out}")
    return 0
