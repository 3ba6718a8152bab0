"""Writes that never leave a half-done state: build aside in a hidden sibling, then rename.

Names starting with "." are ignored by every reader of the feature store, so a staging folder that
a crash leaves behind is never mistaken for data.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def sibling(target: Path, tag: str) -> Path:
    """A hidden, unique path next to `target` (same file system, so a rename is atomic)."""
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex}"


def replace_dir(new: Path, target: Path) -> None:
    """Puts directory `new` at `target`. An existing `target` is moved aside first and deleted only
    once `new` is in place; if that rename fails, the old directory is put back."""
    old = None
    if target.exists():
        old = sibling(target, "old")
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomically(path: Path, data: Any) -> None:
    tmp = sibling(path, "tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_parquet_atomically(path: Path, batches: Iterable[Any], empty: str) -> int:
    """Streams `batches` (pyarrow tables or record batches, one schema) into Parquet at `path` through
    a hidden partial file renamed into place at the end; returns the rows written. No batch: raises
    ValueError(`empty`) and `path` is left as it was, as it is on any failure."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    writer, rows = None, 0
    try:
        for batch in batches:
            if writer is None:
                writer = pq.ParquetWriter(partial, batch.schema)
            writer.write_table(batch)
            rows += batch.num_rows
        if writer is None:
            raise ValueError(empty)
        writer.close()
        writer = None
        os.replace(partial, path)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return rows
