"""Where an online store is: one set of forms for every command, and the default place.

`redis://host:port/db` (also rediss://, unix://), `sqlite:///PATH` or a plain file path. The
default is `.grec/online.sqlite` under the working directory, beside the default MLflow store, for
`grec data materialize` and `grec serve` alike; the serving config validates locations with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SQLITE_SCHEME = "sqlite:///"
DEFAULT_ONLINE_STORE = Path(".grec") / "online.sqlite"


def default_online_store() -> str:
    """`<working directory>/.grec/online.sqlite`, as an absolute path."""
    return str((Path.cwd() / DEFAULT_ONLINE_STORE).resolve())


def parse_online_store(url_or_path: str | Path) -> tuple[Literal["sqlite", "redis"], str]:
    """("redis", URL) or ("sqlite", file path); a ValueError naming the accepted forms otherwise.
    `sqlite:///rel/path` is relative and `sqlite:////abs/path` absolute, as in SQLAlchemy."""
    text = str(url_or_path)
    if text.startswith(_REDIS_SCHEMES):
        return "redis", text
    if text.startswith(_SQLITE_SCHEME):
        path = text[len(_SQLITE_SCHEME):]
        if not path:
            raise ValueError(f"{text!r} names no file; use sqlite:///PATH")
        return "sqlite", path
    if "://" in text or not text:
        raise ValueError(f"unsupported online store {text!r}; use redis://HOST:PORT/DB, sqlite:///PATH or a file path")
    return "sqlite", text
