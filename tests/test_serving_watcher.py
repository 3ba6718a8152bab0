"""VersionWatcher (serving/watcher.py) on its own: a version the registry refuses is recorded and kept
out until the alias moves; any other failure is retried at the next poll."""

from __future__ import annotations

import pytest

from registry.integrity import RefusedVersionError
from serving.model_source import refusal_of
from serving.watcher import VersionWatcher


class Registry:
    """An alias and the loads asked for; version "bad" is refused, "flaky" fails once."""

    def __init__(self) -> None:
        self.alias = "1"
        self.loads: list[str] = []
        self.flaky_failures = 1

    def load(self, version: str) -> str:
        self.loads.append(version)
        if version == "bad":
            raise RefusedVersionError("model m version bad: file MLmodel has sha256 x, expected y", "digest_mismatch")
        if version == "flaky" and self.flaky_failures:
            self.flaky_failures -= 1
            raise ConnectionError("the artifact store did not answer")
        return f"model {version}"


def _refusal(error: Exception):
    refused = refusal_of(error)
    return None if refused is None else (refused.reason, str(refused))


@pytest.fixture()
def watched():
    registry, refusals = Registry(), []
    watcher = VersionWatcher("test", lambda: registry.alias, registry.load, 60.0, follow=False,
                             refusal=_refusal, on_refuse=refusals.append)
    return registry, watcher, refusals


def test_a_refused_version_is_kept_out_and_reported_until_the_alias_moves(watched):
    registry, watcher, refusals = watched
    registry.alias = "bad"
    assert not watcher.refresh() and not watcher.refresh()
    assert registry.loads == ["1", "bad"]  # tried once, not at every poll
    assert watcher.current == "model 1" and watcher.version == "1"
    assert watcher.refused.version == "bad" and watcher.refused.reason == "digest_mismatch"
    assert "expected y" in watcher.refused.message and [r.version for r in refusals] == ["bad"]
    registry.alias = "2"
    assert watcher.refresh() and watcher.current == "model 2" and watcher.refused is None


def test_moving_the_alias_back_to_the_served_version_clears_the_refusal(watched):
    registry, watcher, _ = watched
    registry.alias = "bad"
    watcher.refresh()
    registry.alias = "1"
    assert not watcher.refresh() and watcher.refused is None


def test_a_failure_that_is_not_a_refusal_is_retried(watched):
    registry, watcher, refusals = watched
    registry.alias = "flaky"
    with pytest.raises(ConnectionError):
        watcher.refresh()
    assert watcher.refused is None and not refusals
    assert watcher.refresh() and watcher.current == "model flaky"


def test_a_refusal_raised_in_a_replica_is_found_through_rays_wrapping():
    class RayTaskError(Exception):  # Ray's error keeps the replica's exception as `cause`
        def __init__(self, cause: Exception) -> None:
            super().__init__(f"Traceback (most recent call last): ...\n{cause}")
            self.cause = cause

    inner = RefusedVersionError("model m version 3: file x is missing", "missing_file")
    assert refusal_of(RayTaskError(inner)) is inner
    assert refusal_of(RuntimeError("timeout")) is None
