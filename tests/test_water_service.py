"""The water stream service against the real Kafka and PostgreSQL.

The domain generator's city (24 simulated hours: a growing leak, a burst, a rainstorm over the
drainage catchments) is published as Observation envelopes straight to the water observation
topic, under sensor and catchment ids unique to this run. The service's StreamProcessor runs
in-process with a fresh consumer group; a second service with another group replays the same
records into the same database.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from kafka_io import observation_envelopes, publish, read_since

TAG = secrets.token_hex(3)
START = pd.Timestamp("2026-11-20T00:00Z")
HOURS = 24


def _scenario():
    from services.water.domain.simulate import generate
    from shared.city import default_city

    city = default_city()
    sc = generate(city, START, HOURS, 7)
    ren = {s.sensor_id: f"{s.sensor_id}-{TAG}" for s in sc.sensors}
    specs = {ren[s.sensor_id]: s.model_copy(update={"sensor_id": ren[s.sensor_id]}) for s in sc.sensors}
    cfg = json.loads(json.dumps(sc.config, default=str))
    cfg["sensors"] = {ren[k]: v for k, v in cfg["sensors"].items()}
    for c in cfg["catchments"]:
        c["catchment_id"] = f"{c['catchment_id']}-{TAG}"
        c["sensors"] = {role: ren[sid] for role, sid in c["sensors"].items()}
    readings = sc.readings.assign(sensor_id=sc.readings["sensor_id"].map(ren))
    truth = [{**t, **({"catchment_id": f"{t['catchment_id']}-{TAG}"} if "catchment_id" in t else {})}
             for t in sc.truth]
    config = {"city": {"name": city.name, "centre_lat": city.centre_lat, "centre_lon": city.centre_lon,
                       "districts": [{"district_id": d.district_id, "name_zh": d.name_zh, "name_en": d.name_en,
                                      "bbox": list(d.bbox), "low_lying": d.low_lying} for d in city.districts]},
              "start": START.isoformat(), "hours": HOURS, "seed": 7, "domains": {"water": cfg}}
    return specs, readings, truth, config


async def _run(stack_env, db_url, config, state: Path, group: str, last: tuple[pd.Timestamp, pd.Timestamp],
               timeout_s: float = 90):
    """Run the service's processor until it has seen our last reading of every sensor; returns (service, outputs)."""
    from psycopg_pool import AsyncConnectionPool

    from services.water.handlers import TOPICS, WaterService
    from services.water.settings import WaterSettings
    from shared.service import Readiness
    from shared.stream import StreamProcessor

    s = WaterSettings(db_url=db_url, state_dir=state, water_idle_flush_s=4.0,
                      water_silent_sensor_s=60.0)
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=3, open=False)
    await pool.open()
    svc = WaterService(s, pool, config=config)
    await svc.pretrain()
    outputs = []

    async def handle(events):
        out = await svc.handle(events)
        if svc.fitting is not None and not svc.fitting.done():
            await svc.fitting  # the test waits for the model so the run is deterministic; the service does not
        out += await svc.handle([])
        outputs.extend(out)
        return out

    async def tick():
        out = await svc.tick()
        outputs.extend(out)
        return out

    proc = StreamProcessor("water-test", s.kafka_bootstrap, TOPICS, group, handle, Readiness("kafka"),
                           tick=tick, tick_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        deadline = time.monotonic() + timeout_s
        while not (svc.latest_scada == last[0] and svc.catchments and svc.monitor and not svc.monitor.pending
                   and all(st.level and max(st.level) == last[1] for st in svc.catchments.values())):
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"not all readings seen in {timeout_s:.0f} s ({proc.processed} records)")
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()
    return svc, [json.loads(o.value)["payload"] | {"_topic": o.topic} for o in outputs]


