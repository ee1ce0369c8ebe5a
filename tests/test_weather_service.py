"""The weather streaming service against the real Kafka and PostgreSQL.

The generator's 24 simulated hours (rainstorm over the low-lying central district, a stuck temperature
sensor, a one-hour temperature spike) are flagged by the ingest gateway's own stream QC and published
as Observation envelopes to the weather observation topic under sensor and district ids unique to this
run. The service (`WeatherService`, with a real connection pool on a throwaway database) runs in a
StreamProcessor with a fresh consumer group. Checked: the rainstorm signal before the peak, both sensor
faults as `sensor_fault` alerts, nowcasts on the nowcast topic and in `forecasts`, bulletins on their
topic, in `bulletins` and as HTML over HTTP. A second service with another group replays the same
records: the same alert and product ids, and not one new row.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import pandas as pd
import psycopg
import pytest
from kafka_io import observation_envelopes, publish

TAG = secrets.token_hex(3)
START = pd.Timestamp("2026-07-01T00:00Z")
HOURS = 24


def _scenario():
    from services.weather.domain.simulate import generate
    from shared.city import default_city

    sc = generate(default_city(), START, HOURS, 7)
    truth = []
    for t in sc.truth:
        t = dict(t)
        if "district" in t:
            t["district"] = f"{t['district']}-{TAG}"
        if "sensor_id" in t:
            t["sensor_id"] = f"{t['sensor_id']}-{TAG}"
        truth.append(t)
    return sc, truth


async def _end_offsets(bootstrap: str, topic: str) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await c.start()
    try:
        parts = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or await _parts(c, topic))]
        return await c.end_offsets(parts)
    finally:
        await c.stop()


async def _parts(c, topic: str) -> set[int]:
    await c._client.force_metadata_update()
    return c._client.cluster.partitions_for_topic(topic) or set()


async def _read_topic(bootstrap: str, start: dict, keep, want: set[str], timeout_s: float = 30) -> list[dict]:
    """Envelopes on the partitions of `start` from those offsets on that `keep` accepts, until the event
    ids `want` were all seen (or the time is up)."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    got: list[dict] = []
    try:
        c.assign(list(start))
        for tp, off in start.items():
            c.seek(tp, off)
        deadline = time.monotonic() + timeout_s
        while not want <= {e["event_id"] for e in got} and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=500, max_records=5000)
            got += [e for recs in batch.values() for r in recs if keep(e := json.loads(r.value))]
    finally:
        await c.stop()
    return got


async def _run(bootstrap: str, db_url: str, group: str, last_hour: pd.Timestamp, roster: list[str],
               timeout_s: float = 150):
    """One service instance over this run's records until it closed the last complete hour."""
    from psycopg_pool import AsyncConnectionPool

    from schemas.topics import OBSERVATION_TOPIC
    from services.weather.handlers import StreamOptions, WeatherService
    from shared.service import Readiness
    from shared.stream import StreamProcessor

    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=30)
    svc, outputs = WeatherService(StreamOptions(refit_in_background=False), pool, roster=roster), []

    async def handle(events):
        # other runs' records share the topic: keep this run's only
        out = await svc.handle([e for e in events if str(e["payload"].get("sensor_id", "")).endswith(TAG)])
        outputs.extend(out)
        return out

    proc = StreamProcessor("weather-test", bootstrap, [OBSERVATION_TOPIC["weather"]], group, handle,
                           Readiness("kafka"))
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        deadline = time.monotonic() + timeout_s
        while svc.monitor.last_closed is None or svc.monitor.last_closed < last_hour - pd.Timedelta(hours=1):
            if task.done():
                task.result()
            assert time.monotonic() < deadline, f"hours up to {last_hour} not closed in {timeout_s:.0f} s"
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    return svc, pool, [(o.topic, json.loads(o.value)) for o in outputs]


def _counts(db_url: str) -> tuple[int, int, int]:
    with psycopg.connect(db_url) as conn:
        f = conn.execute("SELECT count(*), count(DISTINCT (station_id, variable, horizon_h, issued_at)) FROM forecasts "
                         "WHERE domain = 'weather' AND station_id LIKE %s", (f"%-{TAG}",)).fetchone()
        b = conn.execute("SELECT count(*) FROM bulletins WHERE district LIKE %s", (f"%-{TAG}",)).fetchone()
    return f[0], f[1], b[0]


