"""A registered version is data: its files are checked against the manifest recorded at registration and
read with the installed grec; nothing from the artifact store is imported or executed (temp SQLite store)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import REPO_ROOT, flip_last_byte, registry_local_path
from mlflow import MlflowClient

from jobs.cli import main
from registry.integrity import REQUIRE_INTEGRITY_ENV, RefusedVersionError, sha256_of
from registry.layout import GREC_VERSION_TAG, LAYOUT_TAG, LAYOUT_VERSION, grec_version
from registry.models import MANIFEST_TAG, load_registered, register_model
from registry.retrieval_index import INDEX_MANIFEST_TAG, INDEX_TAG, fetch_retrieval_index, log_retrieval_index
from registry.tracking import use_tracking_uri

NAME = "integrity"


def _tiny_model(prepared):
    from grec import GRecConfig, InputSpec, RouterConfig, build_model

    config = GRecConfig(input=InputSpec.from_json(prepared.spec_path), d_model=16, embedding_dim=8, num_heads=2,
                        ffn_hidden=16, expert_hidden=16, tower_hidden=8, router=RouterConfig(num_experts=3, top_k=1))
    return build_model(config).eval()


def _version_dir(name: str, version: str) -> Path:
    return registry_local_path(MlflowClient().get_model_version_download_uri(name, version))


def _marker_code(marker: Path) -> str:
    """Python that leaves `marker` behind if anything ever runs it."""
    return f"open({str(marker)!r}, 'w').write('ran')\n"


def _assert_installed_grec() -> None:
    import grec

    assert Path(grec.__file__).resolve().is_relative_to(REPO_ROOT), grec.__file__
    assert not any("mlartifacts" in str(entry) for entry in sys.path)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One store for the module (each test registers versions of its own in it)."""
    with use_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}") as uri:
        yield uri


@pytest.fixture()
def version(registry, tiny_movielens):
    """A new version, untouched."""
    rows = tiny_movielens.read_split("validation").slice(0, 4).to_pandas()
    return str(register_model(_tiny_model(tiny_movielens), tiny_movielens.root, NAME, rows).version)


def test_registration_records_every_file_with_its_digest_and_the_layout(version):
    tags = MlflowClient().get_model_version(NAME, version).tags
    assert tags[LAYOUT_TAG] == str(LAYOUT_VERSION) and tags[GREC_VERSION_TAG] == grec_version() != "unknown"
    manifest = json.loads(tags[MANIFEST_TAG])
    files = _version_dir(NAME, version)
    on_disk = {p.relative_to(files).as_posix(): p for p in files.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == set(on_disk)
    assert {"MLmodel", "data/grec/model/model.safetensors", "data/grec/transforms.json"} <= set(on_disk)
    for name, path in on_disk.items():
        assert manifest["files"][name] == {"sha256": sha256_of(path), "size": path.stat().st_size}
    assert not [name for name in on_disk if name.endswith(".py")]  # the version holds no code


def test_an_untouched_version_loads_with_the_installed_grec(version, tiny_movielens, caplog):
    before = list(sys.path)
    with caplog.at_level(logging.WARNING, logger="registry"):
        loaded = load_registered(f"models:/{NAME}/{version}", require_integrity=True)
    assert not caplog.records and sys.path == before
    _assert_installed_grec()
    rows = tiny_movielens.read_split("validation").slice(0, 4)
    expected = loaded.model.predict(loaded.model.collate(tiny_movielens.transforms().transform(rows)))
    scores = loaded.predict(rows.to_pandas())
    assert list(scores.columns) == [f"score_{task}" for task in expected]
    assert loaded.definition.name == tiny_movielens.definition().name


@pytest.mark.parametrize(("tamper", "reason", "mentions"), [
    ("weights_same_size", "digest_mismatch", "data/grec/model/model.safetensors has sha256"),
    ("weights_truncated", "size_mismatch", "data/grec/model/model.safetensors is"),
    ("transforms_grown", "size_mismatch", "data/grec/transforms.json is"),
    ("definition_missing", "missing_file", "data/grec/definition.json is missing"),
    ("code_added", "unlisted_file", "is not in the manifest"),
])
def test_a_tampered_file_refuses_the_version_before_anything_is_read(version, tmp_path, tamper, reason, mentions):
    files = _version_dir(NAME, version)
    marker = tmp_path / "marker"
    weights = files / "data/grec/model/model.safetensors"
    expected = json.loads(MlflowClient().get_model_version(NAME, version).tags[MANIFEST_TAG])["files"]
    if tamper == "weights_same_size":
        flip_last_byte(weights)
    elif tamper == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:-16])
    elif tamper == "transforms_grown":
        (files / "data/grec/transforms.json").write_text((files / "data/grec/transforms.json").read_text() + " ")
    elif tamper == "definition_missing":
        (files / "data/grec/definition.json").unlink()
    else:  # code an MLflow loader would import (code/ goes first on sys.path) and a loader that runs it
        (files / "code/grec").mkdir(parents=True)
        (files / "code/grec/__init__.py").write_text(_marker_code(marker))
    with pytest.raises(RefusedVersionError, match=mentions) as refused:
        load_registered(f"models:/{NAME}/{version}")
    message = str(refused.value)
    assert refused.value.reason == reason and f"model {NAME} version {version}" in message
    if reason == "digest_mismatch":  # the file, the expected and the found digests
        path = "data/grec/model/model.safetensors"
        assert expected[path]["sha256"] in message and sha256_of(weights) in message
    assert not marker.exists()
    _assert_installed_grec()


