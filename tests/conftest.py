"""Fixtures for tests against the real local stack (`cityops stack up`).

Tests marked `stack` get the running stack; each module that writes to the database gets
its own throwaway database, migrated from scratch, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """Start the stack if it is not up (idempotent) and return its settings."""
    from shared.stack import manager

    env = manager.up(quiet=True)
    for k, v in env.items():
        os.environ.setdefault(k, v)
    return env


def _with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + db))


@pytest.fixture(scope="module")
def db_url(stack_env) -> Iterator[str]:
    """A fresh, migrated database for this test module, dropped afterwards."""
    from shared.storage.migrate import migrate

    name = f"test_{secrets.token_hex(4)}"
    admin = stack_env["CITYOPS_DB_URL"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(admin, name)
    with psycopg.connect(url) as conn:
        migrate(conn)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.25, what: str = "condition"):
    """Poll until predicate() is truthy; fail with `what` after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def async_wait_for(predicate, timeout: float = 60.0, interval: float = 0.25, what: str = "condition"):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