@pytest.mark.stack
@pytest.mark.timeout(300)
async def test_stream_signals_faults_nowcasts_bulletins_and_replay(stack_env, db_url):
    import httpx
    from fastapi import FastAPI

    from services.weather import endpoints
    from services.weather.domain.simulate import check_detection
    from services.weather.handlers import BULLETIN_TOPIC, NOWCAST_TOPIC

    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    sc, truth = _scenario()
    roster = [f"{s.sensor_id}-{TAG}" for s in sc.sensors]
    last_hour = pd.Timestamp(sc.readings["time"].max()).floor("h")
    before = {t: await _end_offsets(bootstrap, t) for t in (NOWCAST_TOPIC, BULLETIN_TOPIC)}
    await publish(bootstrap, observation_envelopes("weather", {s.sensor_id: s for s in sc.sensors}, sc.readings,
                                                  gateway_qc=True, id_suffix=f"-{TAG}"))
    svc, pool, first = await _run(bootstrap, db_url, f"cityops-weather-test-{TAG}-a", last_hour, roster)
    try:
        alerts = [e["payload"] for t, e in first if t == "cityops.alerts.v1"]
        # a first version's event id is its alert id; every later version (a higher colour) has its own
        ev = [e for t, e in first if t == "cityops.alerts.v1"]
        assert all(e["event_id"] == e["payload"]["alert_id"] for e in ev if e["payload"]["status"] == "raised")
        assert len({e["event_id"] for e in ev}) == len(ev)
        by_scenario = {t["scenario"]: check_detection(t, alerts) for t in truth}
        assert all(r["detected"] for r in by_scenario.values()), (by_scenario, [
            (a["kind"], a["district"], a.get("level"), a["raised_at"], a["evidence"].get("sensor_id")) for a in alerts])
        storm = truth[0]
        ours = [a for a in alerts if a["district"] == storm["district"] and a["kind"] == "rainstorm_signal"]
        assert ours[0]["status"] == "raised" and ours[0]["dedup_key"] == f"weather:rainstorm:{storm['district']}"
        faults = [a for a in alerts if a["kind"] == "sensor_fault" and a["status"] == "raised"]
        # the two injected faults and nothing else (a false alarm pages a technician)
        assert {(a["evidence"]["sensor_id"], a["evidence"]["quantity"]) for a in faults} == {
            (t["sensor_id"], t["quantity"]) for t in truth[1:]}, faults
        stuck = next(a for a in faults if a["evidence"]["sensor_id"] == truth[1]["sensor_id"])
        assert "卡滞" in stuck["title_zh"] and "stuck" in stuck["title_en"]

        # nowcasts: every station and variable each closed hour, 6 horizons, a chosen model, on the topic and in the table
        casts = [e for t, e in first if t == NOWCAST_TOPIC]
        assert {c["payload"]["variable"] for c in casts} == {"temp", "dewp", "pres", "wind_speed", "wind_dir", "rain"}
        assert {c["payload"]["station_id"] for c in casts} == set(roster)
        late = [c["payload"] for c in casts if c["payload"]["variable"] == "temp"
                and pd.Timestamp(c["payload"]["issued_at"]) == last_hour]
        assert len(late) == 20 and all(c["horizons_h"] == [1, 2, 3, 4, 5, 6] and c["p10"] and c["p90"] for c in late)
        assert all(lo <= v <= hi for c in late for lo, v, hi in zip(c["p10"], c["values"], c["p90"], strict=True))
        # the trees are fitted on the stream, and chosen only on their out-of-sample skill (a day of history here:
        # persistence may well be the honest pick)
        assert svc.models["temp"].xgb, "xgboost fitted on the stream"
        assert {c["model"] for c in late} <= {"persistence", "diurnal", "sarimax", "xgboost"}, {c["model"] for c in late}
        on_topic = await _read_topic(bootstrap, before[NOWCAST_TOPIC],
                                     lambda e: e["payload"]["station_id"].endswith(TAG), {c["event_id"] for c in casts})
        assert {e["event_id"] for e in on_topic} == {c["event_id"] for c in casts}
        n_rows, n_keys, n_bulletins = _counts(db_url)
        assert n_rows == n_keys == 6 * len(casts)

        # bulletins: Kafka, table, HTML over HTTP (Chinese and English, the chart, the signal in force)
        bulletins = [e["payload"] for t, e in first if t == BULLETIN_TOPIC]
        assert bulletins and n_bulletins == len({b["bulletin_id"] for b in bulletins})
        got = await _read_topic(bootstrap, before[BULLETIN_TOPIC], lambda e: e["payload"]["district"].endswith(TAG),
                                {b["bulletin_id"] for b in bulletins})
        assert {e["payload"]["bulletin_id"] for e in got} == {b["bulletin_id"] for b in bulletins}
        app = endpoints.mount(FastAPI(), pool, svc)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as http:
            r = await http.get("/bulletins/latest", params={"district": storm["district"]})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "逐时天气公报" in r.text and "hourly weather bulletin" in r.text and "data:image/png;base64," in r.text
            newest = max((b for b in bulletins if b["district"] == storm["district"]), key=lambda b: b["issued_at"])
            assert (await http.get(newest["html_path"])).text == r.text
            png = await http.get(newest["chart_png_path"])
            assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
            assert (await http.get("/bulletins/nope")).status_code == 404
            assert (await http.get("/bulletins/latest", params={"district": "nowhere"})).status_code == 404
            nc = (await http.get("/nowcasts", params={"station_id": roster[0], "variable": "temp"})).json()
            assert len(nc) == 1 and len(nc[0]["horizons"]) == 6 and nc[0]["skill_rmse"]
            assert nc[0]["issued_at"] == late[0]["issued_at"].replace("Z", "+00:00")
    finally:
        await pool.close()

    # replay from the start with another group: same ids, no new rows
    _, pool2, second = await _run(bootstrap, db_url, f"cityops-weather-test-{TAG}-b", last_hour, roster)
    await pool2.close()
    ids = lambda outs, topic: sorted(e["event_id"] for t, e in outs if t == topic)  # noqa: E731
    for topic in ("cityops.alerts.v1", NOWCAST_TOPIC):
        assert ids(second, topic) == ids(first, topic), topic
    assert _counts(db_url)[:2] == (n_rows, n_keys)
    # bulletins go to the newest hour of each batch, so a replay may write hours the first run skipped,
    # but never a second row for a district-hour
    with psycopg.connect(db_url) as conn:
        dup = conn.execute("SELECT count(*) - count(DISTINCT (district, issued_at)) FROM bulletins").fetchone()[0]
    assert dup == 0
    assert _counts(db_url)[2] == len(set(ids(first, BULLETIN_TOPIC)) | set(ids(second, BULLETIN_TOPIC)))


