"""The high-temperature warning goes by the day's maximum: it stands through the nights of a hot spell."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pandas as pd
import psycopg
import pytest

TAG = secrets.token_hex(3)
T0 = pd.Timestamp("2026-07-01T00:00Z")


def _temp(t: pd.Timestamp, low: float = 26.0, high: float = 38.0) -> float:
    local = (t.hour + 8) % 24 + t.minute / 60  # Beijing time: coolest at 03:00, hottest at 15:00
    return (low + high) / 2 + (high - low) / 2 * np.cos(2 * np.pi * (local - 15) / 24)


def _env(sid: str, district: str, t: pd.Timestamp, temp: float) -> dict:
    return {"payload": {"sensor_id": sid, "observed_at": t.isoformat(), "district": district, "lat": 39.9,
                        "lon": 116.4, "values": {"temp": {"value": float(temp), "unit": "degC", "qc": 1},
                                                 "rain": {"value": 0.0, "unit": "mm", "qc": 1}}}}


async def test_a_hot_spell_keeps_one_warning_through_its_nights_and_the_lift_says_nothing_of_preparing():
    """Each hour's district mean stood in for the day's maximum: three days of 26-38 °C lifted the warning every
    evening and raised it again every afternoon, and each lift told the public to prepare. Now the metric is the
    largest of the last 24 hours (and the nowcast): raised once, upgraded once, lifted a day after the heat ends,
    with a lift text that stands the measures down."""
    from services.weather.handlers import SignalMonitor

    mon = SignalMonitor(["W1"])
    hot = [_env("W1", "d02", T0 + pd.Timedelta(minutes=10 * k), _temp(T0 + pd.Timedelta(minutes=10 * k)))
           for k in range(72 * 6)]
    cool = [_env("W1", "d02", T0 + pd.Timedelta(minutes=10 * k), 22.0) for k in range(72 * 6, 120 * 6)]
    alerts = []
    for i in range(0, len(hot) + len(cool), 6):
        alerts += [json.loads(o.value)["payload"] for o in await mon.handle((hot + cool)[i:i + 6])]
    heat = [a for a in alerts if a["kind"] == "high_temperature_signal"]
    during = [a for a in heat if pd.Timestamp(a["raised_at"]) <= T0 + pd.Timedelta(hours=72)]
    assert [(a["evidence"]["action"], a["level"]) for a in during] == [("raise", "yellow"), ("upgrade", "orange")]
    lifts = [a for a in heat if a["status"] == "cleared"]
    assert len(lifts) == 1 and pd.Timestamp(lifts[0]["raised_at"]) > T0 + pd.Timedelta(hours=80)
    assert "解除" in lifts[0]["message_zh"] and "防御准备" not in lifts[0]["message_zh"]
    assert "Follow the response plan" not in lifts[0]["message_en"] and "stood down" in lifts[0]["message_en"]
    assert "防御准备" in during[0]["message_zh"] and "Follow the response plan" in during[0]["message_en"]


def test_the_nowcast_maximum_raises_the_warning_before_the_heat_is_observed():
    """As `signal_metrics` and the CMA signal (expected to reach 35 °C): the district's temperature nowcast counts."""
    from services.weather.handlers import Reading, SignalMonitor

    mon = SignalMonitor([])
    h = T0 + pd.Timedelta(hours=4)
    mon.add(Reading("W1", h + pd.Timedelta(minutes=10), "d02", 39.9, 116.4, {"temp": (33.0, 1, ())}))
    outs = [json.loads(o.value)["payload"] for o in mon.close_hour(h, None, {"d02": [34.0, 35.6, 34.8]})]
    assert [(a["kind"], a["level"]) for a in outs] == [("high_temperature_signal", "yellow")]
    assert outs[0]["evidence"]["temp_max_24h_c_with_nowcast"] == 35.6


@pytest.mark.stack
async def test_a_night_time_restart_keeps_the_warning_in_force(db_url):
    """After a restart the warning in force is taken up from the alerts table, but the day's temperatures lived in
    memory: at night the 24-hour maximum had only the night to go by and the warning was lifted two hours later.
    The restarted service reads the day before back from the observations table."""
    from psycopg_pool import AsyncConnectionPool

    from services.weather.handlers import StreamOptions, WeatherService

    sid, district = f"hot-{TAG}", f"dh-{TAG}"
    config = {"domains": {"weather": {"stations": {sid: {"lat": 39.9, "lon": 116.4, "district": district}}}}}
    restart = T0 + pd.Timedelta(hours=40)  # 00:00 Beijing time of the second night
    with psycopg.connect(db_url) as conn:  # what the sink stored of the day before
        for k in range(24 * 6):
            t = restart - pd.Timedelta(hours=24) + pd.Timedelta(minutes=10 * k)
            conn.execute("INSERT INTO observations (time, sensor_id, quantity, value, unit, qc, domain, district) "
                         "VALUES (%s, %s, 'temp', %s, 'degC', 1, 'weather', %s)",
                         (t.to_pydatetime(), sid, _temp(t), district))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        svc = WeatherService(StreamOptions(variables=["temp"], refit_in_background=False), pool, config=config)
        svc.monitor.board.level[("high_temperature", district)] = "orange"  # as restore_open_alerts takes it up
        alerts = []
        for k in range(5 * 6):
            t = restart + pd.Timedelta(minutes=10 * k)
            alerts += [json.loads(o.value)["payload"] for o in await svc.handle([_env(sid, district, t, _temp(t))])]
    finally:
        await pool.close()
    assert svc.monitor.last_closed >= restart + pd.Timedelta(hours=3)
    assert not [a for a in alerts if a.get("kind") == "high_temperature_signal"], alerts
    assert svc.monitor.board.active()[("high_temperature", district)] == "orange"
