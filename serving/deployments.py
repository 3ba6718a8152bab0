"""The Serve deployments behind the ingress: online feature lookup and the batching ranker.

Neither follows the registry alias: every call carries the model version the ingress chose for
the request as Serve's multiplexed model id (`handle.options(multiplexed_model_id=version)`), and
each replica keeps the versions it was asked for (`@serve.multiplexed`: the current one and the
one before, loaded on first use). So the dataset definition that builds a request's rows and the
model that scores them are always the same version's, even while the alias moves; Serve routes
calls for a version to replicas that already hold it.

Client errors travel back as values (`RankResult.error`, a returned `ServingError`) rather than
raised exceptions, so the replicas log no traceback for a bad request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from feature_store.definitions import DatasetDefinition
from feature_store.online import SeenItems, open_online_store
from feature_store.online.representations import RepresentationStore
from serving import metrics
from serving.config import ServingConfig
from serving.errors import ModelNotReadyError, RequestTimeoutError, ServingError
from serving.features import RequestRows, RowsQuery, StoreGuard, request_rows
from serving.model_source import load_definition, load_servable, refusal_of, version_resolver
from serving.ranking import RankRequest, RankResult, rank_batch
from serving.retrieval import (Candidates, UserState, given_candidates, popular_items, read_seen_items,
                               read_user_state, stage_candidates)
from serving.servable import ServableModel

log = logging.getLogger("ray.serve")

# A replica keeps the version being served and the one before it (requests pinned to the old
# version finish on it while the alias moves).
VERSIONS_PER_REPLICA = 2
# Popular items ranked for a request without candidates when the version has no recommendation stage.
POPULAR_CANDIDATES = 200


def _expired(deadline: float) -> RequestTimeoutError | None:
    if time.time() > deadline:
        return RequestTimeoutError("the request's deadline passed before it could be worked on")
    return None


@serve.deployment
class FeatureLookup:
    """Reads the user's and candidates' latest features from the online store."""

    def __init__(self, config: ServingConfig) -> None:
        self._config = config
        # A missing or unreadable store fails the replica's start (and `serve.run`): never an empty store.
        self._guard = StoreGuard(open_online_store(config.online_store), config.on_store_unavailable,
                                 config.store_retry_interval_s)
        self._representations: dict[str, RepresentationStore] = {}  # per version: stored user sides

    @serve.multiplexed(max_num_models_per_replica=VERSIONS_PER_REPLICA)
    async def definition(self, version: str) -> DatasetDefinition:
        return await asyncio.to_thread(load_definition, self._config, version)

    async def _pinned_definition(self) -> DatasetDefinition:
        return await self.definition(serve.get_multiplexed_model_id())

    async def rows(self, queries: list[RowsQuery], deadline: float,
                   stored_users: bool = False) -> list[RequestRows] | ServingError:
        """Rows for every query (one per distinct user and context of a request), in one call; with
        `stored_users`, each with its user's stored representation when fresh for the pinned version."""
        definition = await self._pinned_definition()
        if expired := _expired(deadline):
            return expired
        representations = self._stored_users(serve.get_multiplexed_model_id()) if stored_users else None
        try:
            found = await asyncio.to_thread(
                lambda: [request_rows(self._guard, definition, q, representations) for q in queries])
        except ServingError as err:
            return err
        metrics.count_cold_start(sum(1 for f in found if f.cold_start and not f.degraded))
        return found

    async def user_state(self, user_id: Any, context: dict[str, Any] | None,
                         deadline: float) -> UserState | ServingError:
        """The user's row and seen set, for candidate retrieval."""
        definition = await self._pinned_definition()
        if expired := _expired(deadline):
            return expired
        try:
            return await asyncio.to_thread(read_user_state, self._guard, definition, user_id, context)
        except ServingError as err:
            return err

    async def seen(self, user_id: Any, deadline: float) -> tuple[SeenItems, bool] | ServingError:
        """The user's seen set and whether the store was unavailable."""
        definition = await self._pinned_definition()
        if expired := _expired(deadline):
            return expired
        try:
            return await asyncio.to_thread(read_seen_items, self._guard, definition, user_id)
        except ServingError as err:
            return err

    def _stored_users(self, version: str) -> RepresentationStore:
        """The version's stored user representations (its meta record is read once, then kept)."""
        if version not in self._representations:
            while len(self._representations) >= VERSIONS_PER_REPLICA:  # the oldest version goes first
                self._representations.pop(next(iter(self._representations)))
            self._representations[version] = RepresentationStore(self._guard.store, self._config.model_name, version)
        return self._representations[version]

    async def ping(self) -> str:
        """Answers once the pinned version's definition is loaded (warm-up of a new version)."""
        await self._pinned_definition()
        return serve.get_multiplexed_model_id()

    async def store_available(self) -> bool:
        """Whether the online store answers a read now (False also when it is being skipped)."""
        def probe() -> bool:
            try:
                return not self._guard.run(lambda store: store.read("_readiness", ["probe"]))[1]
            except ServingError:
                return False
        return await asyncio.to_thread(probe)

    def __del__(self) -> None:
        self._guard.store.close()


