"""Validates infra/'s Kubernetes manifests offline, before anything is applied to a cluster.

    python infra/validate_manifests.py [FILE.yaml ...]      (default: every file under infra/k8s/)

- KubeRay resources (RayJob, RayService, RayCluster) against KubeRay's own CRD schemas
  (`../shared/kuberay-crds/` beside the repository, or $KUBERAY_CRDS_DIR). Kubernetes prunes the
  fields a CRD does not know, so a misspelt key would apply and do nothing: every object schema
  that lists its properties is treated as closed, as kubectl's strict field validation does.
- Core objects (Deployment, StatefulSet, Service, ConfigMap, NetworkPolicy, ...) with
  kubernetes-validate, strictly, at KUBERNETES_VERSION.
- A RayService's serveConfigV2 against Ray Serve's own schema (`ray.serve.schema.ServeDeploySchema`).

Each problem is one line naming the file, the resource and the field: `FILE: KIND NAME: PATH: message`.
Exit code 1 when there is any.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

INFRA_DIR = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.33.0"
CRDS_ENV = "KUBERAY_CRDS_DIR"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
# Kustomize's own file is not a Kubernetes object.
NOT_OBJECTS = ("kustomize.config.k8s.io/",)


class CrdsMissing(RuntimeError):
    """KubeRay's CRDs are not where they are looked for."""


def crds_dir() -> Path:
    return Path(os.environ.get(CRDS_ENV) or INFRA_DIR.parent.parent / "shared" / "kuberay-crds")


@cache
def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The openAPIV3Schema of KubeRay's CRD for `kind`, closed (see the module docstring)."""
    path = crds_dir() / CRD_FILES[kind]
    if not path.is_file():
        raise CrdsMissing(f"KubeRay's CRD for {kind} is not at {path} (set ${CRDS_ENV} to the folder with "
                          f"{', '.join(CRD_FILES.values())})")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 3 MB each
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return _closed(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    raise ValueError(f"{path}: no version {version}")


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _closed(value)
    elif isinstance(schema, list):
        for value in schema:
            _closed(value)
    return schema


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(root)"


def _crd_problems(doc: dict[str, Any]) -> Iterator[str]:
    import jsonschema

    group, _, version = doc.get("apiVersion", "").partition("/")
    if group != "ray.io":
        yield f"apiVersion: {doc.get('apiVersion')!r}; expected ray.io/v1"
        return
    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"], version))
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        yield f"{_path(error.absolute_path)}: {error.message}"


def _serve_config_problems(doc: dict[str, Any]) -> Iterator[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    text = doc.get("spec", {}).get("serveConfigV2")
    if text is None:
        return
    try:
        ServeDeploySchema.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as err:
        yield f"spec.serveConfigV2: not a valid Serve config: {err}"


def _core_problems(doc: dict[str, Any]) -> Iterator[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        yield f"{_path(err.path)}: {err.message}"
    except kubernetes_validate.SchemaNotFoundError:
        yield f"no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {KUBERNETES_VERSION}"


def problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong with one manifest document (empty: nothing)."""
    if doc.get("kind") in CRD_FILES:
        return [*_crd_problems(doc), *_serve_config_problems(doc)]
    return list(_core_problems(doc))


def documents(path: Path) -> Iterator[dict[str, Any]]:
    """The Kubernetes objects of a YAML file (Kustomize's own file left out)."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and not str(doc.get("apiVersion", "")).startswith(NOT_OBJECTS):
            yield doc


def validate_file(path: Path) -> list[str]:
    """Every problem of every object in `path`, each naming the file, the object and the field."""
    lines = []
    for doc in documents(path):
        name = f"{doc.get('kind', '?')} {doc.get('metadata', {}).get('name', '?')}"
        lines += [f"{path}: {name}: {problem}" for problem in problems(doc)]
    return lines


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted((INFRA_DIR / "k8s").glob("*.yaml"))
    found = [line for path in files for line in validate_file(path)]
    print("\n".join(found) if found else f"{len(files)} files valid")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
