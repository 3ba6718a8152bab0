"""Where `grec evaluate`'s driver memory goes: runs `grec evaluate ARGS` in this process with the
driver's phases wrapped, and prints per phase the RSS before it, its peak during it (sampled every
10 ms) and after it, and its wall seconds; then the process's peak RSS.

    .venv/bin/python benchmarks/profile_evaluate_driver.py --model models:/NAME@ALIAS --data DIR [options]

The options are `grec evaluate`'s (without --address it starts a local Ray, whose processes are not
counted: only the driver's). Nested phases are indented under the phase that calls them.
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
import time
from dataclasses import dataclass

import psutil

# (module, function) of the driver's phases, looked up where the caller finds them.
PHASES = [
    *(("jobs.evaluate.job", name) for name in (
        "prepare_evaluation", "score_split", "train_activity", "_ranking_candidates", "_collect", "evaluate_scores",
        "replay_recommend", "evaluate_recommend", "write_report", "log_evaluation")),
    *(("jobs.evaluate.recommend", name) for name in (
        "read_interactions", "_tuned_peers", "_item_rows_before", "first_rows", "summarize")),
]
SAMPLE_SECONDS = 0.01
MB = 1e6


@dataclass
class Phase:
    name: str
    depth: int
    before: int
    peak: int
    after: int = 0
    seconds: float = 0.0


class PhaseRss:
    """Wraps functions so that each call is a Phase; a thread raises the peaks of the open ones."""

    def __init__(self, live: bool = False) -> None:
        self.live = live  # print each phase as it ends (a long run's figures so far)
        self.process = psutil.Process()
        self.open: list[Phase] = []
        self.done: list[Phase] = []
        self.peak = 0

    def sample_forever(self) -> None:
        while True:
            rss = self.process.memory_info().rss
            self.peak = max(self.peak, rss)
            for phase in list(self.open):
                phase.peak = max(phase.peak, rss)
            time.sleep(SAMPLE_SECONDS)

    def wrap(self, module_name: str, name: str) -> None:
        """`name`: a function of the module, or `Class.method`."""
        owner = importlib.import_module(module_name)
        *path, name = name.split(".")
        for attribute in path:
            owner = getattr(owner, attribute)
        original = getattr(owner, name)

        @functools.wraps(original)
        def measured(*args, **kwargs):
            rss = self.process.memory_info().rss
            phase = Phase(name, len(self.open), rss, rss)
            self.open.append(phase)
            self.done.append(phase)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.open.remove(phase)
                phase.after = self.process.memory_info().rss
                phase.peak = max(phase.peak, phase.after)
                phase.seconds = time.perf_counter() - started
                if self.live:
                    print(self.line(phase), flush=True)

        setattr(owner, name, measured)

    @staticmethod
    def line(p: Phase) -> str:
        return (f"{'  ' * p.depth + p.name:40s} {p.before / MB:10.0f} {p.peak / MB:10.0f} {p.after / MB:10.0f} "
                f"{p.seconds:7.1f}")

    def table(self) -> str:
        lines = [f"{'phase':40s} {'before MB':>10s} {'peak MB':>10s} {'after MB':>10s} {'s':>7s}"]
        lines += [self.line(p) for p in self.done]
        lines.append(f"driver peak RSS {self.peak / MB:.0f} MB")
        return "\n".join(lines)


def main() -> None:
    profile = PhaseRss()
    threading.Thread(target=profile.sample_forever, daemon=True).start()
    for module, name in PHASES:
        profile.wrap(module, name)
    from jobs.cli import main as grec_main

    started = time.perf_counter()
    code = grec_main(["evaluate", *sys.argv[1:]])
    print(f"grec evaluate: exit {code}, {time.perf_counter() - started:.1f} s\n{profile.table()}")


if __name__ == "__main__":
    main()
