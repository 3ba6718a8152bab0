"""The configuration reference page (docs/CONFIG.md) is generated from the config models' JSON
schemas and is kept current: a field added to a config without regenerating the page fails here."""

from __future__ import annotations

from conftest import REPO_ROOT
from pydantic import BaseModel, Field

from jobs.cli import main
from jobs.config.reference import _Schema, _tables, reference_markdown

PAGE = REPO_ROOT / "docs" / "CONFIG.md"


def test_the_committed_page_is_what_the_models_generate():
    assert PAGE.read_text() == reference_markdown(), (
        "docs/CONFIG.md is out of date: run `grec config-reference --out docs/CONFIG.md`")


def test_the_command_writes_the_page(tmp_path, capsys):
    out = tmp_path / "CONFIG.md"
    assert main(["config-reference", "--out", str(out)]) == 0
    assert out.read_text() == reference_markdown()
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out.endswith(reference_markdown())


class _Inner(BaseModel):
    """A nested section."""

    depth: int = Field(3, ge=1, description="how deep")


class _Outer(BaseModel):
    """The top."""

    name: str = Field(description="what it is called")
    mode: str | None = None
    inner: _Inner = _Inner()
    optional_inner: _Inner | None = None
    by_name: dict[str, _Inner] = {}


def test_every_field_of_nested_models_is_found_without_naming_any():
    schema = _Schema(_Outer)
    tables = {path: rows for path, _, rows in _tables(schema, schema.root, "")}
    assert list(tables) == ["", "inner", "optional_inner", "by_name.<name>"]
    top = {row[0]: row for row in tables[""]}
    assert top["`name`"] == ["`name`", "string", "required", "what it is called"]
    assert top["`mode`"][1:3] == ["string or null", "`null`"]
    assert top["`inner`"][1:] == ["_Inner", "see below", "A nested section. Keys below."]
    assert top["`by_name`"][1] == "mapping of string to _Inner"
    assert tables["inner"] == [["`inner.depth`", "integer (≥ 1)", "`3`", "how deep"]]
