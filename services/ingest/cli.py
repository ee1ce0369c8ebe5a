"""`cityops ingest gateway | sink`"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="MQTT→Kafka gateway and the observation sink")
    cmds = p.add_subparsers(dest="ingest_command", metavar="ACTION")
    cmds.required = True
    g = cmds.add_parser("gateway", help="run the MQTT→Kafka gateway (at-least-once, dead letters)")
    g.add_argument("--port", type=int, default=None, help="HTTP port for /healthz, /readyz, /metrics")
    g.set_defaults(func=lambda a: _gateway(a))
    s = cmds.add_parser("sink", help="run the Kafka→database observation sink")
    s.add_argument("--port", type=int, default=None)
    s.set_defaults(func=lambda a: _sink(a))


def _gateway(a: argparse.Namespace) -> int:
    from services.ingest.app import run_gateway

    return run_gateway(a.port)


def _sink(a: argparse.Namespace) -> int:
    from services.ingest.app import run_sink

    return run_sink(a.port)
