"""`grec seal`: record the manifest of a model version registered before grec recorded them."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "seal", help="record the sha256 of every file of a version registered without a manifest",
        description="Versions registered by this grec carry a manifest of their files (sha256 and size of each, a "
                    "model version tag) that every load checks. A version registered before has none: it loads "
                    "with a warning, and is refused under --require-integrity. This records its manifest, and its "
                    "retrieval index's, from the files as the artifact store holds them now: seal only a version "
                    "whose store you trust. A manifest already recorded is never replaced.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else .grec/mlflow.db here)")
    p.set_defaults(func=_seal)


def _seal(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from registry.models import seal_version
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(args.tracking_uri):
        try:
            sealed = seal_version(args.model)
        except MlflowException as err:  # e.g. a version that does not exist: bad input, not a crash
            raise ValueError(f"cannot read {args.model} from the MLflow registry: {err.message}") from None
    what = f"model {sealed.name} version {sealed.version}"
    if sealed.model is None and sealed.retrieval_index is None:
        print(f"grec seal: {what} and its retrieval index (if any) already have manifests; nothing recorded")
        return 0
    for part, manifest in (("files", sealed.model), ("retrieval index files", sealed.retrieval_index)):
        if manifest is not None:
            size = sum(f.size for f in manifest.files.values())
            print(f"grec seal: {what}: recorded the sha256 of its {len(manifest.files)} {part} ({size} bytes)")
    return 0
