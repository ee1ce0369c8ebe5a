"""`cityops water …` — batch command 6 of CONTRACTS.md and the streaming service."""

from __future__ import annotations

import argparse

from shared.batch_io import run_batch


def register(sub: argparse._SubParsersAction) -> None:
    water = sub.add_parser("water", help="water: detect leaks, and the streaming service")
    cmds = water.add_subparsers(dest="water_command", metavar="ACTION")
    cmds.required = True

    p = cmds.add_parser("detect", help="detect and localise leaks from SCADA data")
    p.add_argument("--network", required=True, help="EPANET .inp file")
    p.add_argument("--scada", required=True, help="CSV (long): time, sensor_id, kind, value")
    p.add_argument("--train-until", required=True, help="ISO 8601; data up to it is leak-free")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_detect)

    pl = cmds.add_parser("place-loggers", help="where to put pressure loggers so leaks can be located (not in CONTRACTS.md)")
    pl.add_argument("--network", required=True, help="EPANET .inp file")
    pl.add_argument("--loggers", type=int, required=True, help="how many pressure loggers in all")
    pl.add_argument("--existing", default="", help="junctions that already have a logger, comma-separated (kept)")
    pl.add_argument("--out", required=True, help="CSV: rank, node_id, x, y, existing")
    pl.add_argument("--map", default=None, help="optional PNG map of the loggers")
    pl.set_defaults(func=_place)

    sv = cmds.add_parser("serve", help="the streaming service: leaks, flood risk, field tasks (port 8112)")
    sv.add_argument("--port", type=int, default=None, help="HTTP port (default CITYOPS_WATER_PORT or 8112)")
    sv.set_defaults(func=_serve)


def _serve(a: argparse.Namespace) -> int:
    from services.water import app

    return app.run(a.port)


def _detect(a: argparse.Namespace) -> int:
    from services.water import batch

    return run_batch(batch.detect, a.network, a.scada, a.train_until, a.out)


def _place(a: argparse.Namespace) -> int:
    from services.water import batch

    return run_batch(batch.place_loggers, a.network, a.loggers, a.out, existing=a.existing, map_path=a.map)
