"""Pieces that the serving benchmarks' pages share: the machine a run had and the answers a level got."""

from __future__ import annotations

import os
import platform


def machine_facts() -> dict[str, object]:
    """The machine of a run, taken at its end: platform, CPU count and load average."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}


def machine_line(machine: dict) -> str:
    """The page's "Machine:" sentence: the cores and how loaded they were when the run ended (these
    machines are shared, so the load says how far to trust absolute figures)."""
    load = ", ".join(f"{x:.1f}" for x in machine["load_average_at_end"])
    return f"Machine: {machine['cpus']} CPU cores, shared with other jobs (load average at the end: {load})."


def statuses_cell(statuses: dict[str, int]) -> str:
    """A level's answers as a table cell, e.g. "315 x 200, 285 x 503"."""
    return ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))
