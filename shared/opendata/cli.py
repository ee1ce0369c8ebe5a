"""`cityops opendata export | asyncapi-html`"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("opendata", help="open data: FIWARE Smart Data Models export, AsyncAPI page")
    cmds = p.add_subparsers(dest="opendata_command", metavar="ACTION")
    cmds.required = True
    e = cmds.add_parser(
        "export", help="observations (hourly) and alerts as NGSI-LD Smart Data Models, validated"
    )
    e.add_argument("--start", required=True, help="ISO 8601, inclusive")
    e.add_argument("--end", required=True, help="ISO 8601, exclusive")
    e.add_argument("--out", required=True, help="output file (.jsonld: a JSON array of entities)")
    e.set_defaults(func=_export)
    a = cmds.add_parser("asyncapi-html", help="render schemas/asyncapi.yaml to docs/asyncapi.html")
    a.add_argument("--check", action="store_true", help="exit 1 if docs/asyncapi.html is out of date")
    a.set_defaults(func=_asyncapi)


def _export(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime
    from pathlib import Path

    import psycopg

    from shared import settings
    from shared.opendata.fiware import export, validate

    try:
        start, end = (datetime.fromisoformat(x) for x in (args.start, args.end))
    except ValueError as exc:
        print(f"error: {exc}: give --start and --end as ISO 8601, e.g. 2026-11-27T00:00:00Z", file=sys.stderr)
        return 2
    start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
    with psycopg.connect(settings.load().db_url) as conn:
        entities = export(conn, start=start, end=end)
    bad = [(e["id"], err) for e in entities for err in validate(e)]
    if bad:
        print(f"error: {len(bad)} schema errors, first: {bad[0]}; nothing written", file=sys.stderr)
        return 1
    Path(args.out).write_text(json.dumps(entities, ensure_ascii=False, indent=1))
    print(f"{len(entities)} entities written to {args.out}")
    return 0


def _asyncapi(args: argparse.Namespace) -> int:
    from shared.opendata.asyncapi_html import OUT, render

    html = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != html:
            print(
                "error: docs/asyncapi.html is out of date: run `cityops opendata asyncapi-html`",
                file=sys.stderr,
            )
            return 1
        print("docs/asyncapi.html is up to date")
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(html, encoding="utf-8")
    print(OUT)
    return 0
