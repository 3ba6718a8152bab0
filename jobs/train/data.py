"""The data pipeline: the prepared training set's Parquet streamed through Ray Data, transformed
on the way (feature_store transforms in Ray Data tasks), collated into model batches in the worker.
Nothing loads a split whole: Ray Data reads, transforms and hands over blocks as training consumes them.
The training set is read where it is, a local directory or an s3:// URI (each node reads the store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
from ray.data.collate_fn import ArrowBatchCollateFn

from feature_store.storage import parquet_dataset, split_files
from feature_store.transforms import TransformSet

# Share of a CPU each Ray Data read/transform task asks for: the training workers hold most CPUs,
# and the pipeline must still be schedulable beside them on a small machine.
DATA_TASK_CPUS = 0.25
# CPUs the cluster must have beyond the training workers' for the pipeline. Measured: with only one
# task's worth (0.25) left, Ray Data splits that budget between its operators and never launches a task.
DATA_PIPELINE_CPUS = 1.0
# Rows each transform call handles. Each result is a block the trainers can take at once, so the first
# batches of an epoch arrive after one chunk is read and transformed, not after a whole file.
TRANSFORM_BATCH_ROWS = 4096


def split_dataset(location: str | Path, split: str) -> pads.Dataset:
    """A pyarrow dataset over one split's files, for footers and samples read on the driver."""
    return parquet_dataset(split_files(location, split))


def _apply_transforms(table: pa.Table, transforms: TransformSet) -> pa.Table:
    return transforms.transform(table)


def transformed_split(location: str | Path, split: str, transforms: TransformSet):
    """A lazy Ray Dataset of the split's transformed columns (CONTRACTS.md section 2)."""
    import ray.data

    # partitioning=None: the `split=` folder is not a column the transforms should see.
    raw = ray.data.read_parquet(split_files(location, split), partitioning=None, num_cpus=DATA_TASK_CPUS)
    dataset = raw.map_batches(_apply_transforms, fn_kwargs={"transforms": transforms}, batch_format="pyarrow",
                              batch_size=TRANSFORM_BATCH_ROWS, num_cpus=DATA_TASK_CPUS)
    # Ray Data's plan lines at the start of every epoch's stream buried the job's progress lines
    # (this dataset's context is its own copy: nothing else changes).
    dataset.context.print_on_execution_start = False
    return dataset


class ModelCollate(ArrowBatchCollateFn):
    """Arrow batch -> the model's Batch (runs in the training worker, off the training thread)."""

    def __init__(self, collate: Callable[[pa.Table], Any]) -> None:
        self.collate = collate

    def __call__(self, batch: pa.Table) -> Any:
        return self.collate(batch)


def iter_model_batches(shard: Any, collate: Callable[[pa.Table], Any], batch_size: int, *,
                       shuffle_buffer: int = 0, seed: int | None = None) -> Iterator[Any]:
    """Model batches from a worker's dataset shard; `shuffle_buffer` rows are shuffled locally with
    `seed` (the same seed gives the same order: a resumed epoch sees the batches it saw before)."""
    return shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=ModelCollate(collate), drop_last=False,
        local_shuffle_buffer_size=shuffle_buffer or None, local_shuffle_seed=seed if shuffle_buffer else None,
    )


class InputWait:
    """Seconds a consumer spent waiting for the next item: the share of a training epoch the model
    sat idle for input (fetching and collating batches). Near zero, training is compute bound."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def iterate(self, items: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(items)
        while True:
            started = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - started
            yield item


class EpochStream:
    """A dataset shard's model batches, epoch after epoch, with the next epoch's stream started
    early. Starting an epoch's stream costs 1-2 s before its first batch (Ray Data plans the
    execution and schedules read and transform tasks); `start_early(epoch)` pays that in a
    background thread while the trainer validates, and `batches(epoch)` continues from there.
    Each epoch's order is fixed by `seed_of(epoch)`, started early or not."""

    _END = object()

    def __init__(self, shard: Any, collate: Callable[[pa.Table], Any], batch_size: int, *, shuffle_buffer: int,
                 seed_of: Callable[[int], int]) -> None:
        self.shard, self.collate, self.batch_size = shard, collate, batch_size
        self.shuffle_buffer, self.seed_of = shuffle_buffer, seed_of
        self._early: tuple[int, threading.Thread, dict[str, Any]] | None = None

    def _open(self, epoch: int) -> tuple[Iterator[Any], Any]:
        iterator = iter(iter_model_batches(self.shard, self.collate, self.batch_size,
                                           shuffle_buffer=self.shuffle_buffer, seed=self.seed_of(epoch)))
        return iterator, next(iterator, self._END)

    def start_early(self, epoch: int) -> None:
        """Opens `epoch`'s stream up to its first batch in the background (once per epoch)."""
        if self._early is not None:
            return
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["opened"] = self._open(epoch)
            except BaseException as error:  # re-raised by batches(), in the training thread
                outcome["error"] = error

        # A daemon thread: a run that stops early (early stopping) must not wait for this stream at exit.
        thread = threading.Thread(target=run, name=f"epoch-{epoch}-stream", daemon=True)
        thread.start()
        self._early = (epoch, thread, outcome)

    def batches(self, epoch: int) -> Iterator[Any]:
        early, self._early = self._early, None
        if early is not None and early[0] == epoch:
            _, thread, outcome = early
            thread.join()
            if "error" in outcome:
                raise outcome["error"]
            iterator, first = outcome["opened"]
        else:
            iterator, first = self._open(epoch)
        if first is self._END:
            return
        yield first
        yield from iterator
