"""`cityops db migrate | status | retention`"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database: migrate, status, retention")
    cmds = p.add_subparsers(dest="db_command", metavar="ACTION")
    cmds.required = True
    m = cmds.add_parser("migrate", help="apply pending SQL migrations")
    m.add_argument("--url", default=None, help="database URL (default: CITYOPS_DB_URL)")
    m.set_defaults(func=_migrate)
    s = cmds.add_parser("status", help="list applied migrations")
    s.add_argument("--url", default=None)
    s.set_defaults(func=_status)
    r = cmds.add_parser("retention", help="delete data past its retention (personal data: 7 days by default)")
    r.add_argument("--url", default=None)
    r.add_argument("--worker-days", type=int, default=7)
    r.set_defaults(func=_retention)


def _connect(url: str | None):
    import psycopg

    from shared import settings

    return psycopg.connect(url or settings.load().db_url, autocommit=True)


def _migrate(a: argparse.Namespace) -> int:
    from shared.storage import migrate

    with _connect(a.url) as conn:
        applied = migrate.migrate(conn)
        variant = "TimescaleDB" if migrate.has_timescale(conn) else "plain PostgreSQL"
    print(f"{len(applied)} migration(s) applied ({variant})" + "".join(f"\n  {n}" for n in applied))
    return 0


def _status(a: argparse.Namespace) -> int:
    from shared.storage import migrate

    with _connect(a.url) as conn:
        for version, name, variant in migrate.status(conn):
            print(f"  {version} {name} ({variant})")
    return 0


def _retention(a: argparse.Namespace) -> int:
    from shared.storage import migrate

    with _connect(a.url) as conn:
        print(migrate.enforce_retention(conn, worker_days=a.worker_days))
    return 0