@pytest.mark.stack
@pytest.mark.timeout(240)
async def test_leaks_and_floods_detected_and_replay_adds_nothing(stack_env, db_url, tmp_path, monkeypatch):
    from services.water.domain.simulate import check_detection

    specs, readings, truth, config = _scenario()
    records = observation_envelopes("water", specs, readings, gateway_qc=True)
    scada = readings["sensor_id"].isin(config["domains"]["water"]["sensors"])
    last = (pd.Timestamp(readings.loc[scada, "time"].max()), pd.Timestamp(readings.loc[~scada, "time"].max()))
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    since_ms = int(time.time() * 1000) - 1000
    monkeypatch.setenv("CITYOPS_KAFKA_START_AT_MS", str(since_ms))
    await publish(bootstrap, records)

    svc, outs = await _run(stack_env, db_url, config, tmp_path, f"cityops-water-test-{TAG}-a", last)
    assert svc.fit_error is None and svc.monitor is not None
    assert svc.late == 0, "a step went into the models before all its readings were in"
    alerts = [o for o in outs if o["_topic"] == "cityops.alerts.v1"]
    tasks = [o for o in outs if o["_topic"] == "cityops.tasks.v1"]
    # the notification service keeps an alert's first version (later ones with its id are repeats):
    # the demo judges detection on those, and so does this test
    first_versions: dict[str, dict] = {}
    for a in alerts:
        first_versions.setdefault(a["alert_id"], a)
    rows = [{k: a.get(k) for k in ("alert_id", "domain", "kind", "severity", "level", "district", "raised_at",
                                   "evidence", "title_en")} for a in first_versions.values()]
    results = {(t["scenario"], t.get("catchment_id")): check_detection(t, rows) for t in truth}
    print("water check_detection:", json.dumps({f"{k[0]}:{k[1]}": v for k, v in results.items()}, indent=1))

    # leaks: an alarm naming candidate pipes at once, then the refined leak with a map and a repair task
    leak_alerts = [a for a in alerts if a["kind"] == "leak"]
    assert leak_alerts, "no leak alert"
    assert all(a["dedup_key"].startswith("water:leak:") and a["evidence"]["observed_at"] for a in leak_alerts)
    assert all(a["evidence"]["candidates"] for a in leak_alerts if a["status"] == "raised"), "an alarm without pipes"
    for scenario in ("incipient_leak", "pipe_burst"):
        assert results[(scenario, None)]["detected"], (scenario, results[(scenario, None)])
    localised = [a for a in leak_alerts if a["evidence"].get("map_png")]
    assert localised, "no leak was localised"
    # no alarm before the first leak started
    first_leak = min(pd.Timestamp(t["start"]) for t in truth if t["scenario"] in ("pipe_burst", "incipient_leak"))
    assert min(pd.Timestamp(a["raised_at"]) for a in leak_alerts) >= first_leak, "leak alarm before any leak"
    assert all(a["evidence"]["estimated_flow_m3h"] > 0 for a in localised)
    assert Path(localised[0]["evidence"]["map_png"]).read_bytes()[:4] == b"\x89PNG"
    repair = [t for t in tasks if t["kind"] == "repair_pipe"]
    assert repair and repair[0]["required_skills"] == ["water_repair"] and repair[0]["evidence"]["map_png"]
    assert "漏" in repair[0]["title_zh"] and "leak" in repair[0]["title_en"].lower()

    # floods: every flooded catchment warned before the storm peak, orange -> an inspect_drain task
    for t in truth:
        if t["scenario"] == "rainstorm_flood":
            r = results[("rainstorm_flood", t["catchment_id"])]
            assert r["detected"], r
            first = min(pd.Timestamp(a["raised_at"]) for a in alerts
                        if a["kind"] == "flood_risk" and a["evidence"]["catchment_id"] == t["catchment_id"])
            assert first < pd.Timestamp(t["storm_peak"])
    flood = [a for a in alerts if a["kind"] == "flood_risk"]
    assert all(a["dedup_key"] == f"water:flood:{a['evidence']['catchment_id']}" for a in flood)
    assert {a["level"] for a in flood} >= {"blue", "yellow", "orange"}
    per_episode = pd.Series([a["alert_id"] for a in flood]).value_counts()
    assert per_episode.max() <= 8, f"flapping flood warnings: {per_episode.to_dict()}"
    drains = [t for t in tasks if t["kind"] == "inspect_drain"]
    assert drains and all(t["required_skills"] == ["drain"] for t in drains)
    assert len({t["task_id"] for t in drains}) == len(drains), "one inspect_drain task per episode"

    # the outputs really went to Kafka
    on_topic = await read_since(bootstrap, "cityops.alerts.v1", since_ms, lambda v: TAG.encode() in v)
    assert {a["event_id"] for a in on_topic} >= {a["alert_id"] for a in flood}

    def leak_rows():
        with psycopg.connect(db_url) as conn:
            return conn.execute("SELECT leak_id, pipe_id, jsonb_array_length(candidates) FROM leaks "
                                "ORDER BY leak_id").fetchall()

    first_rows = leak_rows()
    assert first_rows and all(n > 0 for _, _, n in first_rows)

    # replay: another service instance, another group, the same records -> same ids, no new rows
    svc2, outs2 = await _run(stack_env, db_url, config, tmp_path, f"cityops-water-test-{TAG}-b", last)
    assert leak_rows() == first_rows
    assert svc2.late == 0, "the replay fed a step before all its readings were in"
    replayed = {(o["alert_id"], o["dedup_key"], o["raised_at"], o["status"]) for o in outs2 if "alert_id" in o}
    original = {(a["alert_id"], a["dedup_key"], a["raised_at"], a["status"]) for a in alerts}
    assert replayed == original, (sorted(replayed - original), sorted(original - replayed))
    assert {o["task_id"] for o in outs2 if "task_id" in o} == {t["task_id"] for t in tasks}


