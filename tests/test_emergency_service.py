"""The emergency stream service against the real Kafka and PostgreSQL.

The domain generator's pumps, wearables and gas detector (12 simulated hours, with a bearing
fault, a fall in a hazard zone, a night intrusion and an H2S release) are turned into envelopes by
the ingest gateway's validator and published straight to the topics it names, under sensor and
machine ids unique to this run. The service's StreamProcessors (wired as the app wires them) run in-process with fresh consumer groups.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from kafka_io import publish, read_since

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]

TAG = secrets.token_hex(3)
START = pd.Timestamp("2026-11-26T10:00Z")  # 18:00 local: the 12 h run spans the night shift's events


def _scenario():
    from services.emergency.domain.simulate import generate
    from shared.city import default_city

    city = default_city()
    sc = generate(city, START, 12, 3)
    ren = {s.sensor_id: f"{s.sensor_id}-{TAG}" for s in sc.sensors}
    specs = {ren[s.sensor_id]: s.model_copy(update={"sensor_id": ren[s.sensor_id]}) for s in sc.sensors}
    cfg = json.loads(json.dumps(sc.config, default=str))
    for m in cfg["machines"]:
        m["sensor_id"], m["machine_id"] = ren[m["sensor_id"]], f"{m['machine_id']}-{TAG}"
    for g in cfg["gas_sources"]:
        g["detector"], g["source_id"] = ren[g["detector"]], f"{g['source_id']}-{TAG}"
    cfg["wearables"] = {ren[k]: {**v, "worker_id": f"{v['worker_id']}-{TAG}"} for k, v in cfg["wearables"].items()}
    readings = sc.readings.assign(sensor_id=sc.readings["sensor_id"].map(ren))
    truth = [{**t, **({"machine_id": f"{t['machine_id']}-{TAG}"} if "machine_id" in t else {}),
              **({"source_id": f"{t['source_id']}-{TAG}"} if "source_id" in t else {})} for t in sc.truth]
    config = {"city": {"name": city.name, "centre_lat": city.centre_lat, "centre_lon": city.centre_lon,
                       "districts": [{"district_id": d.district_id, "name_zh": d.name_zh, "name_en": d.name_en,
                                      "bbox": list(d.bbox), "low_lying": d.low_lying} for d in city.districts]},
              "domains": {"emergency": cfg}}
    return specs, readings, truth, config


def _envelopes(specs, readings) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) per reading, made by the ingest gateway's own validator from the MQTT payload a
    sensor sends: the envelope type and the topic are the gateway's (wearables: `observation.safety` on the
    restricted topic), not what this test would like them to be."""
    from services.ingest.domain.validate import Accepted, Validator

    v = Validator(specs, source="test")
    out = []
    for (t, sid), g in readings.groupby(["time", "sensor_id"], sort=True):
        spec = specs[sid]
        payload = json.dumps({"sensor_id": sid, "time": t.isoformat(),
                              "values": {q: float(x) for q, x in zip(g["quantity"], g["value"], strict=True)}})
        res = v.validate(f"city/{spec.gateway_id}/{sid}", payload.encode(), t.to_pydatetime())
        assert isinstance(res, Accepted), res
        out.append((res.topic, res.key, res.value))
    return out


async def _run_service(stack_env, db_url, config, tmp_path: Path, group: str, stop_when, timeout_s: float = 150):
    """Run the service's processors and report drawer until `stop_when(svc)` holds; returns the service."""
    from psycopg_pool import AsyncConnectionPool

    from services.emergency.handlers import EmergencyService, processors
    from services.emergency.settings import EmergencySettings
    from shared import kafka
    from shared.service import Readiness

    s = EmergencySettings(db_url=db_url, state_dir=tmp_path, emergency_pseudonym_key="test-key-" + TAG * 4)
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=3, open=False)
    await pool.open()
    svc = EmergencyService(s, pool, config=config)
    ready = Readiness("kafka")
    # the alert ids this instance produced (the shared topic may also carry other runs' look-alikes)
    svc.alert_ids = set()
    for name in ("handle_equipment", "handle_personal", "handle_safety"):
        async def recorded(events, _handle=getattr(svc, name)):
            outs = await _handle(events)
            svc.alert_ids.update(json.loads(o.value)["payload"]["alert_id"] for o in outs
                                 if o.topic == "cityops.alerts.v1")
            return outs
        setattr(svc, name, recorded)
    procs = processors(svc, s.kafka_bootstrap, group, ready)
    stop = asyncio.Event()
    producer = kafka.producer(s.kafka_bootstrap)
    await producer.start()
    tasks = [asyncio.create_task(p.run(stop)) for p in procs] + [asyncio.create_task(svc.reporter(stop, producer, 0.5))]
    try:
        deadline = time.monotonic() + timeout_s
        while not await stop_when(svc):
            for t in tasks:
                if t.done():
                    t.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"service did not finish in {timeout_s:.0f} s: processed "
                                     f"{[p.processed for p in procs]}")
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        await pool.close()
    return svc


