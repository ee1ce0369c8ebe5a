"""Ordered SQL migrations, applied once each, recorded in `schema_migrations`.

Files are `NNNN_name.sql` (always), or `NNNN_name.timescale.sql` / `NNNN_name.plain.sql`
(the first where the TimescaleDB extension is available, the second where it is not).
Statements are sent one at a time with plain `execute` — no COPY, no pipeline — so the
same runner works against TimescaleDB in WebAssembly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

MIGRATIONS = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(timescale|plain))?\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    variant: str | None
    path: Path


def available(directory: Path = MIGRATIONS) -> list[Migration]:
    out = []
    for p in sorted(directory.glob("*.sql")):
        m = _NAME.match(p.name)
        if not m:
            raise ValueError(f"migration file name {p.name!r} does not match NNNN_name[.timescale|.plain].sql")
        out.append(Migration(m.group(1), m.group(2), m.group(3), p))
    return out


def has_timescale(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    return bool(row and row[0])


def split_statements(sql: str) -> list[str]:
    """Split on semicolons outside quotes and comments."""
    out, buf, i, n = [], [], 0, len(sql)
    quote: str | None = None
    while i < n:
        c = sql[i]
        if quote:
            buf.append(c)
            if c == quote:
                quote = None
        elif c in ("'", '"'):
            quote = c
            buf.append(c)
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c == ";":
            stmt = "".join(buf).strip()
            if stmt:
                out.append(stmt)
            buf = []
        else:
            buf.append(c)
        i += 1
    stmt = "".join(buf).strip()
    if stmt:
        out.append(stmt)
    return out


def migrate(conn: psycopg.Connection, *, timescale: bool | None = None) -> list[str]:
    """Apply pending migrations; returns the file names applied."""
    conn.autocommit = True
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, name text NOT NULL, variant text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    use_ts = has_timescale(conn) if timescale is None else timescale
    variant = "timescale" if use_ts else "plain"
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for m in available():
        if m.version in done or (m.variant is not None and m.variant != variant):
            continue
        conn.autocommit = False
        try:
            for stmt in split_statements(m.path.read_text(encoding="utf-8")):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, variant) VALUES (%s, %s, %s)",
                (m.version, m.name, variant),
            )
            conn.commit()
        except Exception:
            conn.rollback()
            raise
        finally:
            conn.autocommit = True
        applied.append(m.path.name)
    return applied


def status(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    return [
        (r[0], r[1], r[2])
        for r in conn.execute("SELECT version, name, variant FROM schema_migrations ORDER BY version").fetchall()
    ]


# A worker's pseudonym as the emergency service writes it into shared rows (stable or per episode).
WORKER_PSEUDONYM = "w-[0-9a-f]{16}"


def strip_worker_products(conn: psycopg.Connection, *, worker_days: int = 7) -> dict[str, int]:
    """Take the worker out of the rows about a worker that outlive the personal-data retention.

    Rows whose evidence names a worker (the emergency service's rescue tasks and worker alerts) and worker
    incidents older than `worker_days`, once closed (an alert, task or incident still open keeps its worker so that
    it can be cleared, done or resolved), keep what the city needs to account for the response (kind, times,
    district, zone, assignee, status history) and lose the worker's pseudonym (text, evidence, dedup key) and,
    for a task, the worker's last position: it is moved to its incident's public location (the zone or district
    centre already published), else rounded to 0.01°. The crew's deliveries of such a task keep their status
    and lose their text. Runs under TimescaleDB too (no policy covers these tables)."""
    cutoff = "now() - make_interval(days => %(days)s)"
    args = {"days": worker_days, "p": WORKER_PSEUDONYM}
    with conn.transaction():
        tasks = [r[0] for r in conn.execute(
            f"""UPDATE field_tasks t SET
                  title_zh = regexp_replace(t.title_zh, %(p)s, '***', 'g'),
                  title_en = regexp_replace(t.title_en, %(p)s, '***', 'g'),
                  description_zh = regexp_replace(t.description_zh, %(p)s, '***', 'g'),
                  description_en = regexp_replace(t.description_en, %(p)s, '***', 'g'),
                  lat = coalesce((SELECT i.lat FROM incidents i WHERE i.incident_id = t.evidence->>'incident_id'
                                  AND i.lat IS NOT NULL), round(t.lat::numeric, 2)::double precision),
                  lon = coalesce((SELECT i.lon FROM incidents i WHERE i.incident_id = t.evidence->>'incident_id'
                                  AND i.lon IS NOT NULL), round(t.lon::numeric, 2)::double precision),
                  evidence = (t.evidence - 'worker' - 'lat' - 'lon')
                             || jsonb_build_object('personal_data_removed_at', now())
                WHERE t.evidence ? 'worker' AND t.created_at < {cutoff} AND t.status IN ('done', 'cancelled')
                RETURNING t.task_id""", args).fetchall()]
        if tasks:
            conn.execute("UPDATE field_task_events SET evidence = evidence - 'worker' - 'lat' - 'lon' "
                         "WHERE task_id = ANY(%s) AND evidence ?| array['worker', 'lat', 'lon']", (tasks,))
        deliveries = conn.execute(
            "UPDATE deliveries SET message = jsonb_build_object("
            "'subject', '(personal data removed after its retention)', 'body', '') "
            "WHERE subject_id = ANY(%s) AND status NOT IN ('pending', 'sending')", (tasks,)).rowcount
        alerts = conn.execute(
            f"""UPDATE alerts SET
                  title_zh = regexp_replace(title_zh, %(p)s, '***', 'g'),
                  title_en = regexp_replace(title_en, %(p)s, '***', 'g'),
                  message_zh = regexp_replace(message_zh, %(p)s, '***', 'g'),
                  message_en = regexp_replace(message_en, %(p)s, '***', 'g'),
                  dedup_key = regexp_replace(dedup_key, %(p)s, 'w-***', 'g'),
                  evidence = evidence - 'worker'
                WHERE evidence ? 'worker' AND raised_at < {cutoff} AND resolved_at IS NOT NULL""", args).rowcount
        incidents = conn.execute(
            f"""UPDATE incidents SET
                  title_zh = regexp_replace(title_zh, %(p)s, '***', 'g'),
                  title_en = regexp_replace(title_en, %(p)s, '***', 'g')
                WHERE kind = 'worker_safety' AND opened_at < {cutoff} AND status = 'resolved'
                  AND (title_zh ~ %(p)s OR title_en ~ %(p)s)""", args).rowcount
    return {"field_tasks": len(tasks), "deliveries": deliveries, "alerts": alerts, "incidents": incidents}


def enforce_retention(conn: psycopg.Connection, *, worker_days: int = 7, observation_days: int = 400) -> dict[str, int]:
    """Delete what the retention policy says is gone, and take the worker out of what stays (see
    strip_worker_products). Under TimescaleDB the policies delete too."""
    with conn.transaction():
        w = conn.execute(
            "DELETE FROM restricted.worker_observations WHERE time < now() - make_interval(days => %s)",
            (worker_days,),
        ).rowcount
        o = conn.execute(
            "DELETE FROM observations WHERE time < now() - make_interval(days => %s)", (observation_days,)
        ).rowcount
    return {"worker_observations": w, "observations": o,
            **{f"{k}_stripped": v for k, v in strip_worker_products(conn, worker_days=worker_days).items()}}
