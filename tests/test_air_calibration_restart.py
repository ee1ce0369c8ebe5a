"""Low-cost sensor calibration after a restart past the calibration period, on the real PostgreSQL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg
import pytest

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]

T0 = pd.Timestamp("2026-06-01T00:00Z")
UNTIL = T0 + pd.Timedelta(hours=10)
LOWCOST = ["lc-restart-0", "lc-restart-1", "lc-restart-2"]
REF = "ref-restart-1"
CONFIG = {"domains": {"air": {"reference_stations": [REF], "lowcost_step_min": 10,
                              "calibration_until": UNTIL.isoformat(), "sources": []}}}


def _readings(h0: int, h1: int) -> list[dict]:
    """Payloads of the reference station (hourly) and three low-cost sensors reading 1.2x it (every 10 minutes)."""
    rng = np.random.default_rng(h0)
    out = []
    for k in range(h0 * 6, h1 * 6):
        t = T0 + pd.Timedelta(minutes=10 * k)
        pm = 40 + 20 * np.sin(k / 30)
        if k % 6 == 0:
            out.append(_payload(REF, "reference_station", t, {"pm25": pm}, 39.90, 116.40))
        for i, sid in enumerate(LOWCOST):
            out.append(_payload(sid, "lowcost_pm", t, {"pm25": pm * 1.2 + rng.normal(0, 2), "rh": 50 + 10 * np.sin(k / 20),
                                                        "temp": 20.0}, 39.90 + 0.01 * i, 116.41))
    return out


def _payload(sid: str, kind: str, t: pd.Timestamp, vals: dict[str, float], lat: float, lon: float) -> dict:
    units = {"pm25": "ug/m3", "rh": "%", "temp": "degC"}
    return {"sensor_id": sid, "domain": "air", "kind": kind, "gateway_id": "gw-air-test", "district": "d01",
            "lat": lat, "lon": lon, "observed_at": t.isoformat(),
            "values": {q: {"value": float(v), "unit": units[q], "qc": 1} for q, v in vals.items()}}


async def test_a_restart_after_the_calibration_period_still_calibrates_the_low_cost_sensors(db_url, tmp_path):
    """The calibration is fitted on the readings up to `calibration_until`, which lived only in memory: a service
    restarted after it found none, marked every sensor as tried and never calibrated any, so the low-cost sensors
    silently dropped out of the grid, the source tracing and the drift check. It now reads the period back from
    the observations table (where the sink stored it) and fits the sensors as an uninterrupted run does."""
    from psycopg_pool import AsyncConnectionPool

    from services.air_quality.handlers import AirService
    from services.air_quality.settings import AirSettings

    with psycopg.connect(db_url) as conn:  # what the sink stored before the crash: the first 20 hours
        for p in _readings(0, 20):
            for q, v in p["values"].items():
                conn.execute("INSERT INTO observations (time, sensor_id, quantity, value, unit, qc, domain, district) "
                             "VALUES (%s, %s, %s, %s, %s, %s, 'air', %s)",
                             (p["observed_at"], p["sensor_id"], q, v["value"], v["unit"], v["qc"], p["district"]))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        svc = AirService(AirSettings(db_url=db_url, state_dir=tmp_path, air_heavy_every_s=1e9), pool, config=CONFIG)
        events = [{"type": "observation.air", "payload": p} for p in _readings(20, 30)]
        for i in range(0, len(events), 50):
            await svc.handle(events[i:i + 50])
            await svc.drain()
    finally:
        await pool.close()
    assert svc.calibrated and svc.calibrated_until == UNTIL
    assert {sid for sid, s in svc.lowcost.items() if s.calibration is not None} == set(LOWCOST)
    for s in svc.lowcost.values():
        assert s.reference == REF and s.calibration.n_train >= 50
        # the gain against the reference at calibration, from the stored readings (1.2x)
        assert abs(np.exp(s.train_log_ratio) - 1.2) < 0.05


async def test_a_sensor_with_nothing_stored_is_tried_once_and_the_others_still_calibrate(db_url, tmp_path):
    """A sensor first installed after the period has nothing to fit in memory or in the database: it is given up
    on once it was looked for there (no query per batch for ever), and the others are fitted."""
    from psycopg_pool import AsyncConnectionPool

    from services.air_quality.handlers import AirService
    from services.air_quality.settings import AirSettings

    with psycopg.connect(db_url) as conn:
        for p in _readings(0, 20):
            if p["sensor_id"] == LOWCOST[2]:
                continue
            for q, v in p["values"].items():
                conn.execute("INSERT INTO observations (time, sensor_id, quantity, value, unit, qc, domain, district) "
                             "VALUES (%s, %s, %s, %s, %s, %s, 'air', %s) ON CONFLICT DO NOTHING",
                             (p["observed_at"], p["sensor_id"], q, v["value"], v["unit"], v["qc"], p["district"]))
        conn.execute("DELETE FROM observations WHERE sensor_id = %s", (LOWCOST[2],))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        svc = AirService(AirSettings(db_url=db_url, state_dir=tmp_path, air_heavy_every_s=1e9), pool, config=CONFIG)
        events = [{"type": "observation.air", "payload": p} for p in _readings(20, 26)]
        for i in range(0, len(events), 50):
            await svc.handle(events[i:i + 50])
            await svc.drain()
    finally:
        await pool.close()
    assert {sid for sid, s in svc.lowcost.items() if s.calibration is not None} == set(LOWCOST[:2])
    assert svc.lowcost[LOWCOST[2]].fit_tried and svc.lowcost[LOWCOST[2]].recovered
    assert not svc._calibration_due()  # noqa: SLF001
