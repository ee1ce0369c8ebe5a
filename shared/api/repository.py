"""All SQL of the query API. Read-only, except the audit row written when personal data is read.

Bucketed history uses `time_bucket()` under TimescaleDB and `date_bin()` with TimescaleDB's bucket
origin otherwise (`detect_timescale` runs once at start-up): both put a row in the same bucket.
Every statement takes named parameters; nothing from a request is ever formatted into SQL text
except the bucket function, chosen from two constants.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from shared.storage import queries
from shared.storage.queries import NOT_ABOUT_A_WORKER, TIME_BUCKET_ORIGIN

BUCKET_SQL = {
    True: "time_bucket(%(width)s::interval, time)",
    False: f"date_bin(%(width)s::interval, time, TIMESTAMPTZ '{TIME_BUCKET_ORIGIN}')",
}


async def detect_timescale(conn: psycopg.AsyncConnection) -> bool:
    cur = await conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
    row = await cur.fetchone()
    return bool(row and row[0])


async def _all(conn: psycopg.AsyncConnection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def sensors(
    conn, *, domains: list[str] | None, district: str | None, kind: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    return await _all(
        conn,
        """
        SELECT sensor_id, domain, kind, lat, lon, district, quantities
        FROM sensors
        WHERE NOT personal
          AND (%(domains)s::text[] IS NULL OR domain = ANY(%(domains)s))
          AND (%(district)s::text IS NULL OR district = %(district)s)
          AND (%(kind)s::text IS NULL OR kind = %(kind)s)
        ORDER BY sensor_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        {"domains": domains, "district": district, "kind": kind, "limit": limit, "offset": offset},
    )


