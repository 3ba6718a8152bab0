"""`grec data init`: a starting dataset declaration written from data files' schemas and a first
batch of their rows. Each column's role is guessed from its name, type and values, and every guess
is commented (`# guessed: ...`) for the user to check; columns left out are listed as comments, so
the draft shows every column of the files. The draft is a valid declaration (checked before it is
written), ready for `grec data prepare --definition`.

Guesses: the user and item keys by name (user_id, customer, item, product, sku, movie...); the time
by type or name, with the unit of numbers from their magnitude; outcomes (0/1 flags, ratings,
columns named like clicks, purchases or dwell times) become tasks, never features, since they are
known only after the event: a flag its own binary task, a rating a binary task (high ratings) and a
regression, another number a binary task (above its median); no outcome at all makes an
implicit-feedback task. Item and user columns become
text (long strings), multi-hot (lists, or strings with a separator), categorical (few distinct
values, ids) or numeric features.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.declaration import parse_declaration
from feature_store.errors import FeatureStoreError
from feature_store.sources.files import FileSet, find_files

SAMPLE_ROWS = 10_000
_USER = re.compile(r"^(user|customer|visitor|member|account|client|buyer|reader|viewer|person|uid)([ _-]?id)?$", re.I)
_ITEM = re.compile(r"^(item|product|movie|sku|article|video|song|track|book|offer|listing|content|doc|post|ad|"
                   r"clothing|garment|iid)([ _-]?id)?$", re.I)
_TIME = re.compile(r"(^|_)(timestamp|time|ts|datetime|date|created|at|event_time|when)$", re.I)
_OUTCOME = re.compile(r"(click|purchase|buy|bought|like|love|convert|conversion|order|cart|watch|view|play|"
                      r"rating|score|stars|label|target|dwell|duration|recommend|share|skip|bounce|engage)", re.I)
_RATING = re.compile(r"(rating|score|stars)", re.I)
_TEXT_NAME = re.compile(r"(title|name|description|text|review|summary|body|caption|comment|query)", re.I)
_SEPARATORS = ("|", ";", ",")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _q(text: str) -> str:
    """A YAML scalar for `text` (quoted when plain YAML would read it otherwise)."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


def _column_ref(column: str) -> str:
    """A column as a condition names it: backticks unless it is an identifier."""
    return column if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column) else f"`{column}`"


@dataclass
class _Sample:
    """A table's files and a first batch of its rows."""

    location: str
    files: FileSet
    rows: pa.Table
    written_path: str

    @property
    def names(self) -> list[str]:
        return self.rows.column_names

    def type_of(self, column: str) -> pa.DataType:
        return self.rows.schema.field(column).type


def _sample(location: str, out_dir: Path) -> _Sample:
    files = find_files(location, Path.cwd())
    _, schema = next(files.columns())
    batch = next(iter(files.scan(schema, batch_size=SAMPLE_ROWS)), None)
    if batch is None:
        raise FeatureStoreError(f"file {files.display(files.paths[0])} has no rows to guess the columns' roles from")
    written = location
    if "://" not in location:  # paths in the declaration are relative to its folder
        written = os.path.relpath(Path(location).resolve(), out_dir.resolve())
    return _Sample(location, files, batch.table.slice(0, SAMPLE_ROWS), written)


def _numbers(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype)


