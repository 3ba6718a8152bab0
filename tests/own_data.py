"""A team's own small dataset, as its files would come, with its declaration: Parquet events
partitioned by day (string user and item ids, a click flag and a dwell time), an items file with a
title (text) and tags (a list column), a users file. Clicks follow taste: a user clicks items of
their favourite category more often, so a model has something to learn.

`write_shop(folder)` writes the files and `shop.yaml`; `implicit=True` writes events without any
outcome column and a declaration whose only task is implicit feedback (every event a positive).
README.md's "Your own data" starts from these files: `.venv/bin/python tests/own_data.py FOLDER`.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CATEGORIES = ("shirts", "shoes", "hats")
START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)

SHOP_DECLARATION = """\
# A shop's own data: clicks and dwell times on items with titles and tags.
name: shop
events:
  path: events            # a partitioned directory: day=... folders
  user: {column: visitor, name: user_id}
  item: {column: sku, name: item_id}
  time: {column: ts, unit: ms}
  features:
    - {column: device, kind: categorical}
users:
  path: users.parquet
  key: visitor
  features:
    - {column: country, kind: categorical}
    - {column: age, kind: numeric}
items:
  path: items.parquet
  key: sku
  features:
    - {column: title, kind: text, max_length: 12}
    - {column: tags, kind: multi_hot}
    - {column: price, kind: numeric}
sequences:
  - {name: hist_item_id, column: item_id, length: 8}
tasks:
  - name: click
    kind: binary
    positive: clicked == 1
    descriptors: {type: click, scenario: shop}
  - name: long_view
    kind: binary
    positive: dwell_s > 30 and clicked == 1
    role: auxiliary
    descriptors: {type: dwell, scenario: shop}
"""

IMPLICIT_DECLARATION = """\
# The same shop's views as implicit feedback: no outcome column, every event a positive (top-N).
name: shop-views
events:
  path: events
  user: {column: visitor, name: user_id}
  item: {column: sku, name: item_id}
  time: {column: ts, unit: ms}
items:
  path: items.parquet
  key: sku
  features:
    - {column: title, kind: text, max_length: 12}
    - {column: tags, kind: multi_hot}
sequences:
  - {name: hist_item_id, column: item_id, length: 8}
tasks:
  - {name: view, kind: implicit, descriptors: {type: view, scenario: shop}}
"""


def write_shop(folder: Path, *, events: int = 3000, users: int = 120, items: int = 48, seed: int = 0,
               implicit: bool = False) -> Path:
    """Writes the files under `folder` and returns the declaration's path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    visitors = np.array([f"v-{i:04d}" for i in range(users)])
    skus = np.array([f"SKU{i:03d}" for i in range(items)])
    taste = rng.integers(0, len(CATEGORIES), users)
    category = np.arange(items) % len(CATEGORIES)
    who = rng.integers(0, users, events)
    what = rng.integers(0, items, events)
    ms = START.timestamp() * 1000 + np.sort(rng.integers(0, 60 * 86_400_000, events))
    likes = taste[who] == category[what]
    clicked = (rng.random(events) < np.where(likes, 0.7, 0.2)).astype(np.int64)
    dwell = rng.exponential(np.where(clicked == 1, 45.0, 8.0))
    columns = {"visitor": visitors[who], "sku": skus[what], "ts": ms.astype(np.int64),
               "device": rng.choice(["ios", "android", "web"], events)}
    if not implicit:
        columns.update(clicked=clicked, dwell_s=dwell)
    table = pa.table(columns)
    day = (ms - ms.min()) // (30 * 86_400_000)  # two partitions of about a month each
    for value in np.unique(day):
        part = folder / "events" / f"day={int(value)}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(day == value)), part / "part-0.parquet")
    pq.write_table(pa.table({
        "sku": skus,
        "title": [f"{['red', 'blue', 'green'][i % 3]} {CATEGORIES[category[i]][:-1]} number {i}" for i in range(items)],
        "tags": [[CATEGORIES[category[i]], ["sale", "new"][i % 2]] for i in range(items)],
        "price": rng.uniform(5, 120, items),
    }), folder / "items.parquet")
    # Some visitors have no profile: their events are kept, their user features empty.
    profiled = users - users // 10
    pq.write_table(pa.table({"visitor": visitors[:profiled], "country": rng.choice(["FR", "DE", "US"], profiled),
                             "age": rng.integers(18, 70, profiled)}), folder / "users.parquet")
    declaration = folder / ("shop-views.yaml" if implicit else "shop.yaml")
    declaration.write_text(IMPLICIT_DECLARATION if implicit else SHOP_DECLARATION)
    return declaration


if __name__ == "__main__":
    print(f"wrote {write_shop(Path(sys.argv[1])).parent}")