def test_a_tampered_mlmodel_that_names_code_runs_nothing(version, tmp_path):
    """What an attacker would do so that a pyfunc loader runs their code: point MLmodel at a code file."""
    files = _version_dir(NAME, version)
    marker = tmp_path / "marker"
    (files / "python_model.py").write_text(_marker_code(marker))
    mlmodel = files / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("loader_module: registry.pyfunc_model",
                                                   "python_model: python_model.py"))
    with pytest.raises(RefusedVersionError, match="MLmodel"):
        load_registered(f"models:/{NAME}/{version}")
    assert not marker.exists()


def test_a_layout_this_grec_cannot_read_is_refused_naming_both_versions(version):
    MlflowClient().set_model_version_tag(NAME, version, LAYOUT_TAG, "99")
    MlflowClient().set_model_version_tag(NAME, version, GREC_VERSION_TAG, "9.0.0")
    with pytest.raises(RefusedVersionError, match=rf"saved with layout version 99 by grec 9\.0\.0; this grec "
                                                  rf"\({grec_version()}\) reads layout versions 1, 2") as refused:
        load_registered(f"models:/{NAME}/{version}")
    assert refused.value.reason == "unreadable_layout"


def test_a_fresh_process_loads_a_version_of_the_current_layout_with_the_installed_grec(version, registry):
    code = ("import sys, grec\n"
            "from registry.models import load_registered\n"
            "path, modules = list(sys.path), set(sys.modules)\n"
            f"loaded = load_registered('models:/{NAME}/{version}', require_integrity=True)\n"
            "import grec as after\n"
            "assert sys.path == path, 'sys.path changed'\n"
            "assert after is grec, 'grec was replaced'\n"
            "new = [m for m in set(sys.modules) - modules if getattr(sys.modules[m], '__file__', None) and "
            "'mlartifacts' in sys.modules[m].__file__]\n"
            "assert not new, new\n"
            "print(grec.__file__, loaded.version, type(loaded.model).__name__)\n")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": registry})
    assert completed.returncode == 0, completed.stderr
    grec_file, loaded_version, model_class = completed.stdout.split()
    assert Path(grec_file).resolve().is_relative_to(REPO_ROOT) and loaded_version == version and model_class == "GRec"


def test_mlflow_users_still_get_a_pyfunc_that_imports_the_installed_grec(version, tiny_movielens):
    rows = tiny_movielens.read_split("validation").slice(0, 4).to_pandas()
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    scored = pyfunc.predict(rows, params={"tasks": ["like"]})
    assert list(scored.columns) == ["score_like"]
    _assert_installed_grec()
    # MLflow's loader left its note of the registered name and version in the version's own folder
    # (a local store): grec still loads the version, every file it reads checked
    assert (_version_dir(NAME, version) / "registered_model_meta").is_file()
    load_registered(f"models:/{NAME}/{version}", require_integrity=True)


# ---- retrieval index -------------------------------------------------------------------------------------
def _index_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "index"
    (directory / "sub").mkdir(parents=True)
    (directory / "items.faiss").write_bytes(os.urandom(256))
    (directory / "items.json").write_text(json.dumps({"item_ids": [1, 2, 3]}))
    (directory / "sub/blend.json").write_text("{}")  # whatever a build writes is covered, nested too
    return directory


def test_the_retrieval_index_is_checked_file_by_file(version, tmp_path):
    uri = log_retrieval_index(NAME, version, _index_dir(tmp_path))
    fetched = fetch_retrieval_index(NAME, version, tmp_path / "ok", require_integrity=True)
    assert (fetched / "sub/blend.json").read_text() == "{}"
    flip_last_byte(registry_local_path(uri) / "items.faiss")
    with pytest.raises(RefusedVersionError, match=f"the retrieval index of model {NAME} version {version}: "
                                                  "file items.faiss has sha256") as refused:
        fetch_retrieval_index(NAME, version, tmp_path / "bad")
    assert refused.value.reason == "digest_mismatch"
    # A rebuild logs to a new directory and replaces the manifest: the version's index passes again.
    rebuilt = log_retrieval_index(NAME, version, _index_dir(tmp_path / "again"))
    assert rebuilt != uri and fetch_retrieval_index(NAME, version, tmp_path / "rebuilt") is not None


