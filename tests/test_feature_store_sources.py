"""Data sources: the original file formats read like the packaged Parquet copies, downloads are
kept only when they match their pinned SHA-256, every dataset prepares into the contract's
directory, the synthetic generator's label correlation."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from feature_store.errors import FeatureStoreError, UnknownDatasetError
from feature_store.prepare import open_prepared, prepare_dataset
from feature_store.sources import SOURCES, SourceOptions, SyntheticOptions, get_source
from feature_store.sources import adult, movielens, womens_clothing
from feature_store.sources import base
from feature_store.sources.base import ChecksumError, Download, download_files, read_widedeep_parquet
from feature_store.sources.movielens import GENRES

def views(source) -> dict[str, pa.Table]:
    return {name: pa.concat_tables(list(chunks)) for name, chunks in source.tables()}


def test_movielens_original_files_read_like_the_parquet_copy(tmp_path):
    ratings = read_widedeep_parquet("MovieLens100k_data.parquet.brotli", "ml", movielens.RATINGS).slice(0, 500).to_pandas()
    items = read_widedeep_parquet("MovieLens100k_items.parquet.brotli", "ml", movielens.ITEMS).to_pandas()
    users = read_widedeep_parquet("MovieLens100k_users.parquet.brotli", "ml", movielens.USERS).to_pandas()
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    ratings.to_csv(folder / "u.data", sep="\t", header=False, index=False)
    items["video_release_date"] = ""
    items[["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL", *GENRES]].to_csv(
        folder / "u.item", sep="|", header=False, index=False, encoding="latin-1")
    users.to_csv(folder / "u.user", sep="|", header=False, index=False)
    from_files = views(get_source("movielens-100k", SourceOptions(data_dir=tmp_path)))
    packaged = views(get_source("movielens-100k", SourceOptions(max_events=500)))
    for name in ("events", "users", "movies"):
        assert from_files[name].equals(packaged[name]), name
    movies = packaged["movies"].to_pylist()
    assert movies[0]["title"] == "Toy Story (1995)" and movies[0]["genres"] == ["Animation", "Children's", "Comedy"]
    assert movies[0]["release_year"] == 1995.0


def test_adult_original_files_read_like_the_parquet_copy(tmp_path):
    raw = read_widedeep_parquet("adult.parquet.brotli", "adult", adult.COLUMNS).slice(0, 40).to_pandas()
    lines = [", ".join(str(v) for v in row) for row in raw.itertuples(index=False)]
    (tmp_path / "adult.data").write_text("\n".join(lines[:30]) + "\n")
    test_lines = [line + "." for line in lines[30:]]  # adult.test ends labels with "."
    (tmp_path / "adult.test").write_text("|1x3 Cross validator\n" + "\n".join(test_lines) + "\n")
    from_files = views(get_source("adult", SourceOptions(data_dir=tmp_path)))
    packaged = views(get_source("adult", SourceOptions(max_events=40)))
    for name in ("events", "people"):
        assert from_files[name].equals(packaged[name]), name
    people = packaged["people"]
    assert all("?" not in people.column(n).to_pylist() for n in people.column_names)  # "?" is a null


def test_womens_clothing_csv_reads_like_the_parquet_copy(tmp_path):
    raw = read_widedeep_parquet(womens_clothing.PARQUET_COPY, "w", womens_clothing.COLUMNS).slice(0, 50)
    pacsv.write_csv(raw, tmp_path / "Womens Clothing E-Commerce Reviews.csv")
    from_files = views(get_source("womens-clothing", SourceOptions(data_dir=tmp_path)))
    packaged = views(get_source("womens-clothing", SourceOptions(max_events=50)))
    for name in ("events", "reviewers", "garments"):
        assert from_files[name].equals(packaged[name]), name


def test_missing_original_files_and_impossible_downloads_are_explained(tmp_path):
    with pytest.raises(FeatureStoreError, match=r"lacks \['u.data', 'u.item', 'u.user'\]"):
        views(get_source("movielens-100k", SourceOptions(data_dir=tmp_path)))
    with pytest.raises(FeatureStoreError, match="Kaggle"):
        views(get_source("womens-clothing", SourceOptions(download=True)))


def _serve(monkeypatch, files: dict[str, bytes]) -> None:
    """urlopen answers from `files` (by URL): no network in tests."""
    monkeypatch.setattr(base.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(files[url]))


def _zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def test_downloads_matching_their_pinned_digest_are_unpacked(tmp_path, monkeypatch):
    archive, plain = _zip({"ml-100k/u.data": "1\t2\t5\t0\n"}), b"a plain file\n"
    _serve(monkeypatch, {"https://example.test/ml.zip": archive, "https://example.test/adult.test": plain})
    download_files((Download("https://example.test/ml.zip", hashlib.sha256(archive).hexdigest(), unpack=True),
                    Download("https://example.test/adult.test", hashlib.sha256(plain).hexdigest())), tmp_path)
    assert (tmp_path / "ml-100k" / "u.data").read_text() == "1\t2\t5\t0\n"
    assert (tmp_path / "adult.test").read_bytes() == plain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adult.test", "ml-100k"]


def test_a_download_with_another_digest_is_refused_naming_file_and_digests(tmp_path, monkeypatch):
    good, tampered = _zip({"ml-100k/u.data": "1\t2\t5\t0\n"}), _zip({"ml-100k/u.data": "1\t2\t1\t0\n"})
    _serve(monkeypatch, {"https://example.test/ok.zip": good, "https://example.test/ml-100k.zip": tampered})
    pinned = hashlib.sha256(good).hexdigest()
    with pytest.raises(ChecksumError, match=rf"ml-100k\.zip \(from https://example\.test/ml-100k\.zip\): SHA-256 "
                                            rf"{hashlib.sha256(tampered).hexdigest()}, expected {pinned}"):
        download_files((Download("https://example.test/ok.zip", pinned, unpack=True),
                        Download("https://example.test/ml-100k.zip", pinned, unpack=True)), tmp_path)
    assert list(tmp_path.iterdir()) == []  # not even the file that passed: all or nothing


def test_original_files_are_downloaded_once_into_the_download_folder(tmp_path, monkeypatch):
    archive = _zip({"ml-100k/u.data": "", "ml-100k/u.item": "", "ml-100k/u.user": ""})
    fetched = []
    monkeypatch.setattr(base.urllib.request, "urlopen",
                        lambda url, timeout: fetched.append(url) or io.BytesIO(archive))
    monkeypatch.setenv("GREC_DATA_DIR", str(tmp_path))
    source = get_source("movielens-100k", SourceOptions(download=True))
    download = Download("https://example.test/ml-100k.zip", hashlib.sha256(archive).hexdigest(), unpack=True)
    for _ in range(2):  # the second time the files are there: nothing is fetched
        found = source.original_files(("u.data", "u.item", "u.user"), (download,), "movielens-100k")
    assert found["u.data"] == tmp_path / "movielens-100k" / "ml-100k" / "u.data" and len(fetched) == 1


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(UnknownDatasetError, match="known datasets: adult, movielens-100k, movielens-100k-genres, synthetic, womens-clothing"):
        get_source("movielens-1m")


@pytest.mark.parametrize(("name", "max_events"), [("movielens-100k", 3000), ("womens-clothing", 800),
                                                  ("adult", 800), ("synthetic", 3000)])
def test_every_dataset_prepares_into_the_contract_directory(tmp_path, name, max_events):
    options = SourceOptions(max_events=max_events, sequence_length=5,
                            synthetic=SyntheticOptions(num_events=max_events, num_items=200, num_tasks=3))
    prepared = prepare_dataset(name, tmp_path / name, options=options)
    prepared = open_prepared(prepared.root)
    for path in ("offline", "training_set/split=train", "training_set/split=validation", "training_set/split=test",
                 "transforms.json", "dataset_spec.json", "summary.json", "definition.json"):
        assert (prepared.root / path).exists(), path
    summary = prepared.summary()
    assert sum(s["rows"] for s in summary["splits"].values()) == max_events
    spec = prepared.spec()
    assert spec["name"] == name and spec["tasks"][0]["role"] == "main"
    train = prepared.read_split("train")
    assert train.schema == prepared.definition().training_schema()
    transformed = prepared.transforms().transform(train)
    for entry in spec["categorical"]:
        ids = transformed.column(entry["name"])
        flat = ids.combine_chunks().flatten() if entry["multi_hot"] else ids
        assert 0 <= min(flat.to_pylist(), default=0) and max(flat.to_pylist(), default=0) < entry["vocab_size"]
    for task in spec["tasks"]:
        assert task["label"] in transformed.column_names
    assert json.loads((prepared.root / "dataset_spec.json").read_text()) == spec


def test_prepare_refuses_to_overwrite_without_permission(tmp_path):
    options = SourceOptions(synthetic=SyntheticOptions(num_events=500, num_items=50))
    prepare_dataset("synthetic", tmp_path / "d", options=options)
    with pytest.raises(FeatureStoreError, match="not empty"):
        prepare_dataset("synthetic", tmp_path / "d", options=options)
    prepare_dataset("synthetic", tmp_path / "d", options=options, overwrite=True)


def synthetic_labels(rho: float, seed: int = 0) -> np.ndarray:
    options = SourceOptions(seed=seed, synthetic=SyntheticOptions(num_events=20_000, num_items=500, num_tasks=3,
                                                                  task_correlation=rho, chunk_size=7_000))
    events = views(get_source("synthetic", options))["events"]
    return np.stack([events.column(f"label_task_{t}").to_numpy() for t in range(3)])


def test_synthetic_label_correlation_follows_the_knob():
    related, unrelated = synthetic_labels(0.9), synthetic_labels(0.0)
    assert np.corrcoef(related)[0, 1] > 0.6
    assert abs(np.corrcoef(unrelated)[0, 1]) < 0.1
    assert np.array_equal(synthetic_labels(0.9), related)  # a function of the seed
    assert not np.array_equal(synthetic_labels(0.9, seed=1), related)


def test_synthetic_chunks_cover_time_windows_out_of_order():
    options = SourceOptions(synthetic=SyntheticOptions(num_events=3000, num_items=50, chunk_size=1000))
    chunks = dict(get_source("synthetic", options).tables())["events"]
    times = [c.column("event_timestamp").cast(pa.int64()).to_numpy() for c in chunks]
    assert len(times) == 3 and all(a.max() < b.min() for a, b in zip(times, times[1:]))
    assert any((np.diff(t) < 0).any() for t in times)


def test_registry_names_match_sources():
    assert sorted(SOURCES) == ["adult", "movielens-100k", "movielens-100k-genres", "synthetic", "womens-clothing"]


def test_synthetic_supports_many_tasks():
    options = SourceOptions(synthetic=SyntheticOptions(num_events=500, num_items=20, num_tasks=12))
    source = get_source("synthetic", options)
    events = views(source)["events"]
    assert [t.name for t in source.definition().tasks][-1] == "task_11"
    assert all(0.0 < events.column(f"label_task_{t}").to_numpy().mean() < 1.0 for t in range(12))
