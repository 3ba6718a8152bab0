"""The application builder of Serve config files: `import_path: serving.builder:app` with `args`.

`serve run CONFIG`, `serve deploy CONFIG` and KubeRay's RayService (`serveConfigV2`) call `app(args)`
with the config's `args`: any `ServingConfig` field (validated once, here, with the field named on
error), plus `token_env`, the environment variable that holds the bearer token (default
GREC_API_TOKEN). The token never sits in the config file; on Kubernetes it comes from a Secret.
See infra/serve/grec_serve.yaml.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serving.app import build_app
from serving.config import ServingConfig

DEFAULT_TOKEN_ENV = "GREC_API_TOKEN"


def app(args: dict[str, Any]) -> Application:
    """The grec endpoint for `args` (ServingConfig fields and `token_env`)."""
    values = dict(args)
    token_env = values.pop("token_env", DEFAULT_TOKEN_ENV)
    return build_app(ServingConfig.load(values, token_env=token_env))
