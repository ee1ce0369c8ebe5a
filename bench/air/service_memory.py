"""Memory and throughput of the air-quality stream handler over a whole simulated demo day.

The domain generator's 36 simulated hours (8 reference stations, 60 low-cost sensors) are fed
to `AirService.handle` in-process in batches of 500 envelopes (what the StreamProcessor hands it),
writing products to a throwaway database of the running stack. Reports peak RSS and records/s.

    .venv/bin/python -m bench.air.service_memory   # -> bench/results/air.service.{md,json}
"""

from __future__ import annotations

import asyncio
import json
import resource
import secrets
import time
from pathlib import Path

import pandas as pd
import psycopg

OUT = Path(__file__).resolve().parents[1] / "results"


def _envelopes(sc) -> list[dict]:
    specs = {s.sensor_id: s for s in sc.sensors}
    out = []
    for (t, sid), g in sc.readings.groupby(["time", "sensor_id"], sort=True):
        spec = specs[sid]
        values = {q: {"value": float(v), "unit": spec.quantities[q].unit, "qc": 1, "qc_tests": {}}
                  for q, v in zip(g["quantity"], g["value"], strict=True)}
        out.append({"event_id": f"{sid}|{t.isoformat()}", "type": "observation.air", "payload": {
            "sensor_id": sid, "domain": "air", "kind": spec.kind, "gateway_id": spec.gateway_id,
            "district": spec.district, "lat": spec.lat, "lon": spec.lon, "observed_at": t.isoformat(),
            "values": values}})
    return out


async def _run(url: str, config: dict, events: list[dict], state: Path) -> dict:
    from psycopg_pool import AsyncConnectionPool

    from services.air_quality.handlers import AirService
    from services.air_quality.settings import AirSettings

    s = AirSettings(db_url=url, state_dir=state, air_heavy_every_s=3.0)
    pool = AsyncConnectionPool(url, min_size=1, max_size=3, open=False)
    await pool.open()
    svc = AirService(s, pool, config=config)
    t0 = time.perf_counter()
    n_out = 0
    for i in range(0, len(events), 500):
        n_out += len(await svc.handle(events[i:i + 500]))
    await svc.drain()
    n_out += len(await svc.heavy())
    took = time.perf_counter() - t0
    await pool.close()
    return {"records": len(events), "outputs": n_out, "seconds": round(took, 1),
            "records_per_s": round(len(events) / took, 0), "fits": svc.fits}


def main() -> None:
    from services.air_quality.domain.simulate import generate
    from shared.city import default_city
    from shared.stack import manager
    from shared.storage.migrate import migrate

    env = manager.up(quiet=True)
    city = default_city()
    sc = generate(city, pd.Timestamp("2026-11-26T00:00Z"), 36, 7)
    config = {"city": {"name": city.name, "centre_lat": city.centre_lat, "centre_lon": city.centre_lon,
                       "districts": [{"district_id": d.district_id, "name_zh": d.name_zh, "name_en": d.name_en,
                                      "bbox": list(d.bbox), "land_use": d.land_use} for d in city.districts]},
              "domains": {"air": json.loads(json.dumps(sc.config, default=str))}}
    events = _envelopes(sc)
    admin = env["CITYOPS_DB_URL"]
    name = f"bench_air_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url) as c:
            migrate(c)
        res = asyncio.run(_run(url, config, events, Path(f"/tmp/{name}")))
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    res["simulated_hours"] = 36
    OUT.mkdir(exist_ok=True)
    (OUT / "air.service.json").write_text(json.dumps(res, indent=2))
    (OUT / "air.service.md").write_text(
        "# Air-quality stream service: memory and throughput\n\n"
        f"36 simulated hours (8 reference stations, 60 low-cost sensors, {res['records']:,} observations) fed to "
        "`AirService.handle` in batches of 500, products written to PostgreSQL, heavy work every 3 wall seconds.\n\n"
        f"- peak RSS: **{res['peak_rss_mb']:.0f} MB** (whole process, numpy/pandas/xgboost/matplotlib loaded)\n"
        f"- throughput: {res['records_per_s']:.0f} observations/s ({res['seconds']} s), {res['outputs']} outputs\n"
        f"- fits: {res['fits']}\n\nRun: `.venv/bin/python -m bench.air.service_memory`\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
