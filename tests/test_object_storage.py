"""Prepared datasets at s3:// URIs, against a real S3-compatible server on loopback (moto): prepare
publishes a new version and then switches the pointer, readers follow the pointer, a failure at any
point of a publish leaves the dataset readers see as it was, and an unusable location (no
credentials, no bucket, a non-empty target) fails before any work, naming the URI. (Training and
evaluation on s3:// data run in tests/test_cluster_multinode.py.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from feature_store.errors import FeatureStoreError


@pytest.fixture
def bucket(s3, request):
    name = "grec-" + request.node.name.replace("_", "-").lower()[:40].strip("-")
    return s3.create_bucket(name)


def _prepare(argv: list[str]) -> int:
    from jobs.data import cli as data_cli

    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "prepare", *argv])
    return args.func(args)


def _keys(uri: str) -> list[str]:
    fs, path = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


def _pointer(uri: str) -> str:
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(f"{path}/current.json") as stream:
        return json.loads(stream.read())["version"]


def test_prepare_publishes_a_dataset_that_reads_back(bucket, capsys, tmp_path, monkeypatch):
    from feature_store.prepare import open_prepared
    from feature_store.storage import cache_dir, fetch_dir, list_files, location_of, open_dataset

    monkeypatch.chdir(tmp_path)  # the cache of fetched files is under the working directory
    uri = f"{bucket}/datasets/ml-tiny"
    assert _prepare(["--dataset", "movielens-100k", "--out", uri, "--max-events", "300"]) == 0
    assert f"prepared movielens-100k in {uri}" in capsys.readouterr().out
    version = _pointer(uri)
    keys = _keys(uri)
    assert keys[0] == "current.json" and all(k.startswith(f"versions/{version}/") for k in keys[1:])
    files = {k.removeprefix(f"versions/{version}/") for k in keys[1:]}
    assert {"definition.json", "transforms.json", "dataset_spec.json", "summary.json"} <= files
    assert any(k.startswith("training_set/split=train/") and k.endswith(".parquet") for k in files)
    assert _keys(bucket) == [f"datasets/ml-tiny/{k}" for k in keys]  # nothing written beside it
    version_uri = f"{uri}/versions/{version}"
    train = list_files(version_uri, "training_set/split=train")
    assert train and all(f.startswith(f"{version_uri}/training_set/split=train/") for f in train)

    # Read where it is: the splits from the store, only the JSON files (and, once asked for, the
    # offline store) copied here.
    remote = open_dataset(uri)
    assert location_of(remote) == version_uri and remote.root == cache_dir(uri)
    assert remote.read_split("train").num_rows == remote.summary()["splits"]["train"]["rows"]
    assert sum(t.num_rows for t in remote.iter_split("test", batch_size=50)) == remote.summary()["splits"]["test"]["rows"]
    assert not (remote.root / "training_set").exists()
    events = remote.offline_store().read_view(remote.definition().events_name)
    local = open_prepared(fetch_dir(uri))
    assert local.read_split("train").equals(remote.read_split("train"))
    assert events.num_rows == local.offline_store().read_view(local.definition().events_name).num_rows > 0


def _dataset(folder: Path, marker: int) -> Path:
    """A minimal dataset folder whose train split holds one row with `marker`, and metadata files."""
    (folder / "training_set" / "split=train").mkdir(parents=True)
    for part in range(4):
        pq.write_table(pa.table({"marker": [marker], "part": [part]}),
                       folder / "training_set" / "split=train" / f"part-{part}.parquet")
    for name in ("definition.json", "transforms.json", "dataset_spec.json", "summary.json"):
        (folder / name).write_text(json.dumps({"marker": marker}))
    return folder


def _markers(uri: str) -> set[int]:
    from feature_store.storage import check_dataset, parquet_dataset, split_files

    return set(parquet_dataset(split_files(check_dataset(uri), "train")).to_table()["marker"].to_pylist())


def test_readers_follow_the_pointer_and_a_reader_of_the_previous_version_can_finish(bucket, tmp_path):
    from feature_store import storage

    uri = f"{bucket}/data"
    storage.publish_dir(_dataset(tmp_path / "one", 1), uri)
    opened_before = storage.check_dataset(uri)  # a job that resolved the pointer before the next publish
    second = storage.publish_dir(_dataset(tmp_path / "two", 2), uri, overwrite=True)
    assert storage.check_dataset(uri) == second and _markers(uri) == {2}
    assert set(storage.parquet_dataset(storage.split_files(opened_before, "train")).to_table()["marker"].to_pylist()) == {1}
    third = storage.publish_dir(_dataset(tmp_path / "three", 3), uri, overwrite=True)
    assert _markers(uri) == {3}
    # the current and the previous version stay, older ones are removed
    kept = {k.split("/")[1] for k in _keys(uri) if k.startswith("versions/")}
    assert kept == {second.rsplit("/", 1)[1], third.rsplit("/", 1)[1]}


def _fail_half_way(monkeypatch, storage):
    """pyarrow's upload, failing (connection reset) after half of the files reached the store."""
    real_copy = storage.pafs.copy_files

    def copy_half_then_fail(source, destination, **kwargs):
        files = sorted(p for p in Path(source).rglob("*") if p.is_file())
        for path in files[:len(files) // 2]:
            relative = path.relative_to(source).as_posix()
            real_copy(str(path), f"{destination}/{relative}", **kwargs)
        raise OSError("connection reset by peer")

    monkeypatch.setattr(storage.pafs, "copy_files", copy_half_then_fail)


def test_a_publish_that_fails_half_way_leaves_the_published_dataset_readable(bucket, tmp_path, monkeypatch):
    from feature_store import storage

    uri = f"{bucket}/data"
    storage.publish_dir(_dataset(tmp_path / "one", 1), uri)
    before = (_pointer(uri), _keys(uri))
    upload = storage.pafs.copy_files
    _fail_half_way(monkeypatch, storage)
    with pytest.raises(storage.StorageError, match=f"cannot upload to {uri}: connection reset by peer .*unchanged"):
        storage.publish_dir(_dataset(tmp_path / "two", 2), uri, overwrite=True)
    assert (_pointer(uri), _keys(uri)) == before  # the half-written version is gone too
    assert _markers(uri) == {1}
    monkeypatch.setattr(storage.pafs, "copy_files", upload)  # the connection is back
    assert json.loads((storage.fetch_dir(uri) / "definition.json").read_text()) == {"marker": 1}


def test_a_publish_that_fails_at_the_switch_leaves_the_published_dataset_readable(bucket, tmp_path, monkeypatch):
    from feature_store import storage

    uri = f"{bucket}/data"
    storage.publish_dir(_dataset(tmp_path / "one", 1), uri)
    before = (_pointer(uri), _keys(uri))

    def lose_the_connection(*args):
        raise OSError("connection reset by peer")

    monkeypatch.setattr(storage, "_write_pointer", lose_the_connection)
    with pytest.raises(storage.StorageError, match=f"cannot upload to {uri}: connection reset by peer"):
        storage.publish_dir(_dataset(tmp_path / "two", 2), uri, overwrite=True)
    assert (_pointer(uri), _keys(uri)) == before
    assert _markers(uri) == {1}


def test_a_failed_first_publish_leaves_nothing(bucket, tmp_path, monkeypatch):
    from feature_store import storage

    _fail_half_way(monkeypatch, storage)
    with pytest.raises(storage.StorageError, match="connection reset by peer"):
        storage.publish_dir(_dataset(tmp_path / "one", 1), f"{bucket}/data")
    assert _keys(bucket) == []


def test_a_folder_written_without_a_pointer_is_read_in_place_and_replaced_whole(bucket, tmp_path):
    from feature_store import storage

    uri = f"{bucket}/data"
    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(_dataset(tmp_path / "old", 1)), path, destination_filesystem=fs)  # an older grec's layout
    assert storage.check_dataset(uri) == uri and _markers(uri) == {1}
    published = storage.publish_dir(_dataset(tmp_path / "new", 2), uri, overwrite=True)
    assert storage.check_dataset(uri) == published and _markers(uri) == {2}
    assert all(k == "current.json" or k.startswith("versions/") for k in _keys(uri))


