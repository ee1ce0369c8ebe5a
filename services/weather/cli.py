"""`cityops weather …` — batch commands 4–5 of CONTRACTS.md and the streaming service."""

from __future__ import annotations

import argparse

from shared.batch_io import run_batch


def register(sub: argparse._SubParsersAction) -> None:
    wx = sub.add_parser("weather", help="weather: nowcast, qc")
    cmds = wx.add_subparsers(dest="weather_command", metavar="ACTION")
    cmds.required = True

    p = cmds.add_parser("nowcast", help="nowcast a variable at stations with p10/p90")
    p.add_argument("--observations", required=True, help="CSV: time, station_id, lat, lon, variables…")
    p.add_argument("--variable", default="temp")
    p.add_argument("--horizons", default="1,3,6")
    p.add_argument("--train-until", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_nowcast)

    p = cmds.add_parser("qc", help="QARTOD quality flags for every variable")
    p.add_argument("--observations", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_qc)

    p = cmds.add_parser("serve", help="run the weather streaming service (QC, nowcasts, warning signals, bulletins)")
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=_serve)



def _nowcast(a: argparse.Namespace) -> int:
    from services.weather import batch

    return run_batch(batch.nowcast, a.observations, a.variable, a.horizons, a.train_until, a.out)


def _qc(a: argparse.Namespace) -> int:
    from services.weather import batch

    return run_batch(batch.qc, a.observations, a.out)


def _serve(a: argparse.Namespace) -> int:
    from services.weather import app

    return app.run(a.port)
