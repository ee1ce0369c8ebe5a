"""Our migrations and observation queries on a REAL TimescaleDB 2.23 (compiled to WebAssembly).

Starts stack/pglite/server.mjs (npm packages installed on first use), applies every migration
with the same runner production uses, and asserts the same answers as tests/test_storage_plain.py.
PGlite serves one connection at a time: the whole module shares one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from storage_conformance import (
    bucketed_params,
    expected_bucketed_means,
    expected_hourly_means,
    hourly_window,
    load_sample,
    sample_base,
    sample_observations,
)

from shared.stack.pglite import PGliteTimescale
from shared.storage import migrate, queries

pytestmark = pytest.mark.stack

TIME_SERIES_TABLES = {
    ("public", "observations"),
    ("restricted", "worker_observations"),
    ("public", "air_grid"),
    ("public", "equipment_health"),
}
POLICY_KEYS = {"start_offset", "end_offset", "compress_after", "drop_after"}


@pytest.fixture(scope="module")
def conn() -> Iterator[psycopg.Connection]:
    with PGliteTimescale() as server, psycopg.connect(server.conninfo, autocommit=True) as c:
        print(f"PGlite with TimescaleDB ready in {server.startup_seconds:.1f} s")
        yield c


@pytest.fixture(scope="module")
def applied(conn: psycopg.Connection) -> list[str]:
    return migrate.migrate(conn)


@pytest.fixture(scope="module")
def loaded(conn: psycopg.Connection, applied: list[str]) -> dict:
    base = sample_base()
    inserted, duplicate = load_sample(conn, base)
    window = hourly_window(base)
    # a continuous aggregate shows what has been materialised; the policy would do this later
    conn.execute(queries.REFRESH_HOURLY, {"start": window["start"], "end": window["end"]})
    return {"base": base, "inserted": inserted, "duplicate": duplicate}


def test_timescaledb_2_23_is_available(conn: psycopg.Connection) -> None:
    assert migrate.has_timescale(conn)
    (version,) = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    assert version.startswith("2.23")


def test_every_migration_applies_with_the_timescale_variant(
    conn: psycopg.Connection, applied: list[str]
) -> None:
    expected = [m.path.name for m in migrate.available() if m.variant in (None, "timescale")]
    assert applied == expected
    assert {variant for _, _, variant in migrate.status(conn)} == {"timescale"}
    assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]
    assert migrate.migrate(conn) == []  # applied once each


def test_time_series_tables_are_hypertables(conn: psycopg.Connection, applied: list[str]) -> None:
    rows = conn.execute(
        "SELECT hypertable_schema, hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
    ).fetchall()
    assert {(s, n) for s, n, _ in rows} >= TIME_SERIES_TABLES
    assert ("public", "observations", True) in rows


def test_hourly_continuous_aggregate_exists(conn: psycopg.Connection, applied: list[str]) -> None:
    row = conn.execute(
        "SELECT view_schema, hypertable_name FROM timescaledb_information.continuous_aggregates"
        " WHERE view_name = 'observations_hourly'"
    ).fetchone()
    assert row == ("public", "observations")


def test_refresh_compression_and_retention_policies_exist(
    conn: psycopg.Connection, applied: list[str]
) -> None:
    jobs = {
        (proc, f"{schema}.{table}", tuple(sorted((k, v) for k, v in config.items() if k in POLICY_KEYS)))
        for proc, schema, table, config in conn.execute(
            "SELECT proc_name, hypertable_schema, hypertable_name, config FROM timescaledb_information.jobs"
            " WHERE proc_name LIKE 'policy_%' AND hypertable_name IS NOT NULL"
        ).fetchall()
    }
    assert jobs >= {
        (
            "policy_refresh_continuous_aggregate",
            "public.observations_hourly",
            (("end_offset", "01:00:00"), ("start_offset", "3 days")),
        ),
        ("policy_compression", "public.observations", (("compress_after", "7 days"),)),
        ("policy_retention", "public.observations", (("drop_after", "400 days"),)),
        ("policy_retention", "restricted.worker_observations", (("drop_after", "7 days"),)),
        ("policy_retention", "public.air_grid", (("drop_after", "90 days"),)),
    }


def test_duplicate_observation_is_ignored(conn: psycopg.Connection, loaded: dict) -> None:
    assert loaded["inserted"] == len(sample_observations(loaded["base"]))
    assert loaded["duplicate"] == 0
    assert conn.execute("SELECT count(*) FROM observations").fetchone()[0] == loaded["inserted"]


def test_hourly_means_from_the_continuous_aggregate(conn: psycopg.Connection, loaded: dict) -> None:
    rows = conn.execute(queries.HOURLY_MEANS, hourly_window(loaded["base"])).fetchall()
    assert rows == expected_hourly_means(loaded["base"])


def test_bucketed_means_with_date_bin_and_time_bucket(conn: psycopg.Connection, loaded: dict) -> None:
    params = bucketed_params(loaded["base"])
    expected = expected_bucketed_means(loaded["base"])
    assert conn.execute(queries.BUCKETED_MEANS, params).fetchall() == expected
    assert conn.execute(queries.BUCKETED_MEANS_TIME_BUCKET, params).fetchall() == expected


@pytest.mark.parametrize(
    "width", [timedelta(minutes=45), timedelta(hours=5), timedelta(days=1), timedelta(days=7)]
)
def test_date_bin_puts_rows_in_the_buckets_time_bucket_does(
    conn: psycopg.Connection, loaded: dict, width: timedelta
) -> None:
    # widths that do not divide an hour or a day show whether the two origins really agree
    params = {
        **bucketed_params(loaded["base"]),
        "width": width,
        "start": loaded["base"] - timedelta(days=1),
        "end": loaded["base"] + timedelta(days=1),
    }
    assert (
        conn.execute(queries.BUCKETED_MEANS, params).fetchall()
        == conn.execute(queries.BUCKETED_MEANS_TIME_BUCKET, params).fetchall()
    )