def _offline_service(tmp_path, config):
    from services.water.handlers import WaterService
    from services.water.settings import WaterSettings

    s = WaterSettings(db_url="postgresql://unused/none", kafka_bootstrap="unused:9092", state_dir=tmp_path)
    return WaterService(s, None, config=config)


async def test_bad_observation_is_a_poison_record_and_changes_nothing(tmp_path):
    from services.water.handlers import WaterService
    from shared.stream import PoisonRecord

    svc: WaterService = _offline_service(tmp_path, {})
    good = {"type": "observation.water", "payload": {
        "sensor_id": "dl-x", "domain": "water", "kind": "drain_level", "gateway_id": "g", "district": None,
        "lat": 30.0, "lon": 120.0, "observed_at": "2026-01-01T00:00:00Z",
        "values": {"water_level": {"value": 1.0, "unit": "m", "qc": 1}}}}
    bad = {"type": "observation.water", "payload": {**good["payload"], "observed_at": "yesterday"}}
    with pytest.raises(PoisonRecord, match="observed_at"):
        await svc.handle([good, bad])
    assert svc.pending == {} and svc.latest_scada is None


def test_check_detection_needs_the_right_pipe_and_a_warning_before_the_peak():
    from services.water.domain.simulate import check_detection

    burst = {"scenario": "pipe_burst", "start": "2026-01-01T14:45:00+00:00", "pipe_id": "315"}
    alarm = {"alert_id": "a1", "domain": "water", "kind": "leak", "raised_at": "2026-01-01T15:00:00+00:00",
             "evidence": {"candidates": []}}
    right = {**alarm, "raised_at": "2026-01-01T21:00:00+00:00",
             "evidence": {"candidates": [{"pipe_id": "311"}, {"pipe_id": "315"}]}}
    wrong = {**right, "evidence": {"candidates": [{"pipe_id": "10"}]}}
    hit = check_detection(burst, [alarm, right])
    assert hit["detected"] and hit["delay_min"] == 15.0 and "ranked 2" in hit["note"]
    assert not check_detection(burst, [alarm, wrong])["detected"]
    assert not check_detection(burst, [{**right, "raised_at": "2026-01-01T10:00:00+00:00", "alert_id": "a0"}])[
        "detected"]
    storm = {"scenario": "rainstorm_flood", "start": "2026-01-01T18:20:00+00:00", "catchment_id": "c01",
             "storm_peak": "2026-01-01T19:10:00+00:00", "max_grade": "yellow"}
    warn = {"alert_id": "f1", "domain": "water", "kind": "flood_risk", "level": "blue",
            "raised_at": "2026-01-01T18:00:00+00:00", "evidence": {"catchment_id": "c01"}}
    res = check_detection(storm, [warn])
    assert res["detected"] and "70 min before" in res["note"]
    assert not check_detection(storm, [{**warn, "evidence": {"catchment_id": "c02"}}])["detected"]


