"""All SQL of the emergency service: equipment health, incidents and their steps, personal-data reads."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

from schemas.products import Incident


def _j(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


async def write_equipment_health(conn: psycopg.AsyncConnection, rows: list[tuple]) -> int:
    """rows: (time, machine_id, score, is_anomaly, channels dict). Idempotent on (machine_id, time)."""
    if not rows:
        return 0
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO equipment_health (time, machine_id, score, is_anomaly, channels) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT ON CONSTRAINT equipment_health_key DO UPDATE SET score = EXCLUDED.score, "
            "is_anomaly = EXCLUDED.is_anomaly, channels = EXCLUDED.channels",
            [(t, m, s, a, _j(c)) for t, m, s, a, c in rows],
        )
    return len(rows)


async def upsert_incident(conn: psycopg.AsyncConnection, inc: Incident, steps: list[tuple[str, datetime, str]]) -> None:
    """The incident row (by id) and its lifecycle steps (once per state, whatever replays)."""
    await conn.execute(
        """INSERT INTO incidents (incident_id, kind, status, severity, title_zh, title_en, lat, lon, districts,
               opened_at, updated_at, related_alert_ids, area_geojson, report_path)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (incident_id) DO UPDATE SET status = EXCLUDED.status, severity = EXCLUDED.severity,
               updated_at = GREATEST(incidents.updated_at, EXCLUDED.updated_at),
               related_alert_ids = EXCLUDED.related_alert_ids, area_geojson = EXCLUDED.area_geojson,
               report_path = COALESCE(EXCLUDED.report_path, incidents.report_path)""",
        (inc.incident_id, inc.kind, inc.status, inc.severity, inc.title_zh, inc.title_en,
         inc.location.lat if inc.location else None, inc.location.lon if inc.location else None,
         _j(inc.districts), inc.opened_at, inc.updated_at, _j(inc.related_alert_ids),
         _j(inc.area_geojson) if inc.area_geojson else None, inc.report_path),
    )
    for status, at, note in steps:
        await conn.execute(
            "INSERT INTO incident_events (incident_id, status, at, note) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (incident_id, status) DO NOTHING",
            (inc.incident_id, status, at, note),
        )


async def incidents(conn: psycopg.AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT incident_id, kind, status, severity, title_zh, title_en, lat, lon, districts, opened_at, updated_at,"
        " related_alert_ids, area_geojson, report_path FROM incidents ORDER BY opened_at DESC LIMIT %s", (limit,))
    cols = [c.name for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def incident_report_path(conn: psycopg.AsyncConnection, incident_id: str) -> str | None:
    row = await (await conn.execute("SELECT report_path FROM incidents WHERE incident_id = %s",
                                    (incident_id,))).fetchone()
    return row[0] if row else None


async def equipment_latest(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT DISTINCT ON (machine_id) machine_id, time, score, is_anomaly, channels FROM equipment_health "
        "ORDER BY machine_id, time DESC")
    cols = [c.name for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def worker_track(conn: psycopg.AsyncConnection, *, worker_id: str, since: datetime, actor: str, role: str,
                       reason: str, limit: int = 5000) -> list[dict[str, Any]]:
    """A worker's recent readings (position and health); the read and its audit row commit together."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT time, sensor_id, quantity, value, unit, qc, lat, lon FROM restricted.worker_observations "
            "WHERE worker_id = %s AND time >= %s ORDER BY time, quantity LIMIT %s", (worker_id, since, limit))
        cols = [c.name for c in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]
        await conn.execute(
            "INSERT INTO audit_log (actor, role, action, subject, detail) VALUES (%s, %s, 'read_personal_data', %s, %s)",
            (actor, role, f"worker:{worker_id}",
             _j({"reason": reason, "since": since.isoformat(), "rows": len(rows), "via": "emergency"})))
    return rows


async def known_worker_ids(conn: psycopg.AsyncConnection, *, since: datetime) -> set[str]:
    """Every worker id (and wearable id: an unconfigured wearable's readings are judged under its own id) the
    database knows: the personal sensors' and those with readings in the restricted table since `since`."""
    cur = await conn.execute(
        "SELECT sensor_id, meta->>'worker_id' FROM sensors WHERE personal "
        "UNION SELECT DISTINCT sensor_id, worker_id FROM restricted.worker_observations WHERE time >= %s", (since,))
    return {x for row in await cur.fetchall() for x in row if x}


def enforce_retention(db_url: str, worker_days: float) -> dict[str, int]:
    """Delete personal rows past retention on plain PostgreSQL (TimescaleDB's policy does it there), and take the
    worker out of the tasks, alerts and incidents about a worker that stay (no policy covers those)."""
    import math

    from shared.storage.migrate import enforce_retention as _enforce
    from shared.storage.migrate import has_timescale, strip_worker_products

    # enforce_retention counts whole days; round up so nothing is deleted early
    days = max(1, math.ceil(worker_days))
    with psycopg.connect(db_url) as conn:
        if has_timescale(conn):
            return strip_worker_products(conn, worker_days=days)
        return _enforce(conn, worker_days=days)


async def machine_history(conn: psycopg.AsyncConnection, sensor_id: str, until: datetime,
                          limit: int = 5000, *, before: bool = False,
                          machine_id: str | None = None) -> list[dict[str, float]]:
    """A machine's stored good samples (QARTOD pass / not evaluated) up to `until` (`before`: strictly before),
    oldest first, one dict per time: how a restarted service relearns normal operation without waiting for new
    data. With `machine_id`, the times its detector judged abnormal (equipment_health) are left out."""
    cur = await conn.execute(
        "SELECT time, jsonb_object_agg(quantity, value) FROM ("
        "  SELECT o.time, o.quantity, o.value FROM observations o WHERE o.sensor_id = %s"
        "  AND (o.time < %s OR (NOT %s AND o.time = %s)) AND o.qc IN (1, 2)"
        "  AND NOT EXISTS (SELECT 1 FROM equipment_health h WHERE h.machine_id = %s AND h.time = o.time"
        "                  AND h.is_anomaly)"
        "  ORDER BY o.time DESC LIMIT %s) recent GROUP BY time ORDER BY time",
        (sensor_id, until, before, until, machine_id, limit * 8))
    return [dict(v) for _, v in await cur.fetchall()][-limit:]
