"""A synthetic recommender dataset with controllable task relatedness, of any size, in chunks.

Labels follow the MMoE paper's construction (Ma et al., KDD 2018, §3): an input x ~ N(0, I_d) and,
per task t, a weight w_t and

    y_t = w_t·x + sum_{j<=m} sin(alpha_j w_t·x + beta_j) + eps,   eps ~ N(0, 0.01)

with w_0 = c·u_0 and, for every other task, w_t = c·(rho·u_0 + sqrt(1 - rho^2)·u_t) for orthonormal
u_0..u_T: each auxiliary task's weight has cosine `rho` (task_correlation) with the main task's,
which is the paper's knob for label correlation. Binary labels are y_t > 0.

Here x is a user vector followed by an item vector, so labels are learnable from features: users
carry their vector as numeric features and a segment (sign pattern) as a categorical; items the
same. Every event also has a random device (context, no effect on labels). Users are uniform,
items skewed (popular items get more events). Events are spread over 365 days; each chunk covers
its own time window, in random order inside it. Everything is a function of the seed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from functools import cached_property

import numpy as np
import pyarrow as pa

from feature_store.definitions import (
    TIMESTAMP_TYPE,
    DatasetDefinition,
    Entity,
    FeatureView,
    SequenceFeature,
    Task,
    TaskKind,
    TaskRole,
    categorical,
    numeric,
)
from feature_store.sources.base import DataSource

MIN_LATENT_DIM = 4  # per side: x has 2 * latent_dim dimensions
SINE_TERMS = 10
WEIGHT_SCALE = 1.0
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SPAN_US = 365 * 24 * 3600 * 1_000_000
DEVICES = ("web", "ios", "android")
USER = Entity("user", "user_id", pa.int64())
ITEM = Entity("item", "item_id", pa.int64())


class SyntheticSource(DataSource):
    @property
    def num_events(self) -> int:
        return self.events_kept(self.options.synthetic.num_events)

    @property
    def num_users(self) -> int:
        return self.options.synthetic.num_users or max(1, self.num_events // 50)

    @property
    def latent_dim(self) -> int:
        """Per side; large enough that every task gets its own orthogonal direction (T + 1 in all)."""
        return max(MIN_LATENT_DIM, math.ceil((self.options.synthetic.num_tasks + 1) / 2))

    def estimated_events(self) -> int:
        return self.num_events

    def definition(self) -> DatasetDefinition:
        syn = self.options.synthetic
        tasks = tuple(
            Task(f"task_{t}", TaskKind.BINARY, role=TaskRole.MAIN if t == 0 else TaskRole.AUXILIARY,
                 descriptors={"type": f"type_{t}", "scenario": "synthetic"})
            for t in range(syn.num_tasks)
        )
        user_features = (categorical("user_segment"),) + tuple(numeric(f"user_x{i}") for i in range(self.latent_dim))
        item_features = (categorical("item_segment"),) + tuple(numeric(f"item_x{i}") for i in range(self.latent_dim))
        return DatasetDefinition(
            name=self.name, user=USER, item=ITEM, tasks=tasks,
            feature_views=(FeatureView("users", USER, user_features), FeatureView("items", ITEM, item_features)),
            context_features=(categorical("device"),),
            sequences=(SequenceFeature("hist_item_id", "item_id", self.options.sequence_length, "item_id"),),
        )

    # --- the fixed parts of the generator, all from the seed ---
    @cached_property
    def _rng_params(self) -> dict[str, np.ndarray]:
        syn = self.options.synthetic
        rng = np.random.default_rng([self.options.seed, 0])
        dim = 2 * self.latent_dim
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        u = basis.T  # rows are orthonormal
        rho = syn.task_correlation
        weights = [WEIGHT_SCALE * u[0]]
        weights += [WEIGHT_SCALE * (rho * u[0] + np.sqrt(1.0 - rho * rho) * u[t]) for t in range(1, syn.num_tasks)]
        return {
            "weights": np.stack(weights),
            "alpha": rng.normal(0.0, 0.1, SINE_TERMS),  # N(0, 0.01): standard deviation 0.1
            "beta": rng.normal(0.0, 0.1, SINE_TERMS),
            "user_vectors": rng.standard_normal((self.num_users, self.latent_dim)),
            "item_vectors": rng.standard_normal((self.options.synthetic.num_items, self.latent_dim)),
        }

    def _entity_table(self, key: str, prefix: str, vectors: np.ndarray) -> pa.Table:
        segments = (vectors[:, :3] > 0).astype(np.int64) @ np.array([4, 2, 1])
        columns = {
            key: pa.array(np.arange(len(vectors), dtype=np.int64)),
            "feature_timestamp": pa.array(np.full(len(vectors), _us(START)), pa.int64()).cast(TIMESTAMP_TYPE),
            f"{prefix}_segment": pa.array([f"s{s}" for s in segments], pa.string()),
        }
        columns.update({f"{prefix}_x{i}": pa.array(vectors[:, i]) for i in range(self.latent_dim)})
        return pa.table(columns)

    def _event_chunks(self) -> Iterator[pa.Table]:
        params = self._rng_params
        chunk_size = self.options.synthetic.chunk_size
        total = self.num_events
        num_items = self.options.synthetic.num_items
        for index, first in enumerate(range(0, total, chunk_size)):
            n = min(chunk_size, total - first)
            rng = np.random.default_rng([self.options.seed, 1, index])
            users = rng.integers(0, self.num_users, n)
            items = np.minimum((num_items * rng.random(n) ** 2).astype(np.int64), num_items - 1)
            window_start = _us(START) + SPAN_US * first // total
            window = max(1, SPAN_US * n // total)
            timestamps = window_start + rng.integers(0, window, n)
            x = np.concatenate([params["user_vectors"][users], params["item_vectors"][items]], axis=1)
            projection = x @ params["weights"].T  # [n, tasks]
            y = projection + np.sin(projection[..., None] * params["alpha"] + params["beta"]).sum(-1)
            y += rng.normal(0.0, 0.1, y.shape)
            columns = {
                "user_id": pa.array(users), "item_id": pa.array(items),
                "event_timestamp": pa.array(timestamps, pa.int64()).cast(TIMESTAMP_TYPE),
                "device": pa.array(np.array(DEVICES)[rng.integers(0, len(DEVICES), n)], pa.string()),
            }
            columns.update({f"label_task_{t}": pa.array((y[:, t] > 0).astype(np.int64)) for t in range(y.shape[1])})
            yield pa.table(columns)

    def tables(self) -> Iterator[tuple[str, Iterator[pa.Table]]]:
        params = self._rng_params
        yield "users", iter([self._entity_table("user_id", "user", params["user_vectors"])])
        yield "items", iter([self._entity_table("item_id", "item", params["item_vectors"])])
        yield "events", self._event_chunks()


def _us(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 1_000_000
