"""`cityops grafana provision | files`"""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grafana", help="Grafana dashboards as code: push over the HTTP API or write provisioning/"
    )
    cmds = p.add_subparsers(dest="grafana_command", metavar="ACTION")
    cmds.required = True
    s = cmds.add_parser(
        "provision", help="create or update the folder, data source and dashboards (idempotent)"
    )
    s.add_argument("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000")
    s.add_argument(
        "--token",
        default=os.environ.get("CITYOPS_GRAFANA_TOKEN"),
        help="service-account token (default CITYOPS_GRAFANA_TOKEN)",
    )
    s.add_argument(
        "--db-host",
        default=os.environ.get("CITYOPS_GRAFANA_DB_HOST", "postgres:5432"),
        help="host:port of PostgreSQL as Grafana reaches it",
    )
    s.add_argument("--db-name", default=os.environ.get("CITYOPS_GRAFANA_DB_NAME", "cityops"))
    s.add_argument("--db-user", default=os.environ.get("CITYOPS_GRAFANA_DB_USER", "grafana_reader"))
    s.add_argument("--timescaledb", action="store_true", help="the database has TimescaleDB (time_bucket)")
    s.add_argument("--timeout", type=float, default=10.0)
    s.set_defaults(func=_provision)
    f = cmds.add_parser("files", help="write provisioning/ (datasource YAML + dashboard JSON) or check it")
    f.add_argument("--check", action="store_true", help="exit 1 if provisioning/ differs from the code")
    f.set_defaults(func=_files)


def _provision(args: argparse.Namespace) -> int:
    from shared.dashboards import build
    from shared.dashboards.provision import ProvisionError, push

    if not args.token:
        print(
            "error: no token: pass --token or set CITYOPS_GRAFANA_TOKEN (a Grafana service-account token)",
            file=sys.stderr,
        )
        return 2
    ds = build.datasource(
        host=args.db_host,
        database=args.db_name,
        user=args.db_user,
        timescaledb=args.timescaledb,
        password=os.environ.get("CITYOPS_GRAFANA_DB_PASSWORD"),
    )
    try:
        done = push(args.url, args.token, datasource=ds, timeout=args.timeout)
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"folder {done['folder']}, data source {done['datasource']}, "
        f"{len(done['dashboards'])} dashboards: {', '.join(d['uid'] for d in done['dashboards'])}"
    )
    return 0


def _files(args: argparse.Namespace) -> int:
    from shared.dashboards.provision import PROVISIONING, drift, write_files

    if args.check:
        bad = drift()
        if bad:
            print(
                f"error: provisioning/ is out of date ({', '.join(bad)}): run `cityops grafana files`",
                file=sys.stderr,
            )
            return 1
        print("provisioning/ is up to date")
        return 0
    for p in write_files():
        print(p.relative_to(PROVISIONING.parent))
    return 0
