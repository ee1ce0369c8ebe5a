"""Fill a throwaway database with the simulated city through the real ingest code, without brokers.

For tests of read-side code (dashboards, query API, report) that need realistic rows fast: every
simulated message, good and bad, goes through the gateway's `Validator` (validation, units, QARTOD
flags), the sink's record-to-row step and `services.ingest.repository.write_observations` — the same
code `cityops demo` runs, minus Kafka and MQTT. Product tables are left to the services that own them.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

logger = logging.getLogger("cityops.fill")
Record = namedtuple("Record", "topic partition offset value")


@functools.lru_cache(maxsize=2)
def simulate(hours: float = 8.0, seed: int = 11):
    """The simulated city, with every domain whose generator works in this checkout (cached per process)."""
    from shared.simulator.city import DOMAIN_GENERATORS, build

    ok = []
    for d, module in DOMAIN_GENERATORS.items():
        if hasattr(importlib.import_module(module), "generate"):
            ok.append(d)
        else:
            logger.warning("domain %s has no scenario generator in this checkout; its tables stay empty", d)
    return build(hours=hours, seed=seed, domains=ok)


def fill(db_url: str, sim) -> dict[str, Any]:
    """Register the city's sensors and store every message through the real ingest code. Returns counts."""
    from services.ingest import repository
    from services.ingest.domain.validate import Accepted, Validator
    from services.ingest.sink import ObservationSink
    from shared import kafka
    from shared.storage.registry import load_sensors, upsert_sensors

    with psycopg.connect(db_url) as conn:
        upsert_sensors(conn, sim.sensors)
        conn.execute(
            "UPDATE sensors SET meta = meta || jsonb_build_object('worker_id', 'w-' || sensor_id) "
            "WHERE personal AND NOT meta ? 'worker_id'"
        )
        conn.commit()
        registry = load_sensors(conn)
        worker_of: dict[str, str] = dict(
            conn.execute("SELECT sensor_id, meta->>'worker_id' FROM sensors WHERE personal").fetchall()
        )
    msgs = sim.messages()
    received = datetime.now(UTC)
    v = Validator(registry, max_age=timedelta(days=30))
    records, dead = [], []
    for i, (sid, gw, t, vals) in enumerate(
        zip(msgs["sensor_id"], msgs["gateway_id"], msgs["time"], msgs["values"], strict=True)
    ):
        payload = json.dumps({"sensor_id": sid, "time": t.isoformat(), "values": vals, "seq": i}).encode()
        res = v.validate(f"city/{gw}/{sid}", payload, received)
        if isinstance(res, Accepted):
            records.append(Record(res.topic, 0, i, res.value))
        else:
            dead.append((res, gw, payload, i))
    for b in sim.bad_messages:
        res = v.validate(b["topic"], b["payload"], received)
        if not isinstance(res, Accepted):
            dead.append((res, b["gateway_id"], b["payload"], -1))
    dls = []
    for res, gw, payload, i in dead:
        _, value, _ = kafka.dead_letter(
            stage="gateway",
            reason_code=res.reason_code,  # type: ignore[arg-type]
            reason=res.reason,
            origin=f"mqtt:city/{gw}#{i}",
            original=payload,
            gateway_id=gw,
            sensor_id=res.sensor_id,
        )
        dls.append(repository.dead_letter_row(json.loads(value)))
    rows, worker_rows, more_dls = ObservationSink._rows(None, records, worker_of)  # type: ignore[arg-type]

    async def write() -> tuple[int, int, int]:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            return await repository.write_observations(conn, rows, worker_rows, dls + more_dls)

    n_obs, n_worker, n_dl = asyncio.run(write())
    return {
        "observations": n_obs,
        "worker_observations": n_worker,
        "dead_letters": n_dl,
        "sensors": len(sim.sensors),
        "start": sim.start.to_pydatetime(),
        "end": (sim.start + pd_hours(sim.hours)).to_pydatetime(),
    }