async def test_steps_held_by_a_sensor_silent_to_the_end_are_released_when_the_stream_goes_quiet(tmp_path):
    """The stream ends while one SCADA sensor has been silent for hours: once nothing has arrived for
    `water_idle_flush_s`, the steps it held go on without it, and pending_work (the gauge the demo waits on)
    falls to what is really left."""
    import json as _json

    from services.water.handlers import WaterService

    specs, readings, _, config = _scenario()
    svc: WaterService = _offline_service(tmp_path, config)
    svc.s.water_history_days = 0  # no history simulation here; nothing is fitted in this test
    scada = [sid for sid, v in config["domains"]["water"]["sensors"].items() if v["kind"] == "pressure"]
    mute = scada[0]
    head = readings[readings["time"] < START + pd.Timedelta(hours=3)]
    head = head[(head["sensor_id"] != mute) | (head["time"] < START + pd.Timedelta(hours=1))]
    events = [_json.loads(v) for _, _, v in observation_envelopes("water", specs, head, gateway_qc=True)]
    await svc.handle(events)
    held = len(svc.pending)
    assert held >= 7 and svc.pending_work() >= held  # steps since the mute sensor's last reading wait for it
    assert await svc.tick() == [] and len(svc.pending) == held  # not yet quiet for long enough
    svc.last_arrival_wall -= svc.s.water_idle_flush_s + 1
    for sid in svc.sensor_wall:
        svc.sensor_wall[sid] -= svc.s.water_idle_flush_s + 1
    # a batch that kept the service busy all that time (a model fit) just ended: records that came meanwhile
    # are still to be polled, so this is not silence yet
    svc.handled_wall = time.monotonic()
    assert await svc.tick() == [] and len(svc.pending) == held
    svc.handled_wall -= svc.s.water_idle_flush_s + 1
    await svc.tick()
    assert len(svc.pending) == 0
    assert svc.fed_until == head.loc[head["sensor_id"].isin(svc.scada_sensors), "time"].max()
    if svc.fitting is not None:
        svc.fitting.cancel()


def test_a_withdrawn_alarm_clears_its_alert_and_sends_no_crew(tmp_path):
    """An alarm the water balance did not confirm (detection.LeakMonitor withdraws it when its window closes)
    clears the alert that went out when it was raised - same alert id, in Chinese and English, with the balance's
    rise and the threshold - and no repair task follows."""
    from types import SimpleNamespace

    from services.water.domain.detection import LeakEvent

    _, _, _, config = _scenario()
    svc = _offline_service(tmp_path, config)
    t = START + pd.Timedelta(hours=5)
    alarm = LeakEvent("", t, "water_balance", "network", onset_at=t - pd.Timedelta(hours=2))
    raised = svc._leak_alarm(alarm)
    svc.monitor = SimpleNamespace(confirm_threshold_m3h=35.25)
    gone = LeakEvent("", t, "water_balance", "network", onset_at=alarm.onset_at, flow_m3h=-10.3,
                     localised_at=t + pd.Timedelta(hours=24), confirmed=False)
    out = svc._leak_withdrawn(gone)
    assert len(out) == 1 and out[0].topic == raised[0].topic
    first, last = (json.loads(o.value)["payload"] for o in (raised[0], out[0]))
    assert last["alert_id"] == first["alert_id"] and last["dedup_key"] == first["dedup_key"]
    assert last["status"] == "cleared" and first["status"] == "raised"
    assert "-10.3" in last["message_en"] and "35.2" in last["message_en"] and "No crew" in last["message_en"]
    assert "解除" in last["title_zh"] and "-10.3" in last["message_zh"] and "无需派单" in last["message_zh"]
    assert last["evidence"]["balance_rise_m3h"] == -10.3 and last["evidence"]["confirm_threshold_m3h"] == 35.25