async def test_bad_observation_is_a_poison_record_and_changes_nothing():
    from services.weather.handlers import SignalMonitor, WeatherService
    from shared.stream import PoisonRecord

    mon = SignalMonitor()
    with pytest.raises(PoisonRecord, match="fix the producer"):
        await mon.handle([{"payload": {"sensor_id": "x", "observed_at": "not a time", "values": {}}}])
    assert mon.watermark() is None
    svc = WeatherService(roster=["s1"])
    good = {"payload": {"sensor_id": "s1", "district": "dx", "lat": 30.0, "lon": 120.0,
                        "observed_at": "2026-07-01T00:00:00Z", "values": {"rain": {"value": 5.0, "unit": "mm", "qc": 1}}}}
    with pytest.raises(PoisonRecord):
        await svc.handle([good, {"payload": {"sensor_id": "s1", "observed_at": "2026-07-01T00:10:00Z"}}])
    assert not svc.pending and not svc.monitor.open  # the good record of the poison batch was not taken yet


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


def test_check_detection_of_a_sensor_fault_needs_the_sensor_quantity_and_time():
    from services.weather.domain.simulate import check_detection

    truth = {"scenario": "stuck_sensor", "start": "2026-07-01T19:40:00+00:00", "end": "2026-07-01T23:40:00+00:00",
             "sensor_id": "wx-18", "quantity": "temp"}
    a = {"domain": "weather", "kind": "sensor_fault", "raised_at": "2026-07-01T21:00:00+00:00",
         "evidence": {"sensor_id": "wx-18", "quantity": "temp"}}
    assert check_detection(truth, [a]) | {"note": ""} == {"detected": True, "at": "2026-07-01T21:00:00+00:00",
                                                           "delay_min": 80.0, "note": ""}
    assert not check_detection(truth, [a | {"evidence": {"sensor_id": "wx-17", "quantity": "temp"}}])["detected"]
    assert not check_detection(truth, [a | {"evidence": {"sensor_id": "wx-18", "quantity": "pres"}}])["detected"]
    assert not check_detection(truth, [a | {"raised_at": "2026-07-01T19:00:00+00:00"}])["detected"]
    assert not check_detection(truth, [a | {"raised_at": "2026-07-02T02:00:00+00:00"}])["detected"]
    assert not check_detection(truth, [a | {"kind": "rainstorm_signal"}])["detected"]


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
    # a redelivered record is counted once: the same hour again changes nothing
    assert await mon.handle([env(3, 30)]) == [] and mon.late == 1


