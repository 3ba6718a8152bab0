"""Bounded training reads, without Ray: the read plan comes from a split's first rows (decoded bytes
per row) and Parquet footers (the largest row group), sizes read batches to one block and each
task's memory request; the ingest's object-store budget is what the trainers hold plus a few blocks each; a split
whose tasks need more memory than any node has is refused with the numbers."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _split(root, rows_per_group: int, files: int = 2):
    folder = root / "training_set" / "split=train"
    folder.mkdir(parents=True)
    table = pa.table({"user": pa.array(range(20_000), pa.int64()), "score": pa.array([0.5] * 20_000, pa.float64())})
    for i in range(files):
        pq.write_table(table, folder / f"part-{i:05d}.parquet", row_group_size=rows_per_group)
    return root


def test_the_read_plan_comes_from_the_footers(tmp_path):
    from jobs.train.data import (
        BLOCK_BYTES,
        DATA_WORKER_BASE_BYTES,
        MEMORY_CHECK_HEADROOM,
        READ_AHEAD_BATCHES,
        ROW_GROUP_DECODE_FACTOR,
        TRANSFORM_BATCH_ROWS,
        TRANSFORM_PEAK_FACTOR,
        read_plan,
    )

    plan = read_plan(_split(tmp_path, rows_per_group=5_000), "train")
    assert plan.row_bytes == pytest.approx(16, abs=0.5)  # two 8-byte columns decoded (Parquet's sizes: ~10)
    assert plan.row_group_bytes == int(5_000 * plan.row_bytes)
    assert plan.batch_rows == int(BLOCK_BYTES / plan.row_bytes)
    peak = (DATA_WORKER_BASE_BYTES + ROW_GROUP_DECODE_FACTOR * plan.row_group_bytes
            + (READ_AHEAD_BATCHES + 1) * BLOCK_BYTES + TRANSFORM_PEAK_FACTOR * TRANSFORM_BATCH_ROWS * plan.row_bytes)
    assert plan.worker_peak_bytes == int(peak)
    # Ray Data warns when a task's peak plus 25% exceeds its declaration: both kinds of task declare more
    assert plan.task_memory >= MEMORY_CHECK_HEADROOM * peak
    assert plan.task_memory < MEMORY_CHECK_HEADROOM * peak + 1


def test_the_ingest_budget_is_what_the_trainers_hold_plus_blocks_in_flight():
    from jobs.train.data import BLOCK_BYTES, BLOCKS_IN_FLIGHT_PER_TRAINER, PREFETCH_BATCHES, ReadPlan, ingest_options

    options = ingest_options(2, batch_size=512, shuffle_buffer=4096, plan=ReadPlan(row_bytes=100, row_group_bytes=0))
    held = (4096 + (PREFETCH_BATCHES + 1) * 512) * 100
    assert options.resource_limits.object_store_memory == 2 * (held + BLOCKS_IN_FLIGHT_PER_TRAINER * BLOCK_BYTES)
    assert options.preserve_order  # resumed epochs see the order they saw


def test_a_split_whose_tasks_fit_no_node_is_refused_with_the_numbers():
    from jobs.train.config import ConfigError
    from jobs.train.data import ReadPlan
    from jobs.train.job import check_data_tasks_fit

    plans = {"train": ReadPlan(row_bytes=1_000, row_group_bytes=2 * 2**30)}
    check_data_tasks_fit(plans, 16 * 2**30, "the Ray cluster")
    with pytest.raises(ConfigError, match=r"the train split's read tasks need 8,\d\d\d MiB each \(row groups of up to "
                                          r"2,048 MiB decoded, 1,000 bytes a row\); the largest node of the Ray "
                                          r"cluster has 4,096 MiB"):
        check_data_tasks_fit(plans, 4 * 2**30, "the Ray cluster")


def test_the_splits_of_one_job_declare_the_largest_plan_s_memory():
    """The train and validation splits' tasks share worker processes, which keep what the largest
    row groups took: each declares the larger of the two plans' memory."""
    from jobs.train.data import ReadPlan, shared_task_memory

    train = ReadPlan(row_bytes=250, row_group_bytes=48 * 2**20)
    validation = ReadPlan(row_bytes=290, row_group_bytes=7 * 2**20)
    assert train.task_memory > validation.task_memory
    assert shared_task_memory([validation, train]) == train.task_memory
