"""Our migrations and observation queries on the local plain PostgreSQL (`cityops stack up`).

Same data, same SQL text, same expected numbers as tests/test_storage_timescale.py. Runs in a
throwaway database created for this module and dropped after it, never in the main one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from storage_conformance import (
    bucketed_params,
    expected_bucketed_means,
    expected_hourly_means,
    hourly_window,
    load_sample,
    sample_base,
    sample_observations,
)

from shared import settings
from shared.storage import migrate, queries

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def conn() -> Iterator[psycopg.Connection]:
    url = settings.load().db_url
    name = f"cityops_test_storage_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"local PostgreSQL not reachable ({exc}): run `.venv/bin/cityops stack up`")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            with psycopg.connect(make_conninfo(url, dbname=name), autocommit=True) as c:
                yield c
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def applied(conn: psycopg.Connection) -> list[str]:
    return migrate.migrate(conn)


@pytest.fixture(scope="module")
def loaded(conn: psycopg.Connection, applied: list[str]) -> dict:
    base = sample_base()
    inserted, duplicate = load_sample(conn, base)
    return {"base": base, "inserted": inserted, "duplicate": duplicate}


def test_every_migration_applies_with_the_plain_variant(conn: psycopg.Connection, applied: list[str]) -> None:
    assert not migrate.has_timescale(conn)
    expected = [m.path.name for m in migrate.available() if m.variant in (None, "plain")]
    assert applied == expected
    assert {variant for _, _, variant in migrate.status(conn)} == {"plain"}
    assert migrate.migrate(conn) == []  # applied once each


def test_duplicate_observation_is_ignored(conn: psycopg.Connection, loaded: dict) -> None:
    assert loaded["inserted"] == len(sample_observations(loaded["base"]))
    assert loaded["duplicate"] == 0
    assert conn.execute("SELECT count(*) FROM observations").fetchone()[0] == loaded["inserted"]


def test_hourly_means_from_the_view(conn: psycopg.Connection, loaded: dict) -> None:
    rows = conn.execute(queries.HOURLY_MEANS, hourly_window(loaded["base"])).fetchall()
    assert rows == expected_hourly_means(loaded["base"])


def test_bucketed_means_with_date_bin(conn: psycopg.Connection, loaded: dict) -> None:
    rows = conn.execute(queries.BUCKETED_MEANS, bucketed_params(loaded["base"])).fetchall()
    assert rows == expected_bucketed_means(loaded["base"])
