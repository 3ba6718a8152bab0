"""Prepared datasets at s3:// URIs, against a real S3-compatible server on loopback (moto): prepare
uploads through a staging prefix, readers get the files back, and an unusable location (no
credentials, no bucket, a non-empty target) fails before any work, naming the URI. (Training and
evaluation on s3:// data run in tests/test_cluster_multinode.py.)"""

from __future__ import annotations

import argparse

import pyarrow.fs as pafs
import pytest

from feature_store.errors import FeatureStoreError


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The server's AWS variables in this process, nothing else of AWS (no profile files)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def bucket(s3, request):
    name = "grec-" + request.node.name.replace("_", "-").lower()[:40].strip("-")
    return s3.create_bucket(name)


def _prepare(argv: list[str]) -> int:
    from jobs import data_cli

    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "prepare", *argv])
    return args.func(args)


def _keys(uri: str) -> list[str]:
    fs, path = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_prepare_publishes_a_dataset_that_reads_back(bucket, capsys, tmp_path, monkeypatch):
    from feature_store.prepare import open_prepared
    from feature_store.storage import cache_dir, fetch_dir, list_files, location_of, open_dataset

    monkeypatch.chdir(tmp_path)  # the cache of fetched files is under the working directory
    uri = f"{bucket}/datasets/ml-tiny"
    assert _prepare(["--dataset", "movielens-100k", "--out", uri, "--max-events", "300"]) == 0
    assert f"prepared movielens-100k in {uri}" in capsys.readouterr().out
    keys = _keys(uri)
    assert {"definition.json", "transforms.json", "dataset_spec.json", "summary.json"} <= set(keys)
    assert any(k.startswith("training_set/split=train/") and k.endswith(".parquet") for k in keys)
    assert _keys(bucket) == [f"datasets/ml-tiny/{k}" for k in keys]  # the staging prefix is gone
    train = list_files(uri, "training_set/split=train")
    assert train and all(f.startswith(f"{uri}/training_set/split=train/") for f in train)

    # Read where it is: the splits from the store, only the JSON files (and, once asked for, the
    # offline store) copied here.
    remote = open_dataset(uri)
    assert location_of(remote) == uri and remote.root == cache_dir(uri)
    assert remote.read_split("train").num_rows == remote.summary()["splits"]["train"]["rows"]
    assert sum(t.num_rows for t in remote.iter_split("test", batch_size=50)) == remote.summary()["splits"]["test"]["rows"]
    assert not (remote.root / "training_set").exists()
    events = remote.offline_store().read_view(remote.definition().events_name)
    local = open_prepared(fetch_dir(uri))
    assert local.read_split("train").equals(remote.read_split("train"))
    assert events.num_rows == local.offline_store().read_view(local.definition().events_name).num_rows > 0


def test_a_failed_upload_leaves_the_published_dataset_as_it_was(bucket, tmp_path, monkeypatch):
    from feature_store import storage

    uri = f"{bucket}/data"
    first = tmp_path / "first"
    first.mkdir()
    (first / "definition.json").write_text("{}")
    storage.publish_dir(first, uri)
    second = tmp_path / "second"
    (second / "training_set").mkdir(parents=True)
    (second / "transforms.json").write_text("{}")
    (second / "training_set" / "part-0.parquet").write_bytes(b"x")

    def upload_then_lose_the_connection(source, destination, **kwargs):
        fs = kwargs["destination_filesystem"]
        with fs.open_output_stream(f"{destination}/transforms.json") as out:  # one file gets there
            out.write(b"{}")
        raise OSError("connection reset by peer")

    monkeypatch.setattr(storage.pafs, "copy_files", upload_then_lose_the_connection)
    with pytest.raises(storage.StorageError, match=f"cannot upload to {uri}: connection reset by peer"):
        storage.publish_dir(second, uri, overwrite=True)
    assert _keys(uri) == ["definition.json"]
    assert _keys(bucket) == ["data/definition.json"]


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
