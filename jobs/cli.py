"""The `grec` command. Each command group lives in its own module and registers itself here.

One error path: bad input (a ValueError, which every grec input error is, or an OSError such as a
missing file or a refused connection) ends every command with `grec CMD: error: MESSAGE` on stderr
and exit code 2, as argparse reports a bad option; anything else is a bug and keeps its traceback.

Logging: grec's own loggers write to stderr at `--log-level` (`-v`: DEBUG), before or after the
command's options. Libraries stay at WARNING: fbgemm_gpu (imported by torchrec) calls
`logging.basicConfig()` on import, so grec does not rely on the root logger.

`grec --help` is fast: command modules import torch, Ray, MLflow and pyarrow inside the functions
that run a command, never at registration.

Every command that loads a registered version takes `--require-integrity` (`add_require_integrity`):
for the command's run, $GREC_REQUIRE_INTEGRITY is 1, so the driver and the Ray workers it starts
refuse a version registered without a manifest of its files (registry/integrity.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

# Modules that expose `register(subparsers)`; each adds one command (or group) to `grec`.
COMMAND_MODULES: tuple[str, ...] = ("jobs.data_cli", "jobs.train_cli", "jobs.tune.cli", "jobs.retrieval_cli",
                                    "jobs.serve_cli", "jobs.eval_cli", "jobs.compact_cli", "jobs.registry_cli",
                                    "jobs.config_cli")
# The top-level packages whose loggers the command configures.
GREC_LOGGERS: tuple[str, ...] = ("grec", "feature_store", "jobs", "recommend", "registry", "serving")
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """A parser whose every (sub)command takes -v/--log-level, and which records the full name of
    the command that ran (`grec data prepare`) for its error messages."""

    def __init__(self, *args, top_level: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only the top level has a default: a subcommand's option, when given, overrides it.
        default = "INFO" if top_level else argparse.SUPPRESS
        self.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="DEBUG", default=default,
                          help="log at DEBUG level (same as --log-level DEBUG)")
        self.add_argument("--log-level", dest="log_level", type=str.upper, choices=LOG_LEVELS, default=default,
                          help="level of grec's log lines on stderr (default INFO)")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        # The innermost command returns first, so its name is the one kept.
        if getattr(namespace, "command_name", None) is None:
            namespace.command_name = self.prog
        return namespace, extras


def add_require_integrity(parser: argparse.ArgumentParser) -> None:
    """`--require-integrity`, for a command that loads registered versions (see the module docstring)."""
    parser.add_argument("--require-integrity", action="store_true",
                        help="refuse a model version (or retrieval index) registered without a manifest of its files' "
                             "sha256 instead of loading it unchecked with a warning (also $GREC_REQUIRE_INTEGRITY=1); "
                             "files that do not match their manifest are refused either way")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="grec", top_level=True,
        description=(
            "grec: one generalist multi-task recommender. Prepare data into the feature store, "
            "train with DeepSpeed on Ray, evaluate and promote in the MLflow registry, serve with "
            "Ray Serve. Default outputs go under .grec/ in the working directory."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


@contextmanager
def grec_logging(level: str) -> Iterator[None]:
    """grec's loggers write to stderr at `level` for the block, then are restored. They do not
    propagate: a root handler a library installed would print every line twice."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    loggers = [logging.getLogger(name) for name in GREC_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, (previous_level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(previous_level)
            logger.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with grec_logging(args.log_level):
        try:
            if getattr(args, "require_integrity", False):
                from registry.integrity import integrity_requirement

                with integrity_requirement(True):
                    return int(args.func(args) or 0)
            # Every command sets `func`; it returns a process exit code.
            return int(args.func(args) or 0)
        except (ValueError, OSError) as err:
            log.debug("the error below came from here", exc_info=True)
            print(f"{args.command_name}: error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{args.command_name}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