def test_prepare_refuses_a_non_empty_target_before_any_work(bucket, tmp_path):
    from feature_store.storage import publish_dir

    uri = f"{bucket}/taken"
    (tmp_path / "x.json").write_text("{}")
    publish_dir(tmp_path, uri)
    with pytest.raises(FeatureStoreError, match=f"{uri} is not empty; pass --overwrite"):
        _prepare(["--dataset", "movielens-100k", "--out", uri, "--max-events", "300"])


def test_no_credentials_is_an_error_naming_the_uri(s3, monkeypatch):
    from feature_store.storage import check_dataset

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(FeatureStoreError, match=r"s3://grec-x/data: no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        check_dataset("s3://grec-x/data")
    with pytest.raises(FeatureStoreError, match=r"s3://grec-x/out: no S3 credentials found"):
        _prepare(["--dataset", "movielens-100k", "--out", "s3://grec-x/out"])


def test_a_missing_bucket_or_dataset_is_named(s3, bucket):
    from feature_store.storage import check_bucket, check_dataset

    with pytest.raises(FeatureStoreError, match="s3://grec-nobucket/x: bucket 'grec-nobucket' does not exist"):
        check_bucket("s3://grec-nobucket/x")
    with pytest.raises(FeatureStoreError, match=f"{bucket}/nothing is not a prepared dataset"):
        check_dataset(f"{bucket}/nothing")
    with pytest.raises(FeatureStoreError, match="unsupported storage scheme 'gs'"):
        check_dataset("gs://bucket/x")


def test_training_config_names_an_unusable_dataset_uri(s3, bucket, train_tiny_config, tmp_path, monkeypatch):
    from jobs.train import ConfigError
    from jobs.train.config import resolve

    config = train_tiny_config(f"{bucket}/absent", f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(ConfigError, match=f"dataset.path: {bucket}/absent is not a prepared dataset"):
        resolve(config)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match=f"dataset.path: {bucket}/absent: unusable S3 credentials: .*missing: "
                                          "AWS_SECRET_ACCESS_KEY"):
        resolve(config)
