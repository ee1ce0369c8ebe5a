"""Observation reads and writes whose SQL text must mean the same on TimescaleDB and plain PostgreSQL.

`observations_hourly` is a continuous aggregate under TimescaleDB and a view over `date_bin()`
otherwise (migration 0003); the constants here are the text both are tested with
(tests/test_storage_timescale.py and tests/test_storage_plain.py assert the same numbers).

Parameters are named (`%(name)s`) and every statement is sent with a plain `execute`, which is
all that TimescaleDB-in-WebAssembly accepts.
"""

from __future__ import annotations

# Alerts that are not about a worker (for a WHERE clause with named parameters): the emergency service's worker
# alerts name the worker's episode pseudonym in their evidence and dedup key. Retention takes the pseudonym out of
# the evidence (shared.storage.migrate.strip_worker_products); the key's prefix stays.
NOT_ABOUT_A_WORKER = "NOT (evidence ? 'worker') AND dedup_key NOT LIKE 'emergency:worker:%%'"

# Idempotent on the natural key: a replayed batch inserts nothing twice.
INSERT_OBSERVATION = """
INSERT INTO observations (time, sensor_id, quantity, value, unit, qc, domain, district)
VALUES (%(time)s, %(sensor_id)s, %(quantity)s, %(value)s, %(unit)s, %(qc)s, %(domain)s, %(district)s)
ON CONFLICT ON CONSTRAINT observations_key DO NOTHING
"""

# Hourly means of good data (QC 1 or 2) of one domain, over [start, end).
HOURLY_MEANS = """
SELECT bucket, sensor_id, quantity, avg_value, n
FROM observations_hourly
WHERE domain = %(domain)s AND bucket >= %(start)s AND bucket < %(end)s
ORDER BY bucket, sensor_id, quantity
"""

# Bucket origin of TimescaleDB's time_bucket() for timestamptz (a Monday, UTC): with it,
# date_bin() puts every row in the same bucket as time_bucket() does, for any width.
TIME_BUCKET_ORIGIN = "2000-01-03 00:00:00+00"

# Means of good data of one sensor and quantity in buckets of any width (%(width)s: interval).
# Runs on both databases; BUCKETED_MEANS_TIME_BUCKET is the TimescaleDB spelling.
BUCKETED_MEANS = f"""
SELECT date_bin(%(width)s, time, TIMESTAMPTZ '{TIME_BUCKET_ORIGIN}') AS bucket,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
FROM observations
WHERE sensor_id = %(sensor_id)s AND quantity = %(quantity)s AND qc IN (1, 2)
  AND time >= %(start)s AND time < %(end)s
GROUP BY 1
ORDER BY 1
"""

BUCKETED_MEANS_TIME_BUCKET = """
SELECT time_bucket(%(width)s, time) AS bucket,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
FROM observations
WHERE sensor_id = %(sensor_id)s AND quantity = %(quantity)s AND qc IN (1, 2)
  AND time >= %(start)s AND time < %(end)s
GROUP BY 1
ORDER BY 1
"""

# TimescaleDB only: materialise the hourly aggregate over [start, end) now rather than when the
# refresh policy next runs. CALL cannot run inside a transaction block: use autocommit.
REFRESH_HOURLY = "CALL refresh_continuous_aggregate('observations_hourly', %(start)s, %(end)s)"

# A leak is open until a dispatcher resolves its alert after the repair: the rule of the dashboards' "Leaks and
# candidate pipes" panel (shared/dashboards/build.py) and of the service after a restart. leaks.status is written
# once, 'open', and nothing updates it, so listing by it called repaired leaks open.
LEAKS_WITH_STATE = """WITH leak_alerts AS (
    SELECT evidence->>'leak_id' AS leak_id, bool_and(resolved_at IS NOT NULL) AS resolved
    FROM alerts
    WHERE domain = 'water' AND kind = 'leak' AND evidence->>'leak_id' IS NOT NULL
    GROUP BY 1
), state AS (
    SELECT l.leak_id, l.detected_at, l.pipe_id, l.candidates, l.estimated_flow_m3h, l.dma, l.kind,
           CASE WHEN a.resolved THEN 'resolved' ELSE 'open' END AS status
    FROM leaks l LEFT JOIN leak_alerts a USING (leak_id)
)
SELECT leak_id, detected_at, pipe_id, candidates, estimated_flow_m3h, dma, kind, status FROM state """