@pytest.fixture(scope="module")
def scenario():
    return _scenario()


async def test_stream_finds_every_scenario_privately_and_replays_without_duplicates(
        stack_env, db_url, scenario, tmp_path, monkeypatch):
    from services.emergency.domain.simulate import check_detection

    specs, readings, truth, config = scenario
    records = _envelopes(specs, readings)
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    since_ms = int(time.time() * 1000) - 1000
    monkeypatch.setenv("CITYOPS_KAFKA_START_AT_MS", str(since_ms))
    await publish(bootstrap, records)
    n_per_sensor = readings.groupby("sensor_id")["time"].nunique()
    last_times = readings.groupby("sensor_id")["time"].max().to_dict()

    def counts():
        with psycopg.connect(db_url) as conn:
            return (conn.execute("SELECT count(*) FROM equipment_health").fetchone()[0],
                    conn.execute("SELECT count(*) FROM incidents").fetchone()[0],
                    conn.execute("SELECT count(*) FROM incident_events").fetchone()[0],
                    conn.execute("SELECT count(*) FROM incidents WHERE report_path IS NOT NULL").fetchone()[0])

    async def done(svc):
        # every pump to its last sample: the equipment topic's partitions progress unevenly under load
        seen = all(sid in svc.machines and svc.machines[sid].last is not None and svc.machines[sid].last >= t
                   for sid, t in last_times.items() if sid.startswith("pump"))
        workers_done = all(svc.last_seen.get(sid) == t for sid, t in last_times.items() if not sid.startswith("pump"))
        n_inc = counts()
        return seen and workers_done and n_inc[1] >= 3 and n_inc[3] == n_inc[1]

    svc = await _run_service(stack_env, db_url, config, tmp_path, f"cityops-emergency-test-{TAG}", done)
    assert svc.fits == 3, "each pump's detector trains once on the first part of its stream"
    health, n_incidents, n_events, n_reports = counts()
    assert health >= sum(n_per_sensor[s] for s in n_per_sensor.index if s.startswith("pump")) * 0.5

    # our machine/source ids carry TAG; worker alerts name a pseudonym per episode, found by the ids produced
    keys = [TAG, *svc.alert_ids]
    pseudonyms = set(svc.episodes)  # the workers' stable pseudonyms: the service's own state, never on the topic
    alerts = await read_since(bootstrap, "cityops.alerts.v1", since_ms,
                         lambda v: any(k.encode() in v for k in keys))
    rows = [{**a["payload"], "raised_at": a["payload"]["raised_at"]} for a in alerts]
    results = {t["scenario"]: check_detection(t, rows) for t in truth}
    assert all(r["detected"] for r in results.values()), results
    assert results["equipment_fault"]["delay_min"] < 90
    # wearables are workers, never fixed gas detectors: this service watched the configured detector only
    # (judged on its own state: other runs on the shared stack may raise look-alike alerts on the topic)
    assert {d.source["source_id"] for d in svc.detectors.values()} == {
        t["source_id"] for t in truth if t["scenario"] == "gas_release"}

    # privacy: a worker alert on the shared topic names a pseudonym only — no id, sensor, name, position, value
    worker_alerts = [a for a in alerts if a["payload"]["dedup_key"].startswith("emergency:worker:")]
    subjects = {a["payload"]["evidence"]["worker"] for a in worker_alerts}
    assert worker_alerts and subjects.isdisjoint(pseudonyms)
    by_alert: dict[str, set[str]] = {}
    for a in worker_alerts:  # an alert's raise, updates and clearing name one subject
        by_alert.setdefault(a["payload"]["alert_id"], set()).add(a["payload"]["evidence"]["worker"])
    assert all(len(v) == 1 for v in by_alert.values()), by_alert
    worker_ids = [w["worker_id"] for w in config["domains"]["emergency"]["wearables"].values()]
    for a in worker_alerts:
        raw = json.dumps(a, ensure_ascii=False)
        assert a["payload"]["location"] is None
        assert not any(w in raw for w in worker_ids) and "wb-" not in raw, raw
        assert not any(p in raw for p in pseudonyms), raw
        assert not {"lat", "lon", "heart_rate_bpm", "h2s_ppm"} & set(a["payload"]["evidence"]), raw
    kinds = {a["payload"]["kind"] for a in worker_alerts}
    assert {"fall", "man_down", "restricted_entry"} <= kinds
    assert any(a["payload"]["kind"] == "man_down" and a["payload"]["severity"] == "critical" for a in worker_alerts)
    assert any(a["payload"]["status"] == "cleared" for a in worker_alerts)

    # products: incidents with steps and a written report; tasks with the roster's skills and a map
    with psycopg.connect(db_url) as conn:
        inc = dict(conn.execute("SELECT kind, report_path FROM incidents").fetchall())
        steps = conn.execute("SELECT i.kind, e.status FROM incident_events e JOIN incidents i USING (incident_id)"
                             ).fetchall()
    assert {"equipment_fault", "gas_release", "worker_safety"} <= set(inc)
    # report_path names the PDF document; the HTML page of the same report sits next to it
    pdf_path = Path(inc["gas_release"])
    assert pdf_path.suffix == ".pdf" and pdf_path.read_bytes()[:5] == b"%PDF-"
    html = pdf_path.with_suffix(".html").read_text(encoding="utf-8")
    assert "事件报告 Incident report" in html and "data:image/png;base64," in html
    # and the service serves both
    import httpx
    from fastapi import FastAPI

    from services.emergency import endpoints

    app = endpoints.mount(FastAPI(), svc.s, None, svc)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://em") as http:
        r = await http.get(f"/emergency/incidents/{pdf_path.stem}/report.pdf")
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
        assert r.content == pdf_path.read_bytes()
        r = await http.get(f"/emergency/incidents/{pdf_path.stem}/report")
        assert r.status_code == 200 and "事件报告" in r.text
        assert (await http.get("/emergency/incidents/no-such-incident/report.pdf")).status_code == 404
    assert ("gas_release", "dispatched") in steps and ("gas_release", "resolved") in steps
    tasks = await read_since(bootstrap, "cityops.tasks.v1", since_ms, lambda v: any(k.encode() in v for k in keys))
    by_kind = {t["payload"]["kind"]: t["payload"] for t in tasks}
    assert by_kind["inspect_equipment"]["required_skills"] == ["equipment"]
    assert by_kind["respond_incident"]["required_skills"][0] == "incident_response"
    assert Path(by_kind["respond_incident"]["evidence"]["map_png"]).read_bytes()[:4] == b"\x89PNG"

    # a replay of the same batch (new consumer groups, fresh process state) adds no rows and reuses alert ids
    ids_first = svc.alert_ids
    assert ids_first and ids_first <= {a["payload"]["alert_id"] for a in alerts}, "what it produced is on the topic"
    since2 = int(time.time() * 1000)
    monkeypatch.setenv("CITYOPS_KAFKA_START_AT_MS", str(since_ms))
    svc2 = await _run_service(stack_env, db_url, config, tmp_path, f"cityops-emergency-replay-{TAG}", done)
    assert counts() == (health, n_incidents, n_events, n_reports)
    again = await read_since(bootstrap, "cityops.alerts.v1", since2, lambda v: any(k.encode() in v for k in keys))
    assert svc2.alert_ids and svc2.alert_ids <= ids_first
    assert svc2.alert_ids <= {a["payload"]["alert_id"] for a in again}
    assert svc2.fits == 3
    os.environ.pop("CITYOPS_KAFKA_START_AT_MS", None)


