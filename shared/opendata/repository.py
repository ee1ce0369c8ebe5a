"""All SQL of the open-data export: hourly values of public sensors, and alerts without evidence (none about a
worker)."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from shared.storage.queries import NOT_ABOUT_A_WORKER, TIME_BUCKET_ORIGIN

# One value per public sensor, quantity and hour of good data (QC 1 or 2). Most quantities are the hour's
# mean; a quantity in %(summed)s reports an amount per reading (rain: mm in its 10 minutes), so the hour is
# the sum (avg * n). A bearing in %(circular)s cannot be averaged as a number (350° and 10° would give
# 180°): its hour is the direction of the mean unit vector, computed from the raw readings because the
# hourly aggregate keeps only the arithmetic mean.
HOURLY = f"""
SELECT h.bucket, h.sensor_id, h.domain, h.quantity,
       CASE WHEN h.quantity = ANY(%(summed)s) THEN h.avg_value * h.n ELSE h.avg_value END AS value,
       s.lat, s.lon, s.district
FROM observations_hourly h JOIN sensors s USING (sensor_id)
WHERE h.domain = ANY(%(domains)s) AND h.quantity = ANY(%(quantities)s) AND NOT s.personal
  AND h.quantity <> ALL(%(circular)s)
  AND h.bucket >= %(start)s AND h.bucket < %(end)s
UNION ALL
SELECT b.bucket, b.sensor_id, b.domain, b.quantity, b.value, s.lat, s.lon, s.district
FROM (
    SELECT date_bin(INTERVAL '1 hour', o.time, TIMESTAMPTZ '{TIME_BUCKET_ORIGIN}') AS bucket,
           o.sensor_id, o.domain, o.quantity,
           degrees(atan2(avg(sin(radians(o.value))), avg(cos(radians(o.value))))) AS value
    FROM observations o
    WHERE o.domain = ANY(%(domains)s) AND o.quantity = ANY(%(quantities)s) AND o.quantity = ANY(%(circular)s)
      AND o.qc IN (1, 2) AND o.time >= %(start)s - INTERVAL '1 hour' AND o.time < %(end)s
    GROUP BY 1, o.sensor_id, o.domain, o.quantity
) b JOIN sensors s USING (sensor_id)
WHERE NOT s.personal AND b.bucket >= %(start)s AND b.bucket < %(end)s
ORDER BY sensor_id, bucket, quantity
"""

# An alert about a worker (its evidence names one) is an employee's safety, not open data: left out, as the
# query API leaves it out.
ALERTS = f"""
SELECT alert_id, domain, kind, severity, title_zh, title_en, message_zh, message_en, lat, lon, district,
       raised_at, resolved_at
FROM alerts
WHERE raised_at >= %(start)s AND raised_at < %(end)s
  AND {NOT_ABOUT_A_WORKER}
ORDER BY raised_at, alert_id
"""


def hourly(
    conn: psycopg.Connection,
    *,
    domains: list[str],
    quantities: list[str],
    summed: list[str],
    circular: list[str],
    start: datetime,
    end: datetime,
) -> list[dict]:
    """Rows (bucket, sensor_id, domain, quantity, value, lat, lon, district) of [start, end)."""
    params = {"domains": domains, "quantities": quantities, "summed": summed, "circular": circular}
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(HOURLY, {**params, "start": start, "end": end}).fetchall()


def alerts(conn: psycopg.Connection, *, start: datetime, end: datetime) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(ALERTS, {"start": start, "end": end}).fetchall()