@serve.deployment
class Ranker:
    """Scores candidates with the pinned model version, batching concurrent requests."""

    async def __init__(self, config: ServingConfig) -> None:
        self._config = config
        self.rank.set_max_batch_size(config.batching.max_batch_size)
        self.rank.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)
        # A replica starts with the version the registry names now, so one that replaces a dead
        # replica takes traffic only once it can score; unless that version is refused (the ingress
        # then keeps requests on the one before, which this replica loads on their first call).
        version = await asyncio.to_thread(version_resolver(config))
        try:
            await self.model(version)
        except Exception as err:
            refused = refusal_of(err)
            if refused is None:
                raise
            log.error("ranker: model version %s refused (%s); starting without it: %s", version, refused.reason,
                      refused)

    @serve.multiplexed(max_num_models_per_replica=VERSIONS_PER_REPLICA)
    async def model(self, version: str) -> ServableModel:
        log.info("ranker: loading model version %s", version)
        return await asyncio.to_thread(load_servable, self._config, version)

    async def _pinned_model(self) -> ServableModel:
        return await self.model(serve.get_multiplexed_model_id())

    @serve.batch
    async def rank(self, requests: list[RankRequest]) -> list[RankResult]:
        # Serve splits batches by multiplexed model id: one version for the whole batch.
        try:
            servable = await self._pinned_model()
        except Exception as err:  # noqa: BLE001 - the registry or the artifact store failed
            log.error("ranker: model version %s could not be loaded: %s", serve.get_multiplexed_model_id(), err)
            error = ModelNotReadyError(f"model version {serve.get_multiplexed_model_id()} could not be loaded")
            return [RankResult.failed(error)] * len(requests)
        results: list[RankResult | None] = [None] * len(requests)
        live = []
        for index, request in enumerate(requests):
            if expired := _expired(request.deadline):
                results[index] = RankResult.failed(expired)
            else:
                live.append(index)
        # The forward runs on the event loop on purpose: requests that arrive meanwhile pile up and
        # form the next batch. With the forward in asyncio.to_thread, batches averaged 1.05 requests
        # at concurrency 8 instead of 4.2 (GIL contention with the loop; docs/benchmarks/serving.md).
        for index, result in zip(live, rank_batch(servable, [requests[i] for i in live]), strict=True):
            results[index] = result
        if live:
            metrics.observe_batch(len(live))
            for index in live:
                metrics.observe_rows(requests[index].rows.num_rows)
        return results  # type: ignore[return-value]  # every slot is filled above

    async def candidates(self, state: UserState, exclude_seen: bool, per_source: int | None, k: int,
                         given: list[Any] | None = None) -> Candidates:
        """Candidates with the stage's terms: the request's own (`given`), else from the catalog: the
        version's recommendation stage (each source's best `per_source`, default the stage's), or the
        most popular items (at least k) for a version without one."""
        servable = await self._pinned_model()
        if given is not None:
            return given_candidates(servable.stage, state, given, exclude_seen)
        if servable.stage is None:
            n = max(per_source or POPULAR_CANDIDATES, k)
            return Candidates(popular_items(servable.popular, n, state.seen if exclude_seen else None), "popularity")
        return stage_candidates(servable.stage, state, exclude_seen, per_source)

    async def describe(self) -> dict[str, Any]:
        return (await self._pinned_model()).describe()