async def test_restart_after_training_relearns_from_stored_history(stack_env, db_url, scenario, tmp_path, monkeypatch):
    """A service (re)started after the training period learns each pump from the stored observations and still
    catches the fault in the new data."""
    from services.emergency.domain.simulate import check_detection

    specs, readings, truth, config = scenario
    train_until = pd.Timestamp(config["domains"]["emergency"]["train_until"])
    pumps = readings[readings["sensor_id"].str.startswith("pump")]
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        old = pumps[pumps["time"] <= train_until]
        # what the sink would have stored before the restart
        with cur.copy("COPY observations (time, sensor_id, quantity, value, unit, qc, domain, district) FROM STDIN") as cp:
            for r in old.itertuples(index=False):
                cp.write_row((r.time, r.sensor_id, r.quantity, r.value, "x", 1, "equipment", None))
    new = pumps[pumps["time"] > train_until]
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    since_ms = int(time.time() * 1000) - 1000
    monkeypatch.setenv("CITYOPS_KAFKA_START_AT_MS", str(since_ms))
    await publish(bootstrap, _envelopes(specs, new))
    last = new["time"].max()

    async def done(svc):
        return all(m.last == last for m in svc.machines.values()) and len(svc.machines) == 3

    svc = await _run_service(stack_env, db_url, config, tmp_path, f"cityops-emergency-restart-{TAG}", done)
    assert svc.fits == 3 and all(m.history_loaded for m in svc.machines.values())
    alerts = await read_since(bootstrap, "cityops.alerts.v1", since_ms, lambda v: b"equipment_fault" in v and TAG.encode() in v)
    fault = next(t for t in truth if t["scenario"] == "equipment_fault")
    res = check_detection(fault, [a["payload"] for a in alerts])
    assert res["detected"], res