async def test_a_reading_a_minute_late_joins_its_step(tmp_path):
    """SCADA steps were keyed by each reading's exact time: one pressure reading at 02:01 instead of 02:00 made a
    step of its own, held the 02:00 step incomplete, and the 15-min reindexing dropped it (45 min of data lost in
    the demo). A reading now joins the step of the SCADA grid nearest to it: the steps are those of the same
    stream on time."""
    import json as _json

    specs, readings, _, config = _scenario()
    head = readings[readings["time"] < START + pd.Timedelta(hours=3)].copy()
    scada = [sid for sid, v in config["domains"]["water"]["sensors"].items() if v["kind"] == "pressure"]
    late = (head["sensor_id"] == scada[0]) & (head["time"] == START + pd.Timedelta(hours=2))
    assert late.sum() == 1

    async def steps(frame, sub):
        svc = _offline_service(tmp_path / sub, config)
        svc.s.water_history_days = 0
        await svc.handle([_json.loads(v) for _, _, v in observation_envelopes("water", specs, frame, gateway_qc=True)])
        if svc.fitting is not None:
            svc.fitting.cancel()
        return sorted((t, sid, kind, v) for t, sid, kind, v in svc.train_long)

    on_time = await steps(head, "a")
    head.loc[late, "time"] = head.loc[late, "time"] + pd.Timedelta(minutes=1)
    assert len(on_time) > 12 * len(scada) and await steps(head, "b") == on_time


def test_a_withdrawn_alarm_does_not_clear_a_confirmed_leak_sharing_its_key(tmp_path):
    """Leak alerts are keyed by DMA, and the notification service's "cleared" resolves every open alert of the
    key: a drift alarm withdrawn while a confirmed, unrepaired leak is open in the same DMA used to resolve that
    leak's alert and stop its escalation. Then nothing is cleared."""
    from types import SimpleNamespace

    from services.water.domain.detection import LeakEvent
    from services.water.handlers import LeakRecord

    _, _, _, config = _scenario()
    svc = _offline_service(tmp_path, config)
    svc.monitor = SimpleNamespace(confirm_threshold_m3h=35.25)
    t = START + pd.Timedelta(hours=5)
    gone = LeakEvent("", t, "water_balance", "network", onset_at=t - pd.Timedelta(hours=2), flow_m3h=-10.3,
                     localised_at=t + pd.Timedelta(hours=24), confirmed=False)
    assert len(svc._leak_withdrawn(gone)) == 1  # alone in its DMA: cleared
    key = svc._leak_dedup(gone)
    svc.leaks["leak-1"] = LeakRecord("leak-1", "alert-1", gone.dma, t - pd.Timedelta(hours=9), [], 40.0, None, 0, key)
    assert svc._leak_withdrawn(gone) == []


def test_minimum_night_flow_is_read_in_the_quietest_hours_of_the_citys_day(tmp_path):
    """GET /mnf read 02:00-05:00 UTC, which in a city on UTC+8 is mid-morning. The window is now the balance's own
    quietest three hours (here 18:00-21:00 UTC, 02:00-05:00 in Shanghai)."""
    _, _, _, config = _scenario()
    svc = _offline_service(tmp_path, config)
    times = pd.date_range("2026-11-20T00:00Z", periods=3 * 96, freq="15min")
    local_h = np.asarray((times.hour + 8) % 24 + times.minute / 60)
    day = np.asarray(times.day)
    demand = 100 + 60 * np.sin(2 * np.pi * (local_h - 9) / 24).clip(-0.8)  # lowest at night, local time
    demand = np.where((local_h >= 2) & (local_h < 5), 30.0, demand)
    demand[(day == 20) & (local_h >= 2) & (local_h < 5)] += 12.5  # a leak raises the second night
    svc.balance = list(zip(times, demand, strict=True))
    svc._night_flow()  # noqa: SLF001
    nights = svc.night_flow
    assert {v["window"] for v in nights.values()} == {"18:00-21:00"}
    assert nights["2026-11-20"]["min_night_flow_m3h"] == 42.5 and nights["2026-11-21"]["min_night_flow_m3h"] == 30.0