def test_an_index_logged_before_manifests_warns_then_is_sealed(version, tmp_path, caplog, capsys):
    client = MlflowClient()
    log_retrieval_index(NAME, version, _index_dir(tmp_path))
    client.delete_model_version_tag(NAME, version, INDEX_MANIFEST_TAG)  # as an index built by an older grec
    with caplog.at_level(logging.WARNING, logger="registry"):
        assert fetch_retrieval_index(NAME, version, tmp_path / "a") is not None
    assert f"grec seal --model models:/{NAME}/{version}" in caplog.text
    with pytest.raises(RefusedVersionError, match="has no manifest of its files, and integrity is required"):
        fetch_retrieval_index(NAME, version, tmp_path / "b", require_integrity=True)
    assert main(["seal", "--model", f"models:/{NAME}/{version}"]) == 0
    assert "retrieval index files" in capsys.readouterr().out
    assert json.loads(client.get_model_version(NAME, version).tags[INDEX_MANIFEST_TAG])["uri"] == \
        client.get_model_version(NAME, version).tags[INDEX_TAG]
    assert fetch_retrieval_index(NAME, version, tmp_path / "c", require_integrity=True) is not None


# ---- versions registered before manifests ------------------------------------------------------------------
@pytest.fixture()
def legacy_version(registry, tiny_movielens, tmp_path):
    """A version as grec registered them before: MLflow's models-from-code, with copies of grec/ on its
    code path. Both the code file and the copied grec would leave a marker if anything ran them."""
    from grec import save_model

    marker = tmp_path / "legacy-marker"
    code = tmp_path / "legacy_code"
    (code / "grec").mkdir(parents=True)
    (code / "grec/__init__.py").write_text(_marker_code(marker))
    (code / "pyfunc_model.py").write_text(
        "import mlflow\n" + f"if __import__('os').environ.get('GREC_TEST_LOADING'): {_marker_code(marker)}"
        "class Legacy(mlflow.pyfunc.PythonModel):\n    def predict(self, context, model_input, params=None):\n"
        "        return model_input\n"
        "mlflow.models.set_model(Legacy())\n")
    root = Path(tiny_movielens.root)
    artifacts = {"model": str(save_model(_tiny_model(tiny_movielens), tmp_path / "grec_model")),
                 **{key: str(root / f"{key}.json") for key in ("transforms", "dataset_spec", "definition")}}
    # its own experiment with its artifacts under tmp_path (the default experiment's go to ./mlruns)
    experiment = MlflowClient().create_experiment(f"legacy-{tmp_path.name}",
                                                  artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code / "pyfunc_model.py"), artifacts=artifacts,
                                       code_paths=[str(code / "grec")], pip_requirements=["mlflow"])
    version = str(mlflow.register_model(info.model_uri, "legacy").version)
    return version, marker


def test_a_version_without_a_manifest_loads_as_data_with_a_warning(legacy_version, caplog, monkeypatch):
    version, marker = legacy_version
    monkeypatch.setenv("GREC_TEST_LOADING", "1")
    with caplog.at_level(logging.WARNING, logger="registry"):
        loaded = load_registered(f"models:/legacy/{version}")
    assert f"model legacy version {version} has no manifest" in caplog.text
    assert f"grec seal --model models:/legacy/{version}" in caplog.text
    assert loaded.model.task_names and loaded.definition.name
    assert not marker.exists()
    _assert_installed_grec()


def test_a_version_without_a_manifest_is_refused_where_integrity_is_required(legacy_version, tiny_movielens, capsys,
                                                                            monkeypatch):
    version, _ = legacy_version
    uri = f"models:/legacy/{version}"
    with pytest.raises(RefusedVersionError, match=f"model legacy version {version} has no manifest"):
        load_registered(uri, require_integrity=True)
    monkeypatch.setenv(REQUIRE_INTEGRITY_ENV, "1")
    with pytest.raises(RefusedVersionError, match="integrity is required"):
        load_registered(uri)
    monkeypatch.delenv(REQUIRE_INTEGRITY_ENV)
    # The commands that load versions say so in one line, before any work starts.
    code = main(["evaluate", "--model", uri, "--data", str(tiny_movielens.root), "--require-integrity", "--no-log"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("grec evaluate: error: ") and "grec seal --model" in err
    assert "Traceback" not in err and os.environ.get(REQUIRE_INTEGRITY_ENV) is None


def test_sealing_gives_an_old_version_a_manifest_that_later_loads_check(legacy_version, capsys):
    version, marker = legacy_version
    uri = f"models:/legacy/{version}"
    assert main(["seal", "--model", uri]) == 0
    assert f"model legacy version {version}: recorded the sha256 of its" in capsys.readouterr().out
    load_registered(uri, require_integrity=True)
    assert main(["seal", "--model", uri]) == 0  # a manifest is never replaced
    assert "nothing recorded" in capsys.readouterr().out
    code = _version_dir("legacy", version) / "pyfunc_model.py"
    code.write_text(code.read_text() + _marker_code(marker))
    with pytest.raises(RefusedVersionError, match="pyfunc_model.py is"):
        load_registered(uri)
    assert not marker.exists()