@pytest.mark.stack
async def test_restart_completes_the_open_hour_from_the_stored_readings(db_url):
    """A crash after the first 40 minutes of an hour were committed: the restarted service reads them back
    from the database (the sink stored them) and aggregates the hour as an uninterrupted run does."""
    from psycopg_pool import AsyncConnectionPool

    from services.weather.handlers import StreamOptions, WeatherService

    sids = [f"r{i}-{TAG}" for i in range(4)]
    config = {"domains": {"weather": {"stations": {s: {"lat": 30.2 + 0.01 * i, "lon": 120.1 + 0.01 * i,
                                                        "district": f"dr-{TAG}"} for i, s in enumerate(sids)}}}}
    times = pd.date_range("2026-03-01T00:00Z", periods=18, freq="10min")

    def env(s: str, i: int, t: pd.Timestamp) -> dict:
        return {"payload": {"sensor_id": s, "district": f"dr-{TAG}", "lat": 30.2 + 0.01 * i, "lon": 120.1 + 0.01 * i,
                            "observed_at": t.isoformat(),
                            "values": {"temp": {"value": 10.0 + i + 0.1 * t.minute, "unit": "degC", "qc": 1},
                                       "rain": {"value": 0.5 * i, "unit": "mm", "qc": 1}}}}

    events = [env(s, i, t) for t in times for i, s in enumerate(sids)]
    opts = StreamOptions(variables=["temp", "rain"], refit_in_background=False)
    ref = WeatherService(opts, None, config=config)
    await ref.handle(events)
    h0 = times[0]
    assert ref.raw[h0] and ref.monitor.last_closed >= h0
    committed = [e for e in events if pd.Timestamp(e["payload"]["observed_at"]) < h0 + pd.Timedelta(minutes=40)]
    with psycopg.connect(db_url) as conn:
        for e in committed:
            p = e["payload"]
            for q, v in p["values"].items():
                conn.execute("INSERT INTO observations (time, sensor_id, quantity, value, unit, qc, domain, district) "
                             "VALUES (%s, %s, %s, %s, %s, %s, 'weather', %s)",
                             (p["observed_at"], p["sensor_id"], q, v["value"], v["unit"], v["qc"], p["district"]))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=1, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        again = WeatherService(opts, pool, config=config)
        rest = events[len(committed):]
        await again.handle(rest[:10])
        await again.handle(rest[10:])
    finally:
        await pool.close()
    assert again.counts["recovered_readings"] == len(committed)
    assert again.raw[h0] == ref.raw[h0]
    assert again.monitor.rain[f"dr-{TAG}"][h0] == ref.monitor.rain[f"dr-{TAG}"][h0] > 0
    # without the stored readings the hour would have been aggregated from its last 20 minutes only
    lone = WeatherService(opts, None, config=config)
    await lone.handle(rest)
    assert lone.raw[h0] != ref.raw[h0]


async def test_a_restart_takes_up_open_faults_and_signals(stack_env, db_url):
    """Faults and signal levels lived in memory: after a restart a fault open at the crash was never cleared and a
    signal in force never lifted (a worsening one raised anew, which notify folds as a repeat). At start-up the
    service takes them up from the alerts table."""
    from psycopg_pool import AsyncConnectionPool

    from services.weather.handlers import WeatherService

    t0 = pd.Timestamp("2026-11-29T06:00Z")
    rows = [("wf-1", "sensor_fault", "weather:sensor_fault:wx-7:temp", None,
             {"sensor_id": "wx-7", "quantity": "temp", "observed_at": t0.isoformat()}),
            ("ws-1", "rainstorm_signal", "weather:rainstorm:d05", "orange", {"action": "raise"}),
            ("ws-0", "rainstorm_signal", "weather:rainstorm:d04", "blue", {"action": "raise"})]
    with psycopg.connect(db_url) as c:
        for alert_id, kind, dedup, level, ev in rows:
            c.execute(
                "INSERT INTO alerts (alert_id, domain, kind, severity, level, status, title_zh, title_en, message_zh,"
                " message_en, dedup_key, raised_at, evidence, resolved_at) VALUES (%s, 'weather', %s, 'major', %s,"
                " 'raised', 't', 't', 'm', 'm', %s, %s, %s, %s)",
                (alert_id, kind, level, dedup, t0.to_pydatetime(), json.dumps(ev),
                 t0.to_pydatetime() if alert_id == "ws-0" else None))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        svc = WeatherService(pool=pool)
        assert await svc.restore_open_alerts() == 2
        assert svc.faults[("wx-7", "temp")].start == t0
        assert svc.monitor.board.level == {("rainstorm", "d05"): "orange"}
        assert svc.monitor.episode[("rainstorm", "d05")] == t0
        # the next hours under the lift level lift it: a "cleared" under the same key
        changes = []
        for h in range(1, 4):
            changes += svc.monitor.board.update(t0 + pd.Timedelta(hours=h), {"rainstorm": {"d05": 0.0}})
        assert [(c.action, c.previous) for c in changes] == [("lift", "orange")]
    finally:
        await pool.close()
