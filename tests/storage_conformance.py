"""One data set and one set of expected answers for the storage conformance tests.

tests/test_storage_timescale.py (TimescaleDB in WebAssembly) and tests/test_storage_plain.py
(the local plain PostgreSQL) both load `sample_observations()` with `load_sample()` and assert
`expected_hourly_means()` / `expected_bucketed_means()`: the two databases must give the SAME
answers to the same SQL text of shared/storage/queries.py.

Values are chosen so that every mean is exact in binary floating point, so the tests compare
with `==`. Times are two days back from the current hour: recent enough that no retention or
compression policy touches them, old enough that the hourly aggregate may materialise them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from shared.storage import queries

AIR = "air"


def sample_base() -> datetime:
    """Start of the hour the sample begins at, two days back, UTC."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)


def _obs(
    base: datetime,
    minutes: int,
    sensor_id: str,
    quantity: str,
    value: float,
    *,
    qc: int = 1,
    domain: str = AIR,
    unit: str = "ug/m3",
    district: str | None = "central",
) -> dict:
    return {
        "time": base + timedelta(minutes=minutes),
        "sensor_id": sensor_id,
        "quantity": quantity,
        "value": value,
        "unit": unit,
        "qc": qc,
        "domain": domain,
        "district": district,
    }


def sample_observations(base: datetime) -> list[dict]:
    """Distinct observations: what a database must keep."""
    return [
        # aq-001 pm25, hour 0: four good values (mean 13.5) and one failed QC (4) that no mean sees
        _obs(base, 0, "aq-001", "pm25", 10.0),
        _obs(base, 15, "aq-001", "pm25", 12.5),
        _obs(base, 30, "aq-001", "pm25", 15.0),
        _obs(base, 45, "aq-001", "pm25", 16.5),
        _obs(base, 50, "aq-001", "pm25", 500.0, qc=4),
        # hour 1
        _obs(base, 60, "aq-001", "pm25", 20.0),
        _obs(base, 90, "aq-001", "pm25", 21.0),
        # a second quantity of the same sensor
        _obs(base, 5, "aq-001", "no2", 40.0),
        _obs(base, 35, "aq-001", "no2", 41.0),
        # QC 2 ("suspect") still counts as data
        _obs(base, 10, "aq-002", "pm25", 8.0, qc=2),
        # outside the queried window (the hour before) and outside the queried domain
        _obs(base, -1, "aq-001", "pm25", 7.0),
        _obs(base, 20, "wm-001", "flow_m3h", 100.0, domain="water", unit="m3/h", district=None),
    ]


def duplicate_observation(base: datetime) -> dict:
    """Same (sensor, quantity, time) as a row already loaded, other value: must be ignored."""
    return _obs(base, 15, "aq-001", "pm25", 999.0)


def load_sample(conn: psycopg.Connection, base: datetime) -> tuple[int, int]:
    """Insert the sample row by row, then the duplicate: (rows inserted, rows the duplicate inserted)."""
    inserted = 0
    with conn.transaction():
        for row in sample_observations(base):
            inserted += conn.execute(queries.INSERT_OBSERVATION, row).rowcount
    with conn.transaction():
        duplicate = conn.execute(queries.INSERT_OBSERVATION, duplicate_observation(base)).rowcount
    return inserted, duplicate


def hourly_window(base: datetime) -> dict:
    """Parameters of queries.HOURLY_MEANS (and of the refresh) covering the sample's two hours."""
    return {"domain": AIR, "start": base, "end": base + timedelta(hours=2)}


def expected_hourly_means(base: datetime) -> list[tuple]:
    """(bucket, sensor_id, quantity, avg_value, n), in the query's order."""
    h1 = base + timedelta(hours=1)
    return [
        (base, "aq-001", "no2", 40.5, 2),
        (base, "aq-001", "pm25", 13.5, 4),
        (base, "aq-002", "pm25", 8.0, 1),
        (h1, "aq-001", "pm25", 20.5, 2),
    ]


def bucketed_params(base: datetime) -> dict:
    return {
        "width": timedelta(minutes=30),
        "sensor_id": "aq-001",
        "quantity": "pm25",
        "start": base,
        "end": base + timedelta(hours=2),
    }


def expected_bucketed_means(base: datetime) -> list[tuple]:
    """(bucket, avg_value, min_value, max_value, n) of aq-001 pm25 in 30-minute buckets."""
    m = timedelta(minutes=1)
    return [
        (base, 11.25, 10.0, 12.5, 2),
        (base + 30 * m, 15.75, 15.0, 16.5, 2),
        (base + 60 * m, 20.0, 20.0, 20.0, 1),
        (base + 90 * m, 21.0, 21.0, 21.0, 1),
    ]
