"""`cityops notify serve | check | summary | hash-password | provision-mqtt`"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "notify", help="notification service: routing, channels, escalation, field tasks, console"
    )
    cmds = p.add_subparsers(dest="notify_command", metavar="ACTION")
    cmds.required = True
    s = cmds.add_parser(
        "serve", help="run the service (Kafka consumer, senders, timers, REST API and console)"
    )
    s.add_argument("--port", type=int, default=None, help="HTTP port (default CITYOPS_NOTIFY_PORT or 8107)")
    s.add_argument(
        "--no-provision", action="store_true", help="do not create MQTT logins for the roster's field staff"
    )
    s.set_defaults(func=_serve)
    c = cmds.add_parser("check", help="validate the routing and roster files and exit")
    c.add_argument("--routing", default=None)
    c.add_argument("--roster", default=None)
    c.set_defaults(func=_check)
    m = cmds.add_parser(
        "summary", help="delivery counts and p50/p99 latency per channel, and escalations (JSON)"
    )
    m.add_argument("--url", default=None, help="database URL (default CITYOPS_DB_URL)")
    m.set_defaults(func=_summary)
    h = cmds.add_parser(
        "hash-password", help="print a roster password_hash (salted scrypt) for a password read from stdin"
    )
    h.set_defaults(func=_hash)
    q = cmds.add_parser(
        "provision-mqtt", help="create MQTT logins (own topic only) for the roster's field staff"
    )
    q.set_defaults(func=_provision)


def _configs(routing: str | None = None, roster: str | None = None):
    import os
    from pathlib import Path

    from shared.notify.domain.config import load_roster, load_routing
    from shared.notify.settings import CONFIG

    ro = Path(roster or os.environ.get("CITYOPS_NOTIFY_ROSTER") or CONFIG / "roster.yaml")
    rt = Path(routing or os.environ.get("CITYOPS_NOTIFY_ROUTING") or CONFIG / "routing.yaml")
    r = load_roster(ro)
    return r, load_routing(rt, r), rt, ro


def _serve(a: argparse.Namespace) -> int:
    from shared.notify.app import run
    from shared.notify.domain.config import ConfigError

    try:
        return run(a.port, provision=not a.no_provision)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2


def _check(a: argparse.Namespace) -> int:
    from shared.notify.domain.config import ConfigError

    try:
        roster, routing, rt, ro = _configs(a.routing, a.roster)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    print(
        f"ok: {ro} ({len(roster.people)} people, {len(roster.groups)} groups, {len(roster.rotas)} rotas); "
        f"{rt} ({len(routing.rules)} rules)"
    )
    return 0


def _summary(a: argparse.Namespace) -> int:
    import json

    from shared import settings
    from shared.notify.repository import delivery_summary_sync

    print(
        json.dumps(
            delivery_summary_sync(a.url or settings.load().db_url), default=str, indent=1, ensure_ascii=False
        )
    )
    return 0


def _hash(a: argparse.Namespace) -> int:
    import getpass
    import sys

    from shared.notify.domain.auth import hash_password

    pw = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(pw) < 8:
        print("error: use at least 8 characters")
        return 2
    print(hash_password(pw))
    return 0


def _provision(a: argparse.Namespace) -> int:
    from shared.notify.app import provision_mqtt_users
    from shared.notify.domain.config import ConfigError

    try:
        roster, *_ = _configs()
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    people = provision_mqtt_users(roster)
    print(
        f"MQTT logins for {len(people)} field staff: {', '.join(people)} (passwords in CITYOPS_MQTT_CREDENTIALS)"
    )
    return 0
