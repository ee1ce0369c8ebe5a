"""`cityops air …` — batch commands 1–3 of CONTRACTS.md and the streaming service."""

from __future__ import annotations

import argparse

from shared.batch_io import run_batch


def register(sub: argparse._SubParsersAction) -> None:
    air = sub.add_parser("air", help="air quality: estimate (以算代测), forecast, attribute (溯源)")
    cmds = air.add_subparsers(dest="air_command", metavar="ACTION")
    cmds.required = True

    p = cmds.add_parser("estimate", help="estimate a pollutant at unmonitored places")
    p.add_argument("--observations", required=True, help="CSV: time, station_id, lat, lon, pollutants…")
    p.add_argument("--targets", required=True, help="CSV: target_id, lat, lon")
    p.add_argument("--out", required=True)
    p.add_argument("--pollutant", default="pm25")
    p.set_defaults(func=_estimate)

    p = cmds.add_parser("forecast", help="forecast a pollutant at stations")
    p.add_argument("--observations", required=True)
    p.add_argument("--horizons", default="1,6,24", help="hours ahead, e.g. 1,6,24")
    p.add_argument("--train-until", required=True, help="ISO 8601 time; later data is never used for fitting")
    p.add_argument("--out", required=True)
    p.add_argument("--pollutant", default="pm25")
    p.set_defaults(func=_forecast)

    p = cmds.add_parser("attribute", help="rank emission sources behind exceedances (溯源)")
    p.add_argument("--observations", required=True, help="CSV with wind_dir and wind_speed")
    p.add_argument("--sources", required=True, help="CSV: source_id, lat, lon, kind[, height_m]")
    p.add_argument("--out", required=True)
    p.add_argument("--pollutant", default="pm25")
    p.add_argument("--threshold", type=float, default=None, help="default: 75 µg/m³ for pm25")
    p.set_defaults(func=_attribute)

    sv = cmds.add_parser("serve", help="the streaming service: grids, AQI alerts, forecasts, source tracing (port 8110)")
    sv.add_argument("--port", type=int, default=None, help="HTTP port (default CITYOPS_AIR_PORT or 8110)")
    sv.set_defaults(func=_serve)


def _serve(a: argparse.Namespace) -> int:
    from services.air_quality import app

    return app.run(a.port)

def _estimate(a: argparse.Namespace) -> int:
    from services.air_quality import batch

    return run_batch(batch.estimate, a.observations, a.targets, a.out, pollutant=a.pollutant)


def _forecast(a: argparse.Namespace) -> int:
    from services.air_quality import batch

    return run_batch(batch.forecast, a.observations, a.horizons, a.train_until, a.out, pollutant=a.pollutant)


def _attribute(a: argparse.Namespace) -> int:
    from services.air_quality import batch

    return run_batch(
        batch.attribute, a.observations, a.sources, a.out, pollutant=a.pollutant, threshold=a.threshold
    )