def pd_hours(h: float):
    import pandas as pd

    return pd.Timedelta(hours=h)


def fill_air_products(db_url: str, sim) -> dict[str, int]:
    """Run the real air-quality domain on what `fill()` stored: the grid estimate (以算代测) at the hour of
    the highest PM2.5, with its AQI, and source tracing (溯源) of the reference stations' exceedances.

    Writes `air_grid` and `source_attributions` the way the air service does (same columns, natural keys),
    so read-side code has products to show before the services run in the test."""
    import numpy as np
    import pandas as pd

    from services.air_quality.domain.aqi import iaqi
    from services.air_quality.domain.attribution import attribute_observations
    from services.air_quality.domain.grid import estimate_grid, make_grid

    air = next((sc for sc in sim.scenarios if sc.domain == "air"), None)
    if air is None:
        return {"air_grid": 0, "source_attributions": 0}
    sources = pd.DataFrame(air.config["sources"])
    threshold = float(air.config["thresholds_ugm3"]["pm25"])
    with psycopg.connect(db_url) as conn:
        hourly = pd.DataFrame(
            conn.execute(
                "SELECT h.bucket AS time, h.sensor_id AS station_id, h.quantity, h.avg_value, s.lat, s.lon, "
                "s.kind FROM observations_hourly h JOIN sensors s USING (sensor_id) WHERE h.domain = 'air'"
            ).fetchall(),
            columns=["time", "station_id", "quantity", "value", "lat", "lon", "kind"],
        )
        wide = hourly.pivot_table(
            index=["time", "station_id", "lat", "lon", "kind"], columns="quantity", values="value"
        ).reset_index()
        pm = wide.dropna(subset=["pm25"])
        peak = pm.groupby("time")["pm25"].mean().idxmax()
        at = pm[pm["time"] == peak]
        wind = wide[(wide["time"] == peak)].dropna(subset=["wind_dir"])
        wind_from = float(
            np.degrees(
                np.arctan2(
                    np.sin(np.radians(wind["wind_dir"])).mean(), np.cos(np.radians(wind["wind_dir"])).mean()
                )
            )
            % 360
        )
        grid = make_grid(sim.city, float(air.config["grid"]["cell_km"]))
        est = estimate_grid(
            sim.city, grid, at["lat"], at["lon"], at["pm25"], sources=sources, wind_from_deg=wind_from
        )
        aqi = iaqi("pm25", est.value)
        n_grid = 0
        for i in range(len(grid.lat)):
            conn.execute(
                "INSERT INTO air_grid (valid_at, pollutant, cell_id, lat, lon, value, std, aqi, district) "
                "VALUES (%s, 'pm25', %s, %s, %s, %s, %s, %s, %s) ON CONFLICT ON CONSTRAINT air_grid_key DO NOTHING",
                (
                    peak,
                    f"c{i:05d}",
                    float(grid.lat[i]),
                    float(grid.lon[i]),
                    float(est.value[i]),
                    float(est.std[i]),
                    int(aqi[i]) if np.isfinite(aqi[i]) else None,
                    sim.city.district_of(grid.lat[i], grid.lon[i]),
                ),
            )
            n_grid += 1
        ref = wide[(wide["kind"] == "reference_station")].dropna(subset=["pm25", "wind_dir", "wind_speed"])
        attributions = attribute_observations(ref, sources, "pm25", threshold)
        for a in attributions:
            conn.execute(
                "INSERT INTO source_attributions (at, station_id, pollutant, source_id, contribution, confidence, "
                "rank) VALUES (%s, %s, 'pm25', %s, %s, %s, %s) "
                "ON CONFLICT ON CONSTRAINT source_attributions_key DO NOTHING",
                (a.time, a.station_id, a.source_id, float(a.contribution), float(a.confidence), int(a.rank)),
            )
        conn.commit()
    return {"air_grid": n_grid, "source_attributions": len(attributions)}
