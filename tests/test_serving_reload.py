"""Moving the registry alias swaps the served version without failing a request."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from mlflow import MlflowClient

from conftest import serving_keep_requesting, serving_register, serving_train_tiny_model

pytestmark = pytest.mark.slow


def test_moving_the_alias_swaps_the_version_with_requests_in_flight(serving_app):
    client = MlflowClient(tracking_uri=serving_app.tracking_uri)
    before = client.get_model_version_by_alias(serving_app.model_name, "champion").version
    new_version = serving_register(serving_train_tiny_model(serving_app.prepared, seed=1), serving_app.prepared,
                                   serving_app.model_name, serving_app.tracking_uri, alias=None)

    async def scenario() -> list[tuple[int, str | None]]:
        stop = asyncio.Event()
        load = asyncio.create_task(serving_keep_requesting(serving_app, stop))
        await asyncio.sleep(1.0)  # requests on the old version are flowing
        client.set_registered_model_alias(serving_app.model_name, "champion", new_version)
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient(base_url=serving_app.base_url,
                                     headers={"Authorization": f"Bearer {serving_app.token}"}) as probe:
            while time.monotonic() < deadline:
                if (await probe.get("/v1/model")).json()["version"] == str(new_version):
                    break
                await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)  # and requests keep flowing on the new one
        stop.set()
        return await load

    answers = asyncio.run(scenario())
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]
    versions = [version for _, version in answers]
    assert versions[0] == str(before) and versions[-1] == str(new_version)
    # Once a request saw the new version, no later one went back to the old one.
    first_new = versions.index(str(new_version))
    assert set(versions[first_new:]) == {str(new_version)}
