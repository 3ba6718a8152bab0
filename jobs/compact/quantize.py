"""`grec quantize`: post-training quantization of a registered model version into a new version of
the same model.

The full-precision version is loaded, stored at the chosen precision (grec.quantization: bf16 or
fp16 weights, or int8 weights with torch's dynamically quantized linear layers where they are
faster), and registered as a new version with alias `challenger` by default, so it goes through
the promotion gate (`grec promote`) and the endpoint as any other version. The precision is in the
model's files (config.json, safetensors metadata) and on the version as the tag `grec.precision`;
`grec.quantized_from` names the source version.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from registry.models import CHALLENGER, load_registered, register_model

log = logging.getLogger(__name__)

PRECISION_TAG = "grec.precision"
SOURCE_TAG = "grec.quantized_from"


@dataclass(frozen=True)
class QuantizedVersion:
    name: str
    version: str
    precision: str
    source_uri: str  # models:/NAME/VERSION it was made from
    alias: str | None


def quantize_registered(model_uri: str, precision: str, *, alias: str | None = CHALLENGER,
                        client: MlflowClient | None = None) -> QuantizedVersion:
    """Registers `model_uri`'s version, stored at `precision`, as a new version of its model."""
    from grec.quantization import check_precision

    check_precision(precision)
    if precision == "fp32":
        raise ValueError("precision fp32 is the source's own: choose bf16, fp16 or int8")
    client = client or MlflowClient()
    try:
        source = load_registered(model_uri)
    except MlflowException as err:  # e.g. a version that does not exist: bad input, not a crash
        raise ValueError(f"cannot load {model_uri} from the MLflow registry: {err.message}") from None
    if source.model.precision != "fp32":
        raise ValueError(f"{model_uri} (version {source.version}) is already stored as {source.model.precision}; "
                         "quantize the full-precision version")
    source_uri = f"models:/{source.name}/{source.version}"
    source.model.precision = precision  # grec.save_model stores the weights at this precision
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp)  # the artifacts a registered model carries besides its weights
        source.transforms.save(dataset_dir / "transforms.json")
        source.spec.to_json(dataset_dir / "dataset_spec.json")
        source.definition.save(dataset_dir / "definition.json")
        version = register_model(source.model, dataset_dir, source.name, None, alias=alias, client=client,
                                 signature=source.signature)
    client.set_model_version_tag(source.name, version.version, PRECISION_TAG, precision)
    client.set_model_version_tag(source.name, version.version, SOURCE_TAG, source_uri)
    log.info("registered %s version %s: %s stored as %s", source.name, version.version, source_uri, precision)
    return QuantizedVersion(source.name, str(version.version), precision, source_uri, alias)
