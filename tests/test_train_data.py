"""The training data stream: an epoch's batches are the same whether its stream was started early
(during the previous epoch's validation) or not, and errors reach the training thread."""

from __future__ import annotations

import pyarrow as pa
import pytest


def _stream(ray_local_dataset, collate):
    from jobs.train.data import EpochStream

    return EpochStream(ray_local_dataset.iterator(), collate, batch_size=8, shuffle_buffer=16,
                       seed_of=lambda epoch: 100 + epoch)


@pytest.fixture(scope="module")
def numbers(ray_local):
    import ray.data

    return ray.data.from_arrow(pa.table({"n": list(range(50))}))


def _ids(table: pa.Table) -> list[int]:
    return table.column("n").to_pylist()


def test_an_epoch_started_early_yields_the_batches_of_one_started_late(numbers):
    late = [_ids(b) for b in _stream(numbers, lambda t: t).batches(1)]
    early_stream = _stream(numbers, lambda t: t)
    early_stream.start_early(1)
    early = [_ids(b) for b in early_stream.batches(1)]
    assert early == late
    assert sorted(n for batch in late for n in batch) == list(range(50))
    assert late != [_ids(b) for b in _stream(numbers, lambda t: t).batches(2)]  # another epoch, another order


def test_an_error_in_the_early_stream_is_raised_in_the_training_thread(numbers):
    def broken(table: pa.Table):
        raise ValueError("column 'n': ids out of range")

    stream = _stream(numbers, broken)
    stream.start_early(1)
    with pytest.raises(ValueError, match="ids out of range"):
        list(stream.batches(1))
