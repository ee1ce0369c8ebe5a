"""All SQL of the open-data export: hourly means of public sensors, and alerts without evidence."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.rows import dict_row

HOURLY = """
SELECT h.bucket, h.sensor_id, h.domain, h.quantity, h.avg_value, s.lat, s.lon, s.district
FROM observations_hourly h JOIN sensors s USING (sensor_id)
WHERE h.domain = ANY(%(domains)s) AND h.quantity = ANY(%(quantities)s) AND NOT s.personal
  AND h.bucket >= %(start)s AND h.bucket < %(end)s
ORDER BY h.sensor_id, h.bucket, h.quantity
"""

ALERTS = """
SELECT alert_id, domain, kind, severity, title_zh, title_en, message_zh, message_en, lat, lon, district,
       raised_at, resolved_at
FROM alerts
WHERE raised_at >= %(start)s AND raised_at < %(end)s
ORDER BY raised_at, alert_id
"""


def hourly(
    conn: psycopg.Connection, *, domains: list[str], quantities: list[str], start: datetime, end: datetime
) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            HOURLY, {"domains": domains, "quantities": quantities, "start": start, "end": end}
        ).fetchall()


def alerts(conn: psycopg.Connection, *, start: datetime, end: datetime) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(ALERTS, {"start": start, "end": end}).fetchall()
