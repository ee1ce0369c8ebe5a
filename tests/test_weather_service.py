"""The weather streaming service (warning signals) against the real Kafka.

The generator's 36 simulated hours (rainstorm over the low-lying central district) are published
as Observation envelopes to the weather observation topic under sensor and district ids unique to
this run; the service's handler runs in a StreamProcessor with a fresh consumer group, and a
second processor with another group replays the same records: same alert ids, nothing new.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import pandas as pd
import pytest

TAG = secrets.token_hex(3)
START = pd.Timestamp("2026-07-01T00:00Z")
HOURS = 36


def _scenario():
    from services.weather.domain.simulate import generate
    from shared.city import default_city

    sc = generate(default_city(), START, HOURS, 7)
    return sc, [{**t, "district": f"{t['district']}-{TAG}"} if "district" in t else t for t in sc.truth]


def _envelopes(sc) -> list[tuple[str, bytes, bytes]]:
    from schemas.topics import OBSERVATION_TOPIC

    specs = {s.sensor_id: s for s in sc.sensors}
    out = []
    for (t, sid), g in sc.readings.groupby(["time", "sensor_id"], sort=True):
        spec, tsid = specs[sid], f"{sid}-{TAG}"
        values = {q: {"value": float(v), "unit": spec.quantities[q].unit, "qc": 1, "qc_tests": {}}
                  for q, v in zip(g["quantity"], g["value"], strict=True)}
        env = {"event_id": f"{tsid}|{t.isoformat()}", "type": "observation.weather", "schema_version": 1,
               "source": "test", "occurred_at": t.isoformat(), "ingested_at": t.isoformat(),
               "payload": {"sensor_id": tsid, "domain": "weather", "kind": spec.kind, "gateway_id": spec.gateway_id,
                           "district": f"{spec.district}-{TAG}", "lat": spec.lat, "lon": spec.lon,
                           "observed_at": t.isoformat(), "values": values}}
        out.append((OBSERVATION_TOPIC["weather"], tsid.encode(), json.dumps(env).encode()))
    return out


async def _publish(bootstrap: str, records) -> None:
    from shared import kafka

    p = kafka.producer(bootstrap)
    await p.start()
    try:
        futs = [await p.send(t, v, key=k) for t, k, v in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def _run(bootstrap: str, group: str, last_hour: pd.Timestamp, roster: list[str], timeout_s: float = 60):
    from schemas.topics import OBSERVATION_TOPIC
    from services.weather.handlers import SignalMonitor
    from shared.service import Readiness
    from shared.stream import StreamProcessor

    mon, outputs = SignalMonitor(roster), []

    async def handle(events):
        # other runs' records share the topic: keep this run's only
        out = await mon.handle([e for e in events if str(e["payload"].get("sensor_id", "")).endswith(TAG)])
        outputs.extend(out)
        return out

    proc = StreamProcessor("weather-test", bootstrap, [OBSERVATION_TOPIC["weather"]], group, handle,
                           Readiness("kafka"))
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        deadline = time.monotonic() + timeout_s
        while mon.watermark() != last_hour or len(mon.station_hour) < 20:
            if task.done():
                task.result()
            assert time.monotonic() < deadline, f"not all readings seen in {timeout_s:.0f} s"
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    return [json.loads(o.value) for o in outputs]


@pytest.mark.stack
@pytest.mark.timeout(150)
async def test_rainstorm_signal_before_the_peak_and_replay_gives_the_same_ids(stack_env):
    from services.weather.domain.simulate import check_detection

    sc, truth = _scenario()
    records = _envelopes(sc)
    await _publish(stack_env["CITYOPS_KAFKA_BOOTSTRAP"], records)
    roster = [f"{s.sensor_id}-{TAG}" for s in sc.sensors]
    last_hour = pd.Timestamp(sc.readings["time"].max()).floor("h")
    first = await _run(stack_env["CITYOPS_KAFKA_BOOTSTRAP"], f"cityops-weather-test-{TAG}-a", last_hour, roster)
    alerts = [e["payload"] for e in first]
    assert all(e["event_id"] == e["payload"]["alert_id"] for e in first)
    storm = truth[0]
    res = check_detection(storm, alerts)
    assert res["detected"], (res, [(a["district"], a["level"], a["raised_at"]) for a in alerts])
    ours = [a for a in alerts if a["district"] == storm["district"] and a["kind"] == "rainstorm_signal"]
    assert ours[0]["status"] == "raised" and ours[0]["title_zh"] and ours[0]["title_en"]
    assert ours[0]["dedup_key"] == f"weather:rainstorm:{storm['district']}"
    assert "observed_at" in ours[0]["evidence"] and ours[0]["evidence"]["rain_3h_mm"] > 0
    second = await _run(stack_env["CITYOPS_KAFKA_BOOTSTRAP"], f"cityops-weather-test-{TAG}-b", last_hour, roster)
    assert sorted(e["event_id"] for e in second) == sorted(e["event_id"] for e in first)


async def test_bad_observation_is_a_poison_record():
    from services.weather.handlers import SignalMonitor
    from shared.stream import PoisonRecord

    mon = SignalMonitor()
    with pytest.raises(PoisonRecord, match="fix the producer"):
        await mon.handle([{"payload": {"sensor_id": "x", "observed_at": "not a time", "values": {}}}])
    assert mon.watermark() is None


def test_check_detection_needs_the_level_before_the_peak():
    from services.weather.domain.simulate import check_detection

    truth = {"scenario": "rainstorm", "peak": "2026-07-02T04:40:00+00:00", "district": "d05",
             "expected_min_level_before_peak": "orange"}
    a = {"domain": "weather", "kind": "rainstorm_signal", "district": "d05", "raised_at": "2026-07-02T04:00:00+00:00"}
    assert check_detection(truth, [a | {"level": "orange"}])["detected"]
    assert check_detection(truth, [a | {"level": "orange"}])["delay_min"] == -40.0
    assert not check_detection(truth, [a | {"level": "yellow"}])["detected"]
    assert not check_detection(truth, [a | {"level": "red", "raised_at": "2026-07-02T05:00:00+00:00"}])["detected"]
    assert not check_detection(truth, [a | {"level": "red", "district": "d04"}])["detected"]


async def test_signal_lift_is_a_cleared_alert_with_the_same_dedup_key():
    from services.weather.handlers import SignalMonitor

    mon = SignalMonitor(["s1"])
    rain = [0, 0, 30, 30, 30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # mm/h: 90 mm in 3 h, then dry

    def env(h: int, mm: float) -> dict:
        t = pd.Timestamp("2026-07-01T00:00Z") + pd.Timedelta(hours=h)
        return {"payload": {"sensor_id": "s1", "district": "dx", "lat": 30.0, "lon": 120.0,
                            "observed_at": t.isoformat(),
                            "values": {"rain": {"value": mm, "unit": "mm", "qc": 1},
                                       "temp": {"value": 20.0, "unit": "degC", "qc": 4}}}}

    alerts = []
    for h, mm in enumerate(rain + [0]):
        alerts += [json.loads(o.value)["payload"] for o in await mon.handle([env(h, mm)])]
    storm = [a for a in alerts if a["kind"] == "rainstorm_signal"]
    assert [a["status"] for a in storm][0] == "raised" and storm[0]["level"] == "orange"
    assert storm[-1]["status"] == "cleared" and storm[-1]["dedup_key"] == storm[0]["dedup_key"] == "weather:rainstorm:dx"
    assert "解除" in storm[-1]["title_zh"] and "lifted" in storm[-1]["title_en"]
    assert not any(a["kind"] == "high_temperature_signal" for a in alerts)  # qc 4 temps are not used
    assert mon.board.active() == {}
