"""The data pipeline: the prepared training set's Parquet streamed through Ray Data, transformed
on the way (feature_store transforms in Ray Data tasks), collated into model batches in the worker.
Nothing loads a split whole: Ray Data reads, transforms and hands over blocks as training consumes them.
The training set is read where it is, a local directory or an s3:// URI (each node reads the store).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
# Bounded reads. Ray Data reads a Parquet file per task, in batches sized to its target block (128 MiB)
# with 8 read ahead: on 200k-row files each read task held ~750 MiB while asking Ray for none, and the
# reads outran the trainers into spilling. Here a read batch is BLOCK_BYTES of rows, READ_AHEAD_BATCHES
# are read ahead, and every task asks for the memory that takes (ReadPlan).
BLOCK_BYTES = 16 * 2**20
READ_AHEAD_BATCHES = 2
# A Ray Data worker's own memory before it holds any data (Python, pyarrow, Ray Data, grec's transforms),
# which Ray's memory check counts as the task's. Measured (Ray 2.60, rss - shared as Ray Data counts it):
# about 390 MiB in a fresh worker that read 7 MiB row groups, but a worker that runs task after task
# for a whole epoch keeps more (heap and Arrow's pool): a transform worker of a 3M-event training
# epoch on the benchmark's cluster peaked at 583.5 MiB where 384 MiB here estimated 576 MiB.
DATA_WORKER_BASE_BYTES = 448 * 2**20
# Decoding a row group takes a multiple of its decoded size (Parquet pages, dictionaries and the decoded
# columns at once). Measured: one 197k-row row group of the synthetic training set (47 MiB decoded)
# raised a process's RSS by 144 MiB; read tasks of the 3M-event synthetic train split (48 MiB row
# groups) peaked at 539 MiB, those of its validation split (7 MiB row groups) at 414 MiB.
ROW_GROUP_DECODE_FACTOR = 3
# A transform's peak over its input batch: the input, the output and one intermediate column set.
TRANSFORM_PEAK_FACTOR = 3
# Ray Data's memory check warns about an operator whose tasks' peak, plus 25%, exceeds what they
# declare ("used up to ... memory per worker"): tasks declare their estimated peak times this.
MEMORY_CHECK_HEADROOM = 1.25
# Files whose footers size the reads: a split's files come from one writer, with one row-group size.
FOOTERS_SAMPLED = 4
SAMPLE_ROWS = 1024
# Batches each trainer's iterator fetches ahead of the step (Ray Data's default is 1): the next batch
# is ready when a step ends, and no more than that waits in the object store.
PREFETCH_BATCHES = 2
# Blocks the pipeline may hold per trainer beyond the trainer's own buffers (one being transformed,
# one in transfer): the object-store budget of the ingest (ingest_options).
BLOCKS_IN_FLIGHT_PER_TRAINER = 4


def split_dataset(location: str | Path, split: str) -> pads.Dataset:
    """A pyarrow dataset over one split's files, for footers and samples read on the driver."""
    return parquet_dataset(split_files(location, split))


@dataclass(frozen=True)
class ReadPlan:
    """How a split is read in bounded pieces, from its Parquet footers: rows of `row_bytes` each
    (decoded), row groups of at most `row_group_bytes`."""

    row_bytes: float
    row_group_bytes: int

    @property
    def batch_rows(self) -> int:
        """Rows per read batch (one block of BLOCK_BYTES)."""
        return max(TRANSFORM_BATCH_ROWS, int(BLOCK_BYTES / max(self.row_bytes, 1.0)))

    @property
    def worker_peak_bytes(self) -> int:
        """What a Ray Data worker of this split holds at its peak: its own memory, the row group being
        decoded, the batches read ahead of the one it yields and one transform's batch. Read and
        transform tasks run in the same worker processes one after the other, and a worker keeps
        freed memory for reuse (Arrow's pool, glibc's heap), so each task is charged with the largest
        of either: Ray counts the process's memory as the task's."""
        return int(DATA_WORKER_BASE_BYTES + ROW_GROUP_DECODE_FACTOR * self.row_group_bytes
                   + (READ_AHEAD_BATCHES + 1) * BLOCK_BYTES
                   + TRANSFORM_PEAK_FACTOR * TRANSFORM_BATCH_ROWS * self.row_bytes)

    @property
    def task_memory(self) -> int:
        """The memory each read and transform task declares: the worker's peak (`worker_peak_bytes`, the
        same for both), with the headroom of Ray's memory check."""
        return math.ceil(MEMORY_CHECK_HEADROOM * self.worker_peak_bytes)


