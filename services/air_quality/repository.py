"""All SQL of the air-quality service: grids, station forecasts, source attributions.

Every write is an upsert on the table's natural key, so a replayed batch changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from schemas.products import AirGrid, SourceAttribution, StationForecast


async def write_grid(conn: psycopg.AsyncConnection, grid: AirGrid, districts: list[str | None]) -> int:
    """One pollutant's grid at one time; idempotent on (pollutant, cell_id, valid_at)."""
    rows = [(grid.valid_at, grid.pollutant, c.cell_id, c.lat, c.lon, c.value, c.std, c.aqi, d)
            for c, d in zip(grid.cells, districts, strict=True)]
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO air_grid (valid_at, pollutant, cell_id, lat, lon, value, std, aqi, district) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT ON CONSTRAINT air_grid_key DO UPDATE SET "
            "value = EXCLUDED.value, std = EXCLUDED.std, aqi = EXCLUDED.aqi", rows)
    return len(rows)


async def write_forecast(conn: psycopg.AsyncConnection, f: StationForecast) -> int:
    """One station's forecast, a row per horizon; idempotent on (domain, station, variable, horizon, issued_at)."""
    from datetime import timedelta

    rows = [(f.issued_at, f.station_id, f.variable, h, f.issued_at + timedelta(hours=h), v, f.model)
            for h, v in zip(f.horizons_h, f.values, strict=True)]
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO forecasts (issued_at, domain, station_id, variable, horizon_h, valid_at, value, model) "
            "VALUES (%s, 'air', %s, %s, %s, %s, %s, %s) ON CONFLICT ON CONSTRAINT forecasts_key DO UPDATE SET "
            "value = EXCLUDED.value, model = EXCLUDED.model", rows)
    return len(rows)


async def write_attribution(conn: psycopg.AsyncConnection, a: SourceAttribution) -> int:
    """A station-hour's ranked sources; idempotent on (station, pollutant, source, at)."""
    rows = [(a.at, a.station_id, a.pollutant, c["source_id"], c["contribution"], c.get("confidence"), c["rank"])
            for c in a.contributions]
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO source_attributions (at, station_id, pollutant, source_id, contribution, confidence, rank) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT ON CONSTRAINT source_attributions_key DO UPDATE SET "
            "contribution = EXCLUDED.contribution, confidence = EXCLUDED.confidence, rank = EXCLUDED.rank", rows)
    return len(rows)


async def calibration_readings(conn: psycopg.AsyncConnection, sensor_ids: list[str], since: datetime,
                               until: datetime) -> list[tuple]:
    """Stored readings (sensor_id, time, quantity, value) of pm25, rh and temp of the given sensors with
    since < time <= until that passed the gateway's QC (flag 1 or 2, as the stream handler takes them)."""
    cur = await conn.execute(
        "SELECT sensor_id, time, quantity, value FROM observations WHERE domain = 'air' AND sensor_id = ANY(%s) "
        "AND quantity IN ('pm25', 'rh', 'temp') AND qc IN (1, 2) AND time > %s AND time <= %s ORDER BY time",
        (sensor_ids, since, until))
    return await cur.fetchall()


async def latest_grid(conn: psycopg.AsyncConnection, pollutant: str) -> list[dict[str, Any]]:
    """The cells of the newest grid of `pollutant` (empty when none yet)."""
    cur = await conn.execute(
        "SELECT valid_at, cell_id, lat, lon, value, std, aqi, district FROM air_grid WHERE pollutant = %s AND "
        "valid_at = (SELECT max(valid_at) FROM air_grid WHERE pollutant = %s) ORDER BY cell_id",
        (pollutant, pollutant))
    cols = [c.name for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def latest_attributions(conn: psycopg.AsyncConnection, limit_hours: int = 1) -> list[dict[str, Any]]:
    """The ranked sources of the newest attributed hour(s), per station."""
    cur = await conn.execute(
        "SELECT at, station_id, pollutant, source_id, contribution, confidence, rank FROM source_attributions "
        "WHERE at > (SELECT max(at) FROM source_attributions) - make_interval(hours => %s) "
        "ORDER BY at DESC, station_id, rank", (limit_hours,))
    cols = [c.name for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def count_rows(conn: psycopg.AsyncConnection, since: datetime | None = None) -> dict[str, int]:
    """Row counts of the air product tables (what the tests and the demo account for)."""
    out = {}
    for table, col in (("air_grid", "valid_at"), ("forecasts", "issued_at"), ("source_attributions", "at")):
        extra = " AND domain = 'air'" if table == "forecasts" else ""
        if since is None:
            q, args = f"SELECT count(*) FROM {table} WHERE true{extra}", ()
        else:
            q, args = f"SELECT count(*) FROM {table} WHERE {col} >= %s{extra}", (since,)
        out[table] = (await (await conn.execute(q, args)).fetchone())[0]
    return out
