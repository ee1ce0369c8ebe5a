"""The emergency service's consumer supervision: a Kafka failure (a commit refused after a rebalance) rejoins the
group instead of stopping the service; any other failure still stops it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import CommitFailedError

from services.emergency.app import supervise


class _Runs:
    """Stands in for a StreamProcessor's `run`: fails as told, then runs until stopped."""

    def __init__(self, failures: list[BaseException]):
        self.name = "emergency-test"
        self.failures = failures
        self.calls = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        await stop.wait()


async def test_a_refused_commit_rejoins_and_keeps_running(caplog) -> None:
    c = _Runs([CommitFailedError("group rebalanced"), CommitFailedError("again")])
    stop = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="cityops.emergency"):
        task = asyncio.create_task(supervise(c, stop, backoff_s=0.01))
        for _ in range(200):
            if c.calls == 3:
                break
            await asyncio.sleep(0.01)
        assert c.calls == 3 and not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
    assert sum("rejoining" in r.getMessage() for r in caplog.records) == 2


async def test_a_bug_still_stops_the_service() -> None:
    c = _Runs([KeyError("kind")])
    with pytest.raises(KeyError):
        await supervise(c, asyncio.Event(), backoff_s=0.01)
    assert c.calls == 1