async def latest(
    conn,
    *,
    domains: list[str],
    quantity: str | None,
    district: str | None,
    sensor_id: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """The newest good (QC 1/2) value per sensor and quantity, from the last 7 days."""
    return await _all(
        conn,
        """
        SELECT DISTINCT ON (o.sensor_id, o.quantity)
               o.sensor_id, o.quantity, o.time, o.value, o.unit, o.qc, o.district, s.lat, s.lon
        FROM observations o JOIN sensors s USING (sensor_id)
        WHERE o.domain = ANY(%(domains)s) AND o.qc IN (1, 2) AND o.time > now() - interval '7 days'
          AND (%(quantity)s::text IS NULL OR o.quantity = %(quantity)s)
          AND (%(district)s::text IS NULL OR o.district = %(district)s)
          AND (%(sensor_id)s::text IS NULL OR o.sensor_id = %(sensor_id)s)
        ORDER BY o.sensor_id, o.quantity, o.time DESC
        LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "domains": domains,
            "quantity": quantity,
            "district": district,
            "sensor_id": sensor_id,
            "limit": limit,
            "offset": offset,
        },
    )


async def history(
    conn,
    *,
    timescale: bool,
    domains: list[str],
    quantity: str,
    width: str,
    start: datetime,
    end: datetime,
    district: str | None,
    sensor_id: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Bucketed mean/min/max/count of good data per sensor over [start, end). A wind direction's mean is the
    direction of its mean unit vector, 0..360 (the numbers' mean of 350° and 10° is 180°: a south wind)."""
    bucket = BUCKET_SQL[timescale]
    mean = ("mod((degrees(atan2(avg(sin(radians(value))), avg(cos(radians(value))))) + 360)::numeric, 360)::float8"
            if quantity == "wind_dir" else "avg(value)")
    return await _all(
        conn,
        f"""
        SELECT {bucket} AS bucket, sensor_id, {mean} AS avg_value, min(value) AS min_value,
               max(value) AS max_value, count(*) AS n
        FROM observations
        WHERE domain = ANY(%(domains)s) AND quantity = %(quantity)s AND qc IN (1, 2)
          AND time >= %(start)s AND time < %(end)s
          AND (%(district)s::text IS NULL OR district = %(district)s)
          AND (%(sensor_id)s::text IS NULL OR sensor_id = %(sensor_id)s)
        GROUP BY 1, 2
        ORDER BY 1, 2
        LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "width": width,
            "domains": domains,
            "quantity": quantity,
            "start": start,
            "end": end,
            "district": district,
            "sensor_id": sensor_id,
            "limit": limit,
            "offset": offset,
        },
    )


async def air_grid(
    conn, *, pollutant: str, at: datetime | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Grid cells of the newest estimate at or before `at` (default: the newest)."""
    return await _all(
        conn,
        """
        SELECT cell_id, valid_at, lat, lon, value, std, aqi, district
        FROM air_grid
        WHERE pollutant = %(pollutant)s
          AND valid_at = (SELECT max(valid_at) FROM air_grid
                          WHERE pollutant = %(pollutant)s AND (%(at)s::timestamptz IS NULL OR valid_at <= %(at)s))
        ORDER BY cell_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        {"pollutant": pollutant, "at": at, "limit": limit, "offset": offset},
    )


async def source_attributions(
    conn, *, pollutant: str, start: datetime, end: datetime, limit: int, offset: int
) -> list[dict[str, Any]]:
    return await _all(
        conn,
        """
        SELECT at, station_id, pollutant, source_id, contribution, confidence, rank
        FROM source_attributions
        WHERE pollutant = %(pollutant)s AND at >= %(start)s AND at < %(end)s
        ORDER BY at DESC, station_id, rank
        LIMIT %(limit)s OFFSET %(offset)s""",
        {"pollutant": pollutant, "start": start, "end": end, "limit": limit, "offset": offset},
    )


async def leaks(
    conn, *, status: str | None, dma: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Leaks newest first; `status` 'open' (its alert not yet resolved, or no alert) or 'resolved'."""
    return await _all(
        conn,
        queries.LEAKS_WITH_STATE
        + """WHERE (%(status)s::text IS NULL OR status = %(status)s) AND (%(dma)s::text IS NULL OR dma = %(dma)s)
        ORDER BY detected_at DESC, leak_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        {"status": status, "dma": dma, "limit": limit, "offset": offset},
    )


async def forecasts(
    conn,
    *,
    domain: str,
    variable: str,
    station_id: str | None,
    start: datetime,
    end: datetime,
    horizon_h: int | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    return await _all(
        conn,
        """
        SELECT issued_at, station_id, variable, horizon_h, valid_at, value, p10, p90, model
        FROM forecasts
        WHERE domain = %(domain)s AND variable = %(variable)s AND valid_at >= %(start)s AND valid_at < %(end)s
          AND (%(station_id)s::text IS NULL OR station_id = %(station_id)s)
          AND (%(horizon_h)s::int IS NULL OR horizon_h = %(horizon_h)s)
        ORDER BY valid_at, station_id, horizon_h
        LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "domain": domain,
            "variable": variable,
            "station_id": station_id,
            "start": start,
            "end": end,
            "horizon_h": horizon_h,
            "limit": limit,
            "offset": offset,
        },
    )


async def bulletins(conn, *, district: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
    return await _all(
        conn,
        """
        SELECT bulletin_id, district, issued_at, text_zh, text_en, signals
        FROM bulletins
        WHERE (%(district)s::text IS NULL OR district = %(district)s)
        ORDER BY issued_at DESC, bulletin_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        {"district": district, "limit": limit, "offset": offset},
    )


async def incidents(
    conn, *, status: str | None, kind: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    return await _all(
        conn,
        """
        SELECT incident_id, kind, status, severity, title_zh, title_en, lat, lon, districts, opened_at,
               updated_at, related_alert_ids, area_geojson
        FROM incidents
        WHERE (%(status)s::text IS NULL OR status = %(status)s) AND (%(kind)s::text IS NULL OR kind = %(kind)s)
        ORDER BY opened_at DESC, incident_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        {"status": status, "kind": kind, "limit": limit, "offset": offset},
    )


async def incident_events(conn, incident_ids: list[str]) -> list[dict[str, Any]]:
    return await _all(
        conn,
        """
        SELECT incident_id, status, at, note FROM incident_events
        WHERE incident_id = ANY(%(ids)s) ORDER BY at, id""",
        {"ids": incident_ids},
    )


async def equipment_health(
    conn, *, machine_id: str | None, start: datetime, end: datetime, limit: int, offset: int
) -> list[dict[str, Any]]:
    return await _all(
        conn,
        """
        SELECT time, machine_id, score, is_anomaly, channels
        FROM equipment_health
        WHERE time >= %(start)s AND time < %(end)s
          AND (%(machine_id)s::text IS NULL OR machine_id = %(machine_id)s)
        ORDER BY time, machine_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        {"machine_id": machine_id, "start": start, "end": end, "limit": limit, "offset": offset},
    )


# Alerts as outside systems see them: no acknowledger, no evidence. An alert about a worker (its evidence names one:
# the emergency service's fall, SOS, heart-rate, gas and restricted-entry alerts) is not served at all: it is an
# employee's safety, not the city's state, and its district and time alone can point at one person on a shift.
async def alerts(
    conn,
    *,
    domain: str | None,
    severity: str | None,
    district: str | None,
    start: datetime,
    end: datetime,
    open_only: bool,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    return await _all(
        conn,
        f"""
        SELECT alert_id, domain, kind, severity, level, status, title_zh, title_en, message_zh, message_en,
               lat, lon, district, raised_at, resolved_at
        FROM alerts
        WHERE raised_at >= %(start)s AND raised_at < %(end)s AND {NOT_ABOUT_A_WORKER}
          AND (%(domain)s::text IS NULL OR domain = %(domain)s)
          AND (%(severity)s::text IS NULL OR severity = %(severity)s)
          AND (%(district)s::text IS NULL OR district = %(district)s)
          AND (NOT %(open_only)s OR resolved_at IS NULL)
        ORDER BY raised_at DESC, alert_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "domain": domain,
            "severity": severity,
            "district": district,
            "start": start,
            "end": end,
            "open_only": open_only,
            "limit": limit,
            "offset": offset,
        },
    )


async def worker_observations(
    conn,
    *,
    actor: str,
    role: str,
    worker_id: str | None,
    start: datetime,
    end: datetime,
    reason: str,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Personal data: read and audited in one transaction, so no read goes unrecorded."""
    async with conn.transaction():
        rows = await _all(
            conn,
            """
            SELECT time, sensor_id, worker_id, quantity, value, unit, qc, lat, lon
            FROM restricted.worker_observations
            WHERE time >= %(start)s AND time < %(end)s
              AND (%(worker_id)s::text IS NULL OR worker_id = %(worker_id)s)
            ORDER BY time, sensor_id, quantity
            LIMIT %(limit)s OFFSET %(offset)s""",
            {"worker_id": worker_id, "start": start, "end": end, "limit": limit, "offset": offset},
        )
        await conn.execute(
            "INSERT INTO audit_log (actor, role, action, subject, detail) VALUES (%(actor)s, %(role)s, "
            "'read_personal_data', %(subject)s, %(detail)s)",
            {
                "actor": actor,
                "role": role,
                "subject": f"worker:{worker_id or '*'}",
                "detail": json.dumps(
                    {
                        "reason": reason,
                        "start": start.isoformat(),
                        "end": end.isoformat(),
                        "rows": len(rows),
                        "via": "api",
                    },
                    ensure_ascii=False,
                ),
            },
        )
    return rows
