"""The Ray Serve application: FastAPI ingress, online feature lookup, batched per-task ranking.

`build_app(ServingConfig(...))` gives the application to `serve.run`; `grec serve` starts it.
"""

from serving.config import ServingConfig, ServingConfigError

__all__ = ["ServingConfig", "ServingConfigError", "build_app"]


def __getattr__(name: str):
    # build_app imports Ray Serve and torch; importing the config alone stays light.
    if name == "build_app":
        from serving.app import build_app

        return build_app
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