async def test_restart_without_a_training_period_relearns_from_stored_samples(db_url, scenario, tmp_path):
    """Without `train_until` a restarted service relearnt each pump's normal from the next 480 live samples: hours
    of a pump unwatched, and a pump failing meanwhile learnt as normal. It now learns from the samples stored before
    its first one, leaving out those its detector had judged abnormal, and judges from the first sample on."""
    from psycopg_pool import AsyncConnectionPool

    from services.emergency import repository
    from services.emergency.handlers import EmergencyService
    from services.emergency.settings import EmergencySettings

    specs, readings, _, config = scenario
    config = json.loads(json.dumps(config))
    em = config["domains"]["emergency"]
    cut = pd.Timestamp(em.pop("train_until"))
    machine = em["machines"][0]
    sid, mid = machine["sensor_id"], machine["machine_id"]
    pump = readings[readings["sensor_id"] == sid]
    old = pump[pump["time"] <= cut]
    times = sorted(old["time"].unique())
    flagged = times[len(times) // 2]
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        # (the restart test above may have stored them already)
        cur.executemany("INSERT INTO observations (time, sensor_id, quantity, value, unit, qc, domain, district)"
                        " VALUES (%s, %s, %s, %s, 'x', 1, 'equipment', NULL) ON CONFLICT DO NOTHING",
                        [(r.time, r.sensor_id, r.quantity, r.value) for r in old.itertuples(index=False)])
        cur.execute("INSERT INTO equipment_health (time, machine_id, score, is_anomaly) VALUES (%s, %s, 5.0, true)",
                    (flagged.to_pydatetime(), mid))
    s = EmergencySettings(db_url=db_url, state_dir=tmp_path, emergency_pseudonym_key="test-key-" + TAG * 4,
                          emergency_train_samples=min(480, len(times) - 1))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        async with pool.connection() as conn:
            hist = await repository.machine_history(conn, sid, times[-1].to_pydatetime(), len(times), before=False,
                                                    machine_id=mid)
        assert len(hist) == len(times) - 1  # the flagged sample is not learnt from
        svc = EmergencyService(s, pool, config=config)
        first_new = _envelopes(specs, pump[pump["time"] > cut])[:1]
        await svc.handle_equipment([json.loads(v) for _, _, v in first_new])
        m = svc.machines[sid]
        assert m.history_loaded and svc.fits == 1 and m.monitor is not None
    finally:
        await pool.close()