def _strings(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _values(sample: _Sample, column: str) -> pa.Array:
    return sample.rows.column(column).drop_null().combine_chunks()


def _is_flag(sample: _Sample, column: str) -> bool:
    dtype = sample.type_of(column)
    if pa.types.is_boolean(dtype):
        return True
    if not pa.types.is_integer(dtype):
        return False
    values = _values(sample, column)
    return len(values) > 0 and set(pc.unique(values).to_pylist()) <= {0, 1}


def _time_guess(sample: _Sample, column: str) -> tuple[str, str] | None:
    """(the time's YAML mapping, why) for a column that holds times, or None."""
    dtype = sample.type_of(column)
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return f"{{column: {_q(column)}}}", f"a {dtype} column"
    if not _TIME.search(column):
        return None
    values = _values(sample, column)
    if _numbers(dtype) and len(values):
        median = float(np.median(np.abs(values.to_numpy(zero_copy_only=False))))
        unit = "ns" if median > 1e17 else "us" if median > 1e14 else "ms" if median > 1e11 else "s"
        return f"{{column: {_q(column)}, unit: {unit}}}", f"numbers around {median:.3g}: {unit} since 1970"
    if _strings(dtype) and len(values):
        for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
            try:
                values.cast(target)
                return f"{{column: {_q(column)}}}", f"text in ISO 8601 (e.g. {values[0].as_py()!r})"
            except pa.ArrowInvalid:
                continue
        return (f"{{column: {_q(column)}, format: \"%Y-%m-%d %H:%M:%S\"}}",
                f"text such as {values[0].as_py()!r}: CHECK the format (strptime)")
    return None


def _key(sample: _Sample, pattern: re.Pattern, prefer: list[str], word: str) -> str | None:
    """The first of `prefer` the sample holds, else a column named like `pattern`, else one whose
    name holds `word`."""
    for column in prefer:
        if column in sample.names:
            return column
    return next((c for c in sample.names if pattern.match(c)), None) or next(
        (c for c in sample.names if word in c.lower()), None)


@dataclass
class _Lines:
    lines: list[str] = field(default_factory=list)

    def add(self, text: str, why: str | None = None) -> None:
        self.lines.append(f"{text}  # guessed: {why}" if why else text)


def _feature(sample: _Sample, column: str) -> tuple[str, str] | None:
    """(a feature's YAML mapping, why) for an item/user column, or None to leave it out."""
    dtype = sample.type_of(column)
    values = _values(sample, column)
    ref = _q(column)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return f"{{column: {ref}, kind: multi_hot}}", f"a list column ({dtype})"
    if _strings(dtype):
        if not len(values):
            return None
        text = values.cast(pa.string())
        lengths = pc.utf8_length(text).to_numpy()
        distinct = len(pc.unique(text))
        words = float(np.mean([len(v.split()) for v in text.to_pylist()[:2000]]))
        if _TEXT_NAME.search(column) or (lengths.mean() > 24 and words > 3):
            budget = next(b for b in (16, 32, 64, 128, 256) if b >= 1.5 * words or b == 256)
            return (f"{{column: {ref}, kind: text, max_length: {budget}}}",
                    f"text, {words:.0f} words on average")
        for separator in _SEPARATORS:
            share = float(np.mean(pc.match_substring(text, separator).to_numpy(zero_copy_only=False)))
            if share > 0.3:
                return (f"{{column: {ref}, kind: multi_hot, separator: {json.dumps(separator)}}}",
                        f"{share:.0%} of values hold {separator!r}: values separated by it")
        return f"{{column: {ref}, kind: categorical}}", f"strings, {distinct} distinct in {len(text)} rows"
    if _numbers(dtype):
        if pa.types.is_integer(dtype) and re.search(r"(^|_)(id|code|category|type|class)$", column, re.I):
            return f"{{column: {ref}, kind: categorical}}", "integer codes"
        return f"{{column: {ref}, kind: numeric}}", f"numbers ({dtype})"
    return None


def _task_lines(sample: _Sample, used: set[str]) -> tuple[list[str], set[str]]:
    """Tasks from the events' outcome columns; an implicit task when there is none."""
    tasks: list[str] = []
    taken: set[str] = set()
    for column in sample.names:
        if column in used:
            continue
        dtype = sample.type_of(column)
        name = re.sub(r"[^A-Za-z0-9_]", "_", column).strip("_").lower() or "task"
        if name[0].isdigit():
            name = f"t_{name}"
        role = "main" if not tasks else "auxiliary"
        if _is_flag(sample, column) and _OUTCOME.search(column):
            condition = _column_ref(column) if pa.types.is_boolean(dtype) else f"{_column_ref(column)} == 1"
            tasks.append(f"  - name: {name}  # guessed: a 0/1 outcome\n    kind: binary\n"
                         f"    positive: {_q(condition)}\n    role: {role}\n    descriptors: {{type: {name}}}")
            taken.add(column)
        elif _numbers(dtype) and _RATING.search(column):
            values = _values(sample, column).to_numpy(zero_copy_only=False)
            high = float(np.max(values)) if len(values) else 5.0
            threshold = int(np.ceil(0.8 * high))
            tasks.append(f"  - name: {name}_high  # guessed: a rating; positive when it is high (CHECK the threshold)\n"
                         f"    kind: binary\n    positive: {_q(f'{_column_ref(column)} >= {threshold}')}\n"
                         f"    role: {role}\n    descriptors: {{type: {name}}}")
            tasks.append(f"  - name: {name}  # guessed: the rating itself\n    kind: regression\n"
                         f"    column: {_q(column)}\n    role: auxiliary\n    descriptors: {{type: {name}}}")
            taken.add(column)
        elif _numbers(dtype) and _OUTCOME.search(column):
            values = _values(sample, column).to_numpy(zero_copy_only=False)
            median = float(f"{np.median(values):.2g}") if len(values) else 0.0
            threshold = int(median) if median.is_integer() else median
            tasks.append(f"  - name: {name}_high  # guessed: an outcome measured after the event; positive above its "
                         f"median (CHECK the threshold)\n    kind: binary\n"
                         f"    positive: {_q(f'{_column_ref(column)} > {threshold}')}\n    role: {role}\n"
                         f"    descriptors: {{type: {name}}}")
            taken.add(column)
    if not tasks:
        tasks.append("  - name: interaction  # guessed: no outcome column, so every event is a positive "
                     "(implicit feedback)\n    kind: implicit\n    descriptors: {type: interaction}")
    return tasks, taken


def _table_lines(title: str, sample: _Sample, key: str, key_pattern: re.Pattern, entity: str) -> list[str]:
    out = _Lines()
    found_key = _key(sample, key_pattern, [key], entity)
    if found_key is None:
        raise FeatureStoreError(f"file {sample.files.display(sample.files.paths[0])}: no column looks like the "
                                f"{entity} key ({key!r} as in the events); columns: {sample.names}. Declare it by hand")
    out.add(f"{title}:")
    out.add(f"  path: {_q(sample.written_path)}")
    out.add(f"  key: {_q(found_key)}", f"the {entity} id, as in the events")
    time = next(((c, g) for c in sample.names if c != found_key and (g := _time_guess(sample, c))), None)
    if time is not None:
        out.add(f"  time: {time[1][0]}", f"rows are time-stamped ({time[1][1]}); remove for one row per key")
    else:
        keys = sample.rows.column(found_key)
        if len(pc.unique(keys)) < len(keys):
            out.add("  duplicate_keys: first", "keys repeat in the first rows; CHECK: one row per key is expected")
    out.add("  features:")
    for column in sample.names:
        if column in (found_key, time[0] if time else None):
            continue
        guess = _feature(sample, column)
        if guess is None:
            out.add(f"  # - {{column: {_q(column)}}}  # left out: {sample.type_of(column)}, no kind guessed")
        else:
            out.add(f"    - {guess[0]}", guess[1])
    return out.lines


def draft(out: Path, *, events: str, items: str | None = None, users: str | None = None,
          name: str | None = None) -> str:
    """The declaration text (see the module docstring)."""
    out_dir = out.parent
    event_sample = _sample(events, out_dir)
    item_sample = _sample(items, out_dir) if items else None
    user_sample = _sample(users, out_dir) if users else None
    shared_items = [c for c in event_sample.names if item_sample and c in item_sample.names]
    shared_users = [c for c in event_sample.names if user_sample and c in user_sample.names]
    user = _key(event_sample, _USER, [c for c in shared_users if _USER.match(c)] + shared_users, "user")
    item = _key(event_sample, _ITEM, [c for c in shared_items if _ITEM.match(c)] + [
        c for c in shared_items if c != user], "item")
    where = event_sample.files.display(event_sample.files.paths[0])
    if user is None or item is None:
        raise FeatureStoreError(f"file {where}: no column looks like the {'user' if user is None else 'item'} id; "
                                f"columns: {event_sample.names}. Rename it (user_id, item_id) or declare it by hand")
    time = next(((c, g) for c in event_sample.names if c not in (user, item)
                 and (g := _time_guess(event_sample, c))), None)
    if time is None:
        raise FeatureStoreError(f"file {where}: no column looks like the events' time (a timestamp, or numbers or "
                                f"text named like time, ts, date); columns: {event_sample.names}")
    tasks, outcomes = _task_lines(event_sample, {user, item, time[0]})
    lines = _Lines()
    lines.add("# A grec dataset declaration (reference: docs/DATA.md), drafted by `grec data init`.")
    lines.add("# Every `# guessed` line is a guess: check it, then `grec data prepare --definition THIS_FILE`.")
    lines.add(f"name: {_q(name or out.stem)}")
    lines.add("events:")
    lines.add(f"  path: {_q(event_sample.written_path)}")
    lines.add(f"  user: {_q(user)}", "the user id")
    lines.add(f"  item: {_q(item)}", "the item id")
    lines.add(f"  time: {time[1][0]}", time[1][1])
    lines.add("  features: []  # context features of the event: add those known before it (any other leaks the "
              "outcome)")
    for column in (c for c in event_sample.names if c not in {user, item, time[0], *outcomes}):
        guess = _feature(event_sample, column)
        lines.add(f"  # - {guess[0] if guess else f'{{column: {_q(column)}}}'}"
                  + (f"  # guessed: {guess[1]}" if guess else ""))
    for title, sample, key, pattern, entity in (("items", item_sample, item, _ITEM, "item"),
                                                ("users", user_sample, user, _USER, "user")):
        if sample is not None:
            lines.lines += _table_lines(title, sample, key, pattern, entity)
    lines.add("sequences:")
    lines.add(f"  - {{name: hist_{re.sub(r'[^A-Za-z0-9_]', '_', item)}, column: {_q(item)}, length: 50}}",
              "each user's last 50 items before the event")
    lines.add("tasks:")
    lines.lines += tasks
    return "\n".join(lines.lines) + "\n"


def write_draft(out: Path, *, events: str, items: str | None = None, users: str | None = None,
                name: str | None = None, overwrite: bool = False) -> Path:
    """Writes the draft to `out` (refused when it exists, unless `overwrite`); returns `out`."""
    import yaml

    if out.exists() and not overwrite:
        raise FeatureStoreError(f"{out} exists; pass --overwrite to replace it")
    text = draft(out, events=events, items=items, users=users, name=name)
    parse_declaration(yaml.safe_load(text), str(out))  # a draft is always a valid declaration
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