async def test_a_silent_tank_level_makes_the_balance_a_gap_not_a_wrong_number(tmp_path, caplog):
    """The balance (supply inflow minus tank storage change) was formed from each batch's own columns: with a
    tank's level silent it came out without that tank's storage change (a false rise or a missed leak), with a
    supply meter silent it vanished (no alarm could fire). Now such steps are gaps, and the log says detection is
    blind and why."""
    import logging
    from types import SimpleNamespace

    from services.water.domain.detection import scada_to_wide

    _, _, _, config = _scenario()
    svc = _offline_service(tmp_path, config)
    net = svc.net
    res = set(net.reservoirs)
    supply = [link for link, (a, b) in net.link_nodes.items() if a in res or b in res]
    tank = net.tanks[0]
    times = list(pd.date_range(START, periods=5, freq="15min"))
    rows = [(t, {**{f"flow:{link}": 500.0 for link in supply}, **{f"level:{tk}": 5.0 + 0.01 * k for tk in net.tanks},
                 "pressure:10": 40.0}) for k, t in enumerate(times)]
    long = [(t, key.split(":", 1)[1], key.split(":", 1)[0], v) for t, r in rows for key, v in r.items()]
    _, trained, _ = scada_to_wide(pd.DataFrame(long, columns=["time", "sensor_id", "kind", "value"]))
    fed = []
    svc.monitor = SimpleNamespace(model=SimpleNamespace(sensors=trained), update=lambda w: fed.append(w) or [],
                                  take_alarms=list)
    for _, r in rows[3:]:
        del r[f"level:{tank}"]  # the tank's level logger falls silent for the last two steps
    svc.backlog = rows[1:]
    svc.prev_row = rows[0]
    with caplog.at_level(logging.WARNING, logger="cityops.water"):
        await svc._feed()  # noqa: SLF001
    bal = fed[0]["balance:network"]
    assert np.isfinite(bal.iloc[:2]).all() and bal.iloc[2:].isna().all()
    assert svc.balance_blind and "blind" in caplog.text and f"level:{tank}" in caplog.text


@pytest.mark.stack
async def test_a_restart_takes_up_the_open_flood_warnings(stack_env, db_url, tmp_path):
    """A catchment's warning lived in memory: after a restart a catchment still at orange raised a new warning under
    a new id and its drain crew got a second task, and one that fell back was never lifted. At start-up the service
    takes up the open warnings from the alerts table (as the notification service stored them)."""
    from psycopg_pool import AsyncConnectionPool

    from services.water.domain import flood
    from services.water.handlers import WaterService
    from services.water.settings import WaterSettings

    _, _, _, config = _scenario()
    cids = [c["catchment_id"] for c in config["domains"]["water"]["catchments"]][:2]
    t0 = START + pd.Timedelta(hours=6)
    with psycopg.connect(db_url) as c:
        # the first warning went red and was lowered to orange: the stored level stays the episode's highest
        for cid, level, grade in zip(cids, ("red", "yellow"), ("orange", "yellow"), strict=True):
            c.execute(
                "INSERT INTO alerts (alert_id, domain, kind, severity, level, status, title_zh, title_en, message_zh,"
                " message_en, dedup_key, raised_at, evidence) VALUES (%s, 'water', 'flood_risk', 'major', %s,"
                " 'raised', 't', 't', 'm', 'm', %s, %s, %s)",
                (f"flood-{cid}", level, f"water:flood:{cid}", t0.to_pydatetime(),
                 json.dumps({"catchment_id": cid, "episode_start": t0.isoformat(), "grade": grade})))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        s = WaterSettings(db_url=db_url, kafka_bootstrap="unused:9092", state_dir=tmp_path)
        svc = WaterService(s, pool, config=config)
        assert await svc.restore_open_alerts() == 2
        a, b = (svc.catchments[cid] for cid in cids)
        assert (a.alert_id, a.grade, a.task_sent) == (f"flood-{cids[0]}", "orange", True)
        assert (b.alert_id, b.grade, b.task_sent) == (f"flood-{cids[1]}", "yellow", False)

        def risk(cid, grade, h):
            return flood.FloodRisk(cid, t0 + pd.Timedelta(hours=h), 1.0, 1.0, grade, 0.0, 0.0)

        assert svc._flood_rules(a, risk(cids[0], "orange", 1), 0.0) == []  # noqa: SLF001 - still orange: nothing new
        out = []
        for h in range(1, s.water_flood_clear_after + 1):
            out += svc._flood_rules(b, risk(cids[1], "none", h), 0.0)  # noqa: SLF001
        lifted = [json.loads(o.value)["payload"] for o in out]
        assert [(x["status"], x["alert_id"]) for x in lifted] == [("cleared", f"flood-{cids[1]}")]
    finally:
        await pool.close()


