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


def enforce_retention(conn: psycopg.Connection, *, worker_days: int = 7, observation_days: int = 400) -> dict[str, int]:
    """Delete what the retention policy says is gone. Under TimescaleDB the policies do this too."""
    with conn.transaction():
        w = conn.execute(
            "DELETE FROM restricted.worker_observations WHERE time < now() - make_interval(days => %s)",
            (worker_days,),
        ).rowcount
        o = conn.execute(
            "DELETE FROM observations WHERE time < now() - make_interval(days => %s)", (observation_days,)
        ).rowcount
    return {"worker_observations": w, "observations": o}