def read_plan(location: str | Path, split: str) -> ReadPlan:
    """The ReadPlan of a split: bytes per row from the first SAMPLE_ROWS rows decoded (Parquet's own
    sizes are encoded: dictionaries and runs shrink them many times), row-group sizes from the footers
    of its first FOOTERS_SAMPLED files."""
    fragments = list(split_dataset(location, split).get_fragments())[:FOOTERS_SAMPLED]
    if not fragments:
        return ReadPlan(row_bytes=1.0, row_group_bytes=0)
    sample = next(iter(fragments[0].to_batches(batch_size=SAMPLE_ROWS)), None)
    row_bytes = sample.nbytes / sample.num_rows if sample is not None and sample.num_rows else 1.0
    group_rows = max(fragment.metadata.row_group(i).num_rows
                     for fragment in fragments for i in range(fragment.metadata.num_row_groups))
    return ReadPlan(row_bytes=row_bytes, row_group_bytes=int(group_rows * row_bytes))


def shared_task_memory(plans: Iterable[ReadPlan]) -> int:
    """The memory each data task of datasets read in one job declares: the largest of their plans'.
    Their tasks run in the same worker processes, and a worker that read the largest row groups keeps
    that memory for the next split's tasks (measured: a validation transform of the 3M-event synthetic
    set, 7 MiB row groups, used up to 477 MiB in workers that had read the train split's 48 MiB ones,
    against the 457 MiB its own plan then estimated)."""
    return max(plan.task_memory for plan in plans)


def ingest_options(num_trainers: int, batch_size: int, shuffle_buffer: int, plan: ReadPlan):
    """Ray Data's execution options for feeding `num_trainers` trainers: an object-store budget of what
    they hold (shuffle buffer, prefetched batches) plus a few blocks in flight each, so reads wait for
    the trainers instead of filling the object store and spilling; the order kept (resumable epochs)."""
    from ray.data import ExecutionOptions, ExecutionResources

    held_rows = shuffle_buffer + (PREFETCH_BATCHES + 1) * batch_size
    budget = num_trainers * (int(held_rows * plan.row_bytes) + BLOCKS_IN_FLIGHT_PER_TRAINER * BLOCK_BYTES)
    return ExecutionOptions(resource_limits=ExecutionResources(object_store_memory=budget), preserve_order=True)


def _apply_transforms(table: pa.Table, transforms: TransformSet) -> pa.Table:
    return transforms.transform(table)


def transformed_split(location: str | Path, split: str, transforms: TransformSet, plan: ReadPlan | None = None,
                      task_memory: int | None = None):
    """A lazy Ray Dataset of the split's transformed columns (CONTRACTS.md section 2), read in bounded
    blocks by tasks that declare their memory (`plan`, default: from the split's footers). `task_memory`:
    what each task declares, the plan's unless given (shared_task_memory, where the job's workers read
    other splits too)."""
    import ray.data

    plan = plan or read_plan(location, split)
    task_memory = task_memory or plan.task_memory
    # partitioning=None: the `split=` folder is not a column the transforms should see.
    # batch_size / batch_readahead go to pyarrow's scanner on Ray Data's first Parquet reader; its
    # second (datasource V2, the default of Ray 2.60) does not pass them on: its batches follow the
    # dataset's target block size (BLOCK_BYTES, set below) and it reads ahead by its own count. What
    # bounds a read task there is that it decodes one row group at a time and, with the order
    # preserved (ingest_options), reads its files one after another, not all at once.
    raw = ray.data.read_parquet(split_files(location, split), partitioning=None, num_cpus=DATA_TASK_CPUS,
                                memory=task_memory, batch_size=plan.batch_rows,
                                batch_readahead=READ_AHEAD_BATCHES)
    dataset = raw.map_batches(_apply_transforms, fn_kwargs={"transforms": transforms}, batch_format="pyarrow",
                              batch_size=TRANSFORM_BATCH_ROWS, num_cpus=DATA_TASK_CPUS,
                              memory=task_memory)
    # Blocks of BLOCK_BYTES at most wherever Ray Data makes them (this dataset's context is its own copy).
    dataset.context.target_max_block_size = BLOCK_BYTES
    # Ray Data's plan lines at the start of every epoch's stream buried the job's progress lines.
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
        batch_size=batch_size, collate_fn=ModelCollate(collate), drop_last=False, prefetch_batches=PREFETCH_BATCHES,
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