@pytest.mark.stack
async def test_a_restart_takes_up_open_leak_alerts_instead_of_alarming_again(stack_env, db_url, tmp_path):
    """A leak open at a crash was alarmed again by the refitted monitor hours later under a new id, and a confirmed
    one sent a second repair crew. At start-up the open leak alerts are read back: the monitor's new alarm on a
    confirmed leak's DMA becomes that leak's update (same alert id, no second task); an alarm not yet localised goes
    on under its own id, or is withdrawn when a localisation window of data passes without the monitor alarming."""
    from types import SimpleNamespace

    from psycopg_pool import AsyncConnectionPool

    from services.water.domain.detection import LeakEvent
    from services.water.domain.localisation import LeakCandidate
    from services.water.handlers import WaterService
    from services.water.settings import WaterSettings

    _, _, _, config = _scenario()
    t0 = START + pd.Timedelta(hours=4)
    dma_a, dma_b = f"dma-a-{TAG}", f"dma-b-{TAG}"
    confirmed = {"leak_id": f"leak-{dma_a}-1", "detected_at": t0.isoformat(), "dma": dma_a, "estimated_flow_m3h": 42.0,
                 "candidates": [{"rank": 1, "pipe_id": "101", "flow_m3h": 42.0}], "updates": 0}
    with psycopg.connect(db_url) as c:
        for aid, dma, ev in ((f"leak-alert-a-{TAG}", dma_a, confirmed),
                             (f"leak-alert-b-{TAG}", dma_b, {"detected_at": t0.isoformat(), "dma": dma_b})):
            c.execute(
                "INSERT INTO alerts (alert_id, domain, kind, severity, status, title_zh, title_en, message_zh,"
                " message_en, dedup_key, raised_at, evidence) VALUES (%s, 'water', 'leak', 'major', 'raised',"
                " 't', 't', 'm', 'm', %s, %s, %s)", (aid, f"water:leak:{dma}", t0.to_pydatetime(), json.dumps(ev)))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        s = WaterSettings(db_url=db_url, kafka_bootstrap="unused:9092", state_dir=tmp_path)
        svc = WaterService(s, pool, config=config)
        svc.catchments = {}
        assert await svc.restore_open_alerts() == 2
        svc._episode_dma = lambda ev: ev.dma  # noqa: SLF001 - the test's DMAs are not the network's
        t1 = t0 + pd.Timedelta(hours=9)
        assert svc._leak_alarm(LeakEvent("m1", t1, "water_balance", dma_a)) == []  # noqa: SLF001
        pipe = "101"  # the restored leak's own candidate: it is that leak, found again
        assert pipe in svc.net.link_nodes
        found = LeakEvent("m1", t1, "water_balance", dma_a, [LeakCandidate(pipe, 0.8, 40.0, 0.0)], 40.0,
                          localised_at=t1 + pd.Timedelta(hours=6))
        out = [json.loads(o.value)["payload"] | {"_topic": o.topic} for o in await svc._leak(found)]  # noqa: SLF001
        assert [(o["_topic"], o["alert_id"], o["status"]) for o in out] == [
            ("cityops.alerts.v1", f"leak-alert-a-{TAG}", "updated")], out
        assert out[0]["evidence"]["leak_id"] == confirmed["leak_id"]

        again = svc._leak_alarm(LeakEvent("m2", t1, "water_balance", dma_b))  # noqa: SLF001
        first = json.loads(again[0].value)["payload"]
        assert (first["alert_id"], first["status"]) == (f"leak-alert-b-{TAG}", "updated")

        svc2 = WaterService(s, pool, config=config)
        svc2.catchments = {}
        assert await svc2.restore_open_alerts() == 2
        svc2.monitor = SimpleNamespace(step=pd.Timedelta(minutes=15), localise_steps=24 * 4)
        assert svc2._expire_restored_alarms(t1) == []  # noqa: SLF001 - the first data after the restart
        assert svc2._expire_restored_alarms(t1 + pd.Timedelta(hours=23)) == []  # noqa: SLF001
        gone = [json.loads(o.value)["payload"] for o in svc2._expire_restored_alarms(t1 + pd.Timedelta(hours=24))]  # noqa: SLF001
        assert [(g["alert_id"], g["status"]) for g in gone] == [(f"leak-alert-b-{TAG}", "cleared")]
        assert "No crew" in gone[0]["message_en"] and "无需派单" in gone[0]["message_zh"]
    finally:
        await pool.close()


