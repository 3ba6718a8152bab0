"""The Serve deployments behind the ingress: online feature lookup and the batching ranker.

Both follow the registry alias with a `VersionWatcher`: the ranker holds the servable model, the
feature lookup the dataset definition that says which views to read (the same version's).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from serving.config import ServingConfig
from serving.features import RequestRows, open_store, request_rows, user_history
from serving.model_source import load_definition, load_servable, version_resolver
from serving.ranking import RankRequest, RankResult, rank_batch
from serving.watcher import VersionWatcher


@serve.deployment
class FeatureLookup:
    """Reads the user's and candidates' latest features from the online store."""

    def __init__(self, config: ServingConfig) -> None:
        self._store = open_store(config.online_store)
        self._definition = VersionWatcher(
            "feature-lookup", version_resolver(config), lambda version: load_definition(config, version),
            config.reload_interval_s, follow=config.model_alias is not None,
        )

    def rows(self, user_id: Any, item_ids: list[Any], context: dict[str, Any] | None) -> RequestRows:
        return request_rows(self._store, self._definition.current, user_id, item_ids, context)

    def history(self, user_id: Any) -> list[Any]:
        return user_history(self._store, self._definition.current, user_id)

    def __del__(self) -> None:
        self._definition.close()
        self._store.close()


@serve.deployment
class Ranker:
    """Scores candidates with the registry's current version, batching concurrent requests."""

    def __init__(self, config: ServingConfig) -> None:
        self._config = config
        self._model = VersionWatcher(
            "ranker", version_resolver(config), lambda version: load_servable(config, version),
            config.reload_interval_s, follow=config.model_alias is not None,
        )
        self.rank.set_max_batch_size(config.batching.max_batch_size)
        self.rank.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)

    @serve.batch
    async def rank(self, requests: list[RankRequest]) -> list[RankResult]:
        # One version for the whole batch, taken before the forward: a swap during it changes nothing.
        # The forward runs on the event loop on purpose: requests that arrive meanwhile pile up and
        # form the next batch. With the forward in asyncio.to_thread, batches averaged 1.05 requests
        # at concurrency 8 instead of 4.2 (GIL contention with the loop; docs/benchmarks/serving.md).
        return rank_batch(self._model.current, requests)

    def candidates(self, history: list[Any], n: int) -> tuple[list[Any], str]:
        """Catalog candidates for a request without any: (item ids, how they were chosen)."""
        servable = self._model.current
        if self._config.retrieval == "similarity":
            return servable.similar_items(history, n), "similarity"
        return servable.popular_items(n, exclude=set(history)), "popularity"

    def describe(self) -> dict[str, Any]:
        return self._model.current.describe()

    def __del__(self) -> None:
        self._model.close()
