"""Moving the registry alias swaps the served version without failing a request."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from mlflow import MlflowClient

from conftest import (ServedAnswer, serving_keep_requesting, serving_register, serving_serve_again,
                      serving_train_tiny_model, serving_wait_everywhere)

pytestmark = pytest.mark.slow


def test_moving_the_alias_swaps_the_version_with_requests_in_flight(serving_app):
    client = MlflowClient(tracking_uri=serving_app.tracking_uri)
    before = client.get_model_version_by_alias(serving_app.model_name, "champion").version
    new_version = serving_register(serving_train_tiny_model(serving_app.prepared, seed=1), serving_app.prepared,
                                   serving_app.model_name, serving_app.tracking_uri, alias=None)

    async def scenario() -> tuple[list[ServedAnswer], float]:
        stop = asyncio.Event()
        load = asyncio.create_task(serving_keep_requesting(serving_app, stop))
        await asyncio.sleep(1.0)  # requests on the old version are flowing
        client.set_registered_model_alias(serving_app.model_name, "champion", new_version)
        async with httpx.AsyncClient(base_url=serving_app.base_url,
                                     headers={"Authorization": f"Bearer {serving_app.token}"}) as probe:
            _, swapped = await serving_wait_everywhere(probe, lambda m: m["version"] == str(new_version),
                                                       f"version {new_version} served")
        await asyncio.sleep(1.0)  # and requests keep flowing on the new one
        stop.set()
        return await load, swapped

    try:
        answers, swapped = asyncio.run(scenario())
    finally:  # the session's endpoint serves the version it served before, for the tests after this one
        serving_serve_again(serving_app, str(before))
    assert answers and all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:5]
    by_sending = sorted(answers, key=lambda a: a.sent_at)
    assert by_sending[0].version == str(before) and by_sending[-1].version == str(new_version)
    # Once every replica has swapped, no request is answered by the old version.
    assert {a.version for a in by_sending if a.sent_at > swapped} == {str(new_version)}
