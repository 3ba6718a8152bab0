"""Where a registered version keeps its files (its saved layout), and reading them as data.

A version's files, relative to the version's artifact directory:

    layout 2 (this grec writes it)            layout 1 (grec before layouts were recorded)
    MLmodel (MLflow's: the signature)         MLmodel
    data/grec/model/model.safetensors         artifacts/grec_model/model.safetensors
    data/grec/model/config.json               artifacts/grec_model/config.json
    data/grec/transforms.json                 artifacts/transforms.json
    data/grec/dataset_spec.json               artifacts/dataset_spec.json
    data/grec/definition.json                 artifacts/definition.json
    conda.yaml, python_env.yaml,              the same, plus pyfunc_model.py and code/ (a copy
    requirements.txt (MLflow's)               of grec/ and feature_store/), never read by grec

The version records its layout as the tag `grec.layout_version` (none: layout 1) and the grec that
registered it as `grec.version`; a layout this grec cannot read is refused, both named. The files
are read with the installed grec and feature_store: safetensors and JSON, nothing imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from registry.integrity import RefusedVersionError

LAYOUT_TAG = "grec.layout_version"
GREC_VERSION_TAG = "grec.version"
MLMODEL_FILE = "MLmodel"
# The data directory of a layout-2 version is MLflow's `data/` plus this name (the pyfunc's data_path).
DATA_NAME = "grec"
MODEL_DIR = "model"
TRANSFORMS_FILE = "transforms.json"
SPEC_FILE = "dataset_spec.json"
DEFINITION_FILE = "definition.json"


@dataclass(frozen=True)
class Layout:
    """Where one layout keeps the data files: `data_dir` relative to the version's files, the model
    (grec.save_model's directory) at `data_dir/model_dir`, the JSON files directly in `data_dir`."""

    version: int
    data_dir: str
    model_dir: str

    def path(self, name: str) -> str:
        """The path of data file `name` relative to the version's files."""
        return f"{self.data_dir}/{name}"


LAYOUT_VERSION = 2
LAYOUTS = {1: Layout(1, "artifacts", "grec_model"), 2: Layout(2, f"data/{DATA_NAME}", MODEL_DIR)}


@dataclass(frozen=True)
class VersionData:
    """A version's data files, read: the grec network (eval mode), its transforms, spec and definition."""

    model: Any  # grec.MultiTaskModel
    transforms: Any  # feature_store.transforms.TransformSet
    spec: Any  # grec.InputSpec
    definition: Any  # feature_store.definitions.DatasetDefinition


def grec_version() -> str:
    """The installed grec's version ("unknown" where grec runs from a copy of its source, not installed)."""
    try:
        return metadata.version("grec")
    except metadata.PackageNotFoundError:
        return "unknown"


def version_layout(tags: dict[str, str], what: str) -> Layout:
    """The layout a version's tags declare (none: layout 1); refused when this grec cannot read it."""
    saved = tags.get(LAYOUT_TAG, "1")
    layout = LAYOUTS.get(int(saved)) if saved.isdigit() else None
    if layout is None:
        raise RefusedVersionError(
            f"{what} was saved with layout version {saved} by grec {tags.get(GREC_VERSION_TAG, 'unknown')}; this grec "
            f"({grec_version()}) reads layout versions {', '.join(map(str, sorted(LAYOUTS)))}: load it with the grec "
            "release that registered it, or a later one", reason="unreadable_layout")
    return layout


def layout_tags() -> dict[str, str]:
    """The tags a version registered now records: its layout and this grec's version."""
    return {LAYOUT_TAG: str(LAYOUT_VERSION), GREC_VERSION_TAG: grec_version()}


def write_data(model: Any, dataset_dir: str | Path, directory: str | Path) -> Path:
    """The data directory of a new version at `directory` (named DATA_NAME): the model (safetensors
    + JSON config) and the dataset's transforms, spec and definition."""
    import shutil

    from grec import save_model

    directory, dataset_dir = Path(directory), Path(dataset_dir)
    directory.mkdir(parents=True)
    save_model(model, directory / MODEL_DIR)
    for name in (TRANSFORMS_FILE, SPEC_FILE, DEFINITION_FILE):
        shutil.copyfile(dataset_dir / name, directory / name)
    return directory


def read_data(directory: str | Path, model_dir: str = MODEL_DIR) -> VersionData:
    """Reads a data directory with the installed grec and feature_store (no code from it runs)."""
    from feature_store.definitions import DatasetDefinition
    from feature_store.transforms import TransformSet
    from grec import InputSpec, load_model

    directory = Path(directory)
    return VersionData(model=load_model(directory / model_dir),
                       transforms=TransformSet.load(directory / TRANSFORMS_FILE),
                       spec=InputSpec.from_json(directory / SPEC_FILE),
                       definition=DatasetDefinition.load(directory / DEFINITION_FILE))
