"""A fresh consumer group can start at a point in time instead of replaying the whole retention."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from shared import kafka

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]
TOPIC = "cityops.deadletter.v1"


async def _drain(c, *want: bytes, timeout: float = 30) -> list[bytes]:
    """Everything read until all of `want` were seen (or the timeout)."""
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(w in seen for w in want):
        batch = await c.getmany(timeout_ms=500)
        seen += [r.key for recs in batch.values() for r in recs]
    return seen


async def test_group_prefix_and_start_time(stack_env, monkeypatch):
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    tok = secrets.token_hex(4).encode()
    p = kafka.producer(bootstrap)
    await p.start()
    try:
        await (await p.send(TOPIC, b"{}", key=b"old-" + tok))
        await asyncio.sleep(1.0)
        cut_ms = int(time.time() * 1000)
        await asyncio.sleep(0.2)
        await (await p.send(TOPIC, b"{}", key=b"new-" + tok))
    finally:
        await p.stop()

    monkeypatch.setenv("CITYOPS_KAFKA_GROUP_PREFIX", f"t{tok.decode()}-")
    monkeypatch.setenv("CITYOPS_KAFKA_START_AT_MS", str(cut_ms))
    c = kafka.consumer(bootstrap, "start-at", TOPIC)
    assert c._group_id == f"t{tok.decode()}-start-at"  # noqa: SLF001
    await c.start()
    try:
        seen = await _drain(c, b"new-" + tok)
    finally:
        await c.stop()
    assert b"new-" + tok in seen
    assert b"old-" + tok not in seen

    # without a start time a fresh group reads from the beginning, old record included
    monkeypatch.delenv("CITYOPS_KAFKA_START_AT_MS")
    monkeypatch.setenv("CITYOPS_KAFKA_GROUP_PREFIX", f"u{tok.decode()}-")
    c = kafka.consumer(bootstrap, "start-at", TOPIC)
    await c.start()
    try:
        seen = await _drain(c, b"new-" + tok, b"old-" + tok, timeout=60)
    finally:
        await c.stop()
    assert b"old-" + tok in seen
