"""All SQL of the weather service: station nowcasts (`forecasts`, domain 'weather') and `bulletins`.

Every write is an upsert on the table's natural key, so a replayed hour changes nothing.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import psycopg

from schemas.products import StationForecast


async def write_nowcasts(conn: psycopg.AsyncConnection, casts: list[tuple[StationForecast, list[str]]]) -> int:
    """Station nowcasts, a row per horizon with the model chosen for it; idempotent on
    (domain, station, variable, horizon, issued_at)."""
    rows = []
    for f, models in casts:
        p10 = f.p10 or [None] * len(f.values)
        p90 = f.p90 or [None] * len(f.values)
        for h, v, lo, hi, m in zip(f.horizons_h, f.values, p10, p90, models, strict=True):
            rows.append((f.issued_at, f.station_id, f.variable, h, f.issued_at + timedelta(hours=h), v, lo, hi, m))
    if not rows:
        return 0
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO forecasts (issued_at, domain, station_id, variable, horizon_h, valid_at, value, p10, p90, model) "
            "VALUES (%s, 'weather', %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT ON CONSTRAINT forecasts_key DO UPDATE "
            "SET value = EXCLUDED.value, p10 = EXCLUDED.p10, p90 = EXCLUDED.p90, model = EXCLUDED.model", rows)
    return len(rows)


async def write_bulletin(conn: psycopg.AsyncConnection, *, bulletin_id: str, district: str, issued_at: datetime,
                         text_zh: str, text_en: str, signals: list[str], chart_png_b64: str, html: str) -> None:
    """One district's hourly bulletin; idempotent on bulletin_id."""
    await conn.execute(
        "INSERT INTO bulletins (bulletin_id, district, issued_at, text_zh, text_en, signals, chart_png, html) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (bulletin_id) DO UPDATE SET text_zh = EXCLUDED.text_zh, "
        "text_en = EXCLUDED.text_en, signals = EXCLUDED.signals, chart_png = EXCLUDED.chart_png, html = EXCLUDED.html",
        (bulletin_id, district, issued_at, text_zh, text_en, json.dumps(signals), chart_png_b64, html))


_BULLETIN_COLS = "bulletin_id, district, issued_at, text_zh, text_en, signals, chart_png, html"


async def bulletin(conn: psycopg.AsyncConnection, bulletin_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(f"SELECT {_BULLETIN_COLS} FROM bulletins WHERE bulletin_id = %s", (bulletin_id,))
    row = await cur.fetchone()
    return dict(zip([c.name for c in cur.description], row, strict=True)) if row else None


async def latest_bulletin(conn: psycopg.AsyncConnection, district: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_BULLETIN_COLS} FROM bulletins WHERE district = %s ORDER BY issued_at DESC LIMIT 1", (district,))
    row = await cur.fetchone()
    return dict(zip([c.name for c in cur.description], row, strict=True)) if row else None


async def latest_nowcasts(conn: psycopg.AsyncConnection, *, station_id: str | None = None,
                          variable: str | None = None) -> list[dict[str, Any]]:
    """Every horizon of the newest weather nowcast of each (station, variable), optionally filtered."""
    cur = await conn.execute(
        """SELECT f.station_id, f.variable, f.issued_at, f.horizon_h, f.valid_at, f.value, f.p10, f.p90, f.model
           FROM forecasts f JOIN (
               SELECT station_id, variable, max(issued_at) AS issued_at FROM forecasts
               WHERE domain = 'weather' AND (%(st)s::text IS NULL OR station_id = %(st)s)
                 AND (%(var)s::text IS NULL OR variable = %(var)s)
               GROUP BY station_id, variable) n
             ON f.station_id = n.station_id AND f.variable = n.variable AND f.issued_at = n.issued_at
           WHERE f.domain = 'weather' ORDER BY f.station_id, f.variable, f.horizon_h""",
        {"st": station_id, "var": variable})
    cols = [c.name for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def weather_readings(conn: psycopg.AsyncConnection, since: datetime, until: datetime,
                           quantity: str | None = None) -> list[tuple]:
    """Stored weather readings (sensor_id, time, quantity, value, qc, district) with since <= time < until,
    of one quantity or all."""
    cur = await conn.execute(
        "SELECT sensor_id, time, quantity, value, qc, district FROM observations "
        "WHERE domain = 'weather' AND time >= %s AND time < %s AND (%s::text IS NULL OR quantity = %s) ORDER BY time",
        (since, until, quantity, quantity))
    return await cur.fetchall()
