"""The base of grec's typed records (dataset spec entries, config sections): frozen pydantic models
that reject unknown keys, are validated once at construction and round-trip through JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class Validated(BaseModel):
    """A frozen, validated record. Unknown keys are errors that name the key."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed."""
        return type(self).model_validate({**dict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls.model_validate(data)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> Self:
        return cls.from_dict(json.loads(Path(path).read_text()))


class PositionalValidated(Validated):
    """A record that may also be built with its fields in declaration order, as the dataclasses it
    replaced were (`TaskSpec("click", "binary", "label_click")`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = list(type(self).model_fields)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional fields, got {len(args)}")
        given_twice = sorted(set(names[:len(args)]) & set(kwargs))
        if given_twice:
            raise TypeError(f"{type(self).__name__}: {given_twice} given by position and by name")
        super().__init__(**dict(zip(names, args, strict=False)), **kwargs)
