"""Client errors keep their status and message across replicas, and slow requests end with a 504."""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace

import pytest

from serving.config import ServingConfig
from serving.errors import RequestTimeoutError, ServingError, UnknownTaskError


def test_errors_cross_process_boundaries_intact():
    # Replica errors travel pickled (ranker -> ingress); their status and message must survive.
    error = pickle.loads(pickle.dumps(UnknownTaskError("clik", ["click", "like"])))
    assert isinstance(error, ServingError)
    assert (error.status_code, error.kind) == (422, "unknown_task")
    assert "clik" in error.message and "click" in error.message


def test_a_request_over_its_time_limit_is_a_504_saying_so():
    from serving.ingress import Ingress

    ingress = SimpleNamespace(_config=ServingConfig(model_uri="models:/m@champion", request_timeout_s=0.05))
    with pytest.raises(RequestTimeoutError, match="0.05 s") as raised:
        asyncio.run(Ingress.func_or_class._within_timeout(ingress, asyncio.sleep(5)))
    assert (raised.value.status_code, raised.value.kind) == (504, "timeout")
