"""`cityops stack …`"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="local stack: Kafka (KRaft), PostgreSQL, Mosquitto")
    cmds = p.add_subparsers(dest="stack_command", metavar="ACTION")
    cmds.required = True
    cmds.add_parser("up", help="start what is not running and wait until healthy (idempotent)").set_defaults(func=_up)
    cmds.add_parser("down", help="stop what `up` started").set_defaults(func=_down)
    cmds.add_parser("status", help="health of each part; exit 1 if any is down").set_defaults(func=_status)


def _up(a: argparse.Namespace) -> int:
    from shared.stack import manager

    print("cityops stack up", flush=True)
    try:
        manager.up()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("stack is up: source .state/stack.env, or let `cityops` read it for you")
    return 0


def _down(a: argparse.Namespace) -> int:
    from shared.stack import manager

    stopped = manager.down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _status(a: argparse.Namespace) -> int:
    from shared.stack import manager

    st = manager.status()
    for name, ok in st.items():
        print(f"  {name:<10} {'healthy' if ok else 'down'}")
    return 0 if all(st.values()) else 1