@pytest.mark.stack
async def test_a_restored_leak_takes_only_alarms_near_it_and_only_for_a_while(stack_env, db_url, tmp_path):
    """After a restart the open leak of a DMA took the next alarm of that DMA as its own, whatever the distance and
    for ever (the service's Net3 is one DMA): a new burst kilometres away went out as an update of the old alert,
    with no page and no crew. Now only a leak localised within the merge distance of the old one's candidates is
    it, during one localisation window; and an open alarm's expiry does not clear a confirmed leak of its key."""
    from types import SimpleNamespace

    from psycopg_pool import AsyncConnectionPool

    from services.water.domain.detection import LeakEvent
    from services.water.domain.localisation import LeakCandidate

    _, _, _, config = _scenario()
    svc = _offline_service(tmp_path, config)
    svc._episode_dma = lambda ev: ev.dma  # noqa: SLF001
    net = svc.net
    pipes = list(net.link_nodes)
    old_pipe = pipes[0]
    far = max(pipes, key=lambda p: net.pipe_distance_m(old_pipe, p) if np.isfinite(net.pipe_distance_m(old_pipe, p)) else -1)
    assert net.pipe_distance_m(old_pipe, far) > 2000
    t0 = START + pd.Timedelta(hours=4)
    rows = [{"dedup_key": "water:leak:d1", "alert_id": "old-alert", "raised_at": t0, "evidence": {
        "leak_id": "leak-old", "detected_at": t0.isoformat(), "dma": "d1", "estimated_flow_m3h": 40.0,
        "candidates": [{"rank": 1, "pipe_id": old_pipe}]}},
        {"dedup_key": "water:leak:d1", "alert_id": "newer-alarm", "raised_at": t0 + pd.Timedelta(hours=1),
         "evidence": {"detected_at": (t0 + pd.Timedelta(hours=1)).isoformat(), "dma": "d1"}}]
    assert svc._take_up_leaks(rows) == 2  # noqa: SLF001 - both, though they share a key
    svc.monitor = SimpleNamespace(step=pd.Timedelta(minutes=15), localise_steps=96, merge_distance_m=1000.0,
                                  model=SimpleNamespace(targets=[]))
    t1 = t0 + pd.Timedelta(hours=9)

    async def localise(pipe):
        ev = LeakEvent("m-far", t1, "water_balance", "d1", [LeakCandidate(pipe, 0.8, 300.0, 0.0)], 300.0,
                       localised_at=t1 + pd.Timedelta(hours=6))
        return [json.loads(o.value)["payload"] | {"_topic": o.topic} for o in await svc._leak(ev)]  # noqa: SLF001

    svc._leak_alarm(LeakEvent("m-far", t1, "water_balance", "d1"))  # noqa: SLF001 - provisional: taken as the old one's
    svc.pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await svc.pool.open()
    try:
        out = await localise(far)
    finally:
        await svc.pool.close()
    alerts = [o for o in out if o["_topic"] == "cityops.alerts.v1"]
    assert [(a["status"], a["alert_id"] != "old-alert") for a in alerts] == [("raised", True)]
    assert any(o["_topic"] == "cityops.tasks.v1" for o in out)  # a crew for the new leak
    assert "leak-old" in svc.restored_leaks

    assert svc._expire_restored_alarms(t1) == []  # noqa: SLF001
    assert svc._expire_restored_alarms(t1 + pd.Timedelta(hours=24)) == []  # noqa: SLF001 - leak-old's key: no clear
    assert not svc.restored_leaks and not svc.restored_alarms
    assert svc._leak_alarm(LeakEvent("m-3", t1 + pd.Timedelta(days=2), "water_balance", "d1")) != []  # noqa: SLF001

