"""The air-quality stream service against the real Kafka and PostgreSQL.

The domain generator's 8 reference stations and 60 low-cost sensors (30 simulated hours with a
pollution episode from one named source and three drifting sensors) are published as Observation
envelopes straight to the observation topic, under sensor and source ids unique to this run, plus
one record that is not an Observation. The service's StreamProcessor runs in-process with a fresh
consumer group; a second run with fresh state replays the same records.
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

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]

TAG = secrets.token_hex(3)
# not on the hour, as in the demo (its period ends "now"): station hours and low-cost readings must still
# be matched (an on-the-hour start hid that nothing was calibrated, so no drift could be flagged)
START = pd.Timestamp("2026-11-26T00:39Z")
HOURS, SEED = 30, 7


def _scenario():
    from services.air_quality.domain.simulate import generate
    from shared.city import default_city

    city = default_city()
    sc = generate(city, START, HOURS, SEED)
    ren = {s.sensor_id: f"{s.sensor_id}-{TAG}" for s in sc.sensors}
    specs = {ren[s.sensor_id]: s.model_copy(update={"sensor_id": ren[s.sensor_id]}) for s in sc.sensors}
    cfg = json.loads(json.dumps(sc.config, default=str))
    cfg["reference_stations"] = [ren[x] for x in cfg["reference_stations"]]
    cfg["lowcost_sensors"] = [ren[x] for x in cfg["lowcost_sensors"]]
    for s in cfg["sources"]:
        s["source_id"] = f"{s['source_id']}-{TAG}"
    readings = sc.readings.assign(sensor_id=sc.readings["sensor_id"].map(ren))
    truth = []
    for t in sc.truth:
        t = dict(t)
        if "source_id" in t:
            t["source_id"] = f"{t['source_id']}-{TAG}"
        if "sensor_id" in t:
            t["sensor_id"] = ren[t["sensor_id"]]
        if "stations_exceeding" in t:
            t["stations_exceeding"] = [ren[x] for x in t["stations_exceeding"]]
        truth.append(t)
    config = {"city": {"name": city.name, "centre_lat": city.centre_lat, "centre_lon": city.centre_lon,
                       "districts": [{"district_id": d.district_id, "name_zh": d.name_zh, "name_en": d.name_en,
                                      "bbox": list(d.bbox), "land_use": d.land_use} for d in city.districts]},
              "domains": {"air": cfg}}
    return specs, readings, truth, config


async def _run_service(stack_env, db_url, config, state: Path, group: str, last: dict, timeout_s: float = 100):
    """Run the service's processor until every sensor's last reading is handled and the fits are done."""
    from psycopg_pool import AsyncConnectionPool

    from services.air_quality.handlers import TOPICS, AirService
    from services.air_quality.settings import AirSettings
    from shared.service import Readiness
    from shared.stream import StreamProcessor

    s = AirSettings(db_url=db_url, state_dir=state, air_heavy_every_s=0.5)
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=3, open=False)
    await pool.open()
    svc = AirService(s, pool, config=config)
    proc = StreamProcessor("air-test", s.kafka_bootstrap, TOPICS, group, svc.handle, Readiness("kafka"),
                           tick=svc.heavy, tick_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    t0 = time.monotonic()

    def done() -> bool:
        seen = {**{k: v.last_hour for k, v in svc.stations.items()},
                **{k: (v.readings[-1][0] if v.readings else None) for k, v in svc.lowcost.items()}}
        return (all(seen.get(sid) == t for sid, t in last.items()) and svc.forecaster is not None
                and svc.calibrated and not svc._bg and svc.forecast_issued is not None and not svc.pending_traces  # noqa: SLF001
                and svc.latest is not None and svc.latest.valid_at >= max(last.values()) - pd.Timedelta(minutes=10)
                and svc.drift_check_current() and not svc._calibration_due())  # noqa: SLF001

    try:
        deadline = time.monotonic() + timeout_s
        while not done():
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"service did not finish in {timeout_s:.0f} s: processed {proc.processed}, "
                                     f"fits {svc.fits}, background {list(svc._bg)}, forecast issued "  # noqa: SLF001
                                     f"{svc.forecast_issued}, grid {svc.latest and svc.latest.valid_at}")
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await svc.drain()
    print(f"{group}: {proc.processed} records in {time.monotonic() - t0:.1f} s")
    return svc, pool


@pytest.fixture(scope="module")
def scenario():
    return _scenario()


async def test_episode_traced_to_its_source_with_products_and_replay_without_duplicates(
        stack_env, db_url, scenario, tmp_path, monkeypatch):
    from httpx import ASGITransport, AsyncClient

    from services.air_quality import endpoints
    from services.air_quality.domain.simulate import check_detection
    from shared.service import Readiness, health_app

    specs, readings, truth, config = scenario
    bad = json.dumps({"event_id": f"bad-{TAG}", "type": "observation.air", "payload": {"sensor_id": f"bad-{TAG}",
                      "observed_at": "not a time"}}).encode()
    records = observation_envelopes("air", specs, readings)
    records.insert(len(records) // 2, (records[0][0], f"bad-{TAG}".encode(), bad))
    # a tombstone (no value at all) raised TypeError in the stream loop, which then died on every replay
    records.insert(len(records) // 3, (records[0][0], f"null-{TAG}".encode(), None))
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    since_ms = int(time.time() * 1000) - 1000
    monkeypatch.setenv("CITYOPS_KAFKA_START_AT_MS", str(since_ms))
    await publish(bootstrap, records)
    last = readings.groupby("sensor_id")["time"].max().to_dict()

    svc, pool = await _run_service(stack_env, db_url, config, tmp_path, f"cityops-air-test-{TAG}", last)
    try:
        assert svc.fits["calibration"] >= 1 and svc.fits["forecast"] >= 1
        # readings ten minutes apart are matched to station hours stamped at :39; sensors whose partition came
        # late in the backlog are fitted too
        assert sum(s.calibration is not None for s in svc.lowcost.values()) >= 55

        alerts = await read_since(bootstrap, "cityops.alerts.v1", since_ms, lambda v: TAG.encode() in v)
        rows = [a["payload"] for a in alerts]
        results = [check_detection(t, rows) for t in truth]
        episode = results[0]
        print("episode detection:", episode)
        source = [a for a in rows if a["kind"] == "pollution_source" and a["status"] == "raised"]
        assert source, "no source was traced during the episode"
        named = source[0]["evidence"]["top_source_id"]
        # on a backlog, which hours and sensors are complete when a trace runs depends on partition progress, and
        # the episode's station sees two candidate sources on one wind line: the verdict follows the named source
        # here; test_stream_in_time_order_names_the_source_and_flags_only_drifting_sensors asserts the source
        assert episode["detected"] == (named == truth[0]["source_id"]), episode
        assert episode["delay_min"] is not None and 0 <= episode["delay_min"] <= 300, episode
        # every drifting low-cost sensor gets a calibration alert, no healthy one does
        drift = [r for t, r in zip(truth, results, strict=True) if t["scenario"] == "sensor_drift"]
        print("drift detection:", drift)
        assert all(r["detected"] for r in drift), drift
        calib = [a for a in rows if a["kind"] == "sensor_calibration"]
        drifting = {t["sensor_id"] for t in truth if t["scenario"] == "sensor_drift"}
        false = [a["evidence"]["sensor_id"] for a in calib if a["evidence"]["sensor_id"] not in drifting]
        assert not false, f"healthy sensors flagged as drifting: {false}"

        aqi = [a for a in rows if a["kind"] == "aqi_exceedance"]
        raised = [a for a in aqi if a["status"] == "raised"]
        assert raised and all(a["dedup_key"] == f"air:aqi:{a['evidence']['station_id']}" for a in aqi)
        first = raised[0]
        assert first["title_zh"] and first["message_zh"] and first["title_en"] and first["message_en"]
        assert first["evidence"]["aqi"] >= 150 and first["evidence"]["observed_at"]
        # hysteresis: each station's episode is raised once and cleared once, with the same id
        for key in {a["dedup_key"] for a in aqi}:
            seq = [a["status"] for a in aqi if a["dedup_key"] == key]
            assert seq in (["raised"], ["raised", "cleared"]), (key, seq)
            assert len({a["alert_id"] for a in aqi if a["dedup_key"] == key}) == 1

        with psycopg.connect(db_url) as conn:
            ranked = conn.execute(
                "SELECT at, source_id FROM source_attributions WHERE station_id = %s AND rank = 1 AND at <= %s "
                "ORDER BY at DESC", (source[0]["evidence"]["station_id"],
                                     source[0]["evidence"]["observed_at"])).fetchall()
        # named once two traced hours agree, or, for a shorter exceedance, after it ended
        assert ranked and named in [r[1] for r in ranked], ranked

        tasks = await read_since(bootstrap, "cityops.tasks.v1", since_ms, lambda v: TAG.encode() in v)
        inspect = [t["payload"] for t in tasks if t["payload"]["kind"] == "inspect_source"]
        top = [t for t in inspect if t["evidence"]["source_id"] == named]
        assert top, [t["evidence"]["source_id"] for t in inspect]
        task = top[0]
        assert task["required_skills"] == ["air_inspection"] and task["related_alert_id"] == source[0]["alert_id"]
        assert "现场核查" in task["title_zh"] and "inspection" in task["title_en"]
        assert {"estimated_contribution_ugm3", "confidence", "source_kind"} <= set(task["evidence"])
        assert Path(task["evidence"]["map_png"]).read_bytes()[:4] == b"\x89PNG"
        for t in tasks:
            if t["payload"]["kind"] == "calibrate_sensor":
                ev = t["payload"]["evidence"]
                assert ev["gain_change"] > 0 and t["payload"]["description_zh"]
                # the text states how long the judged readings span (two 2-h blocks at least), as the evidence does
                assert ev["drift_span_h"] >= 4 and f"{ev['drift_span_h']:.0f} hours" in t["payload"]["description_en"]
                assert f"约 {ev['drift_span_h']:.0f} 小时" in t["payload"]["description_zh"]

        from shared.kafka import DEADLETTER_TOPIC

        dead = await read_since(bootstrap, DEADLETTER_TOPIC, since_ms, lambda v: b"air-test" in v)
        mine = [d["payload"] for d in dead if d["payload"]["stage"] == "air-test"]
        assert any("does not match its schema" in d["reason"] for d in mine), mine
        assert any("a record with no value" in d["reason"] for d in mine), mine

        with psycopg.connect(db_url) as conn:
            grids = conn.execute("SELECT pollutant, count(DISTINCT valid_at), count(*), min(std), max(value) "
                                 "FROM air_grid GROUP BY pollutant").fetchall()
            n_att = conn.execute("SELECT count(DISTINCT (station_id, at)) FROM source_attributions").fetchone()[0]
            n_fc = conn.execute("SELECT count(*), count(DISTINCT station_id), max(horizon_h) FROM forecasts "
                                "WHERE domain = 'air'").fetchone()
        by_pol = {g[0]: g for g in grids}
        assert set(by_pol) == {"pm25", "pm10", "no2", "o3"}
        # coalesced: how many windows get a grid depends on speed; the last window always does (done())
        assert by_pol["pm25"][1] >= 1 and by_pol["pm25"][2] == by_pol["pm25"][1] * len(svc.grid.lat)
        assert by_pol["pm25"][3] >= 0
        assert n_att >= 1 and n_fc[2] == 72
        # known gap: an issue made while partitions are hours apart can cover fewer than the 8 stations
        assert n_fc[1] >= 1, n_fc

        app = endpoints.mount(health_app("air-test", Readiness()), svc.s, pool, svc)
        async with AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as http:
            geo = (await http.get("/grid/latest")).json()
            assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(svc.grid.lat)
            assert {"value", "std", "aqi"} <= set(geo["features"][0]["properties"])
            # pm25 is the grid asserted above; under load other pollutants may not have a window yet
            png = await http.get("/grid/latest.png?pollutant=pm25")
            assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
            stations = (await http.get("/aqi/latest")).json()["stations"]
            assert len(stations) == 8 and all(s["daily"]["hours"] >= 20 for s in stations)
            att = (await http.get("/attribution/latest?hours=24")).json()["attributions"]
            assert att and att[0]["rank"] >= 1
            assert (await http.get("/grid/latest?pollutant=so9")).status_code == 422
    finally:
        await pool.close()

    # a replay of the same records (fresh state, new group) reuses the AQI alert and task ids, traces no new hour
    since2 = int(time.time() * 1000)
    svc2, pool2 = await _run_service(stack_env, db_url, config, tmp_path, f"cityops-air-replay-{TAG}", last)
    await pool2.close()
    again = await read_since(bootstrap, "cityops.alerts.v1", since2, lambda v: TAG.encode() in v)
    assert {a["payload"]["alert_id"] for a in again if a["payload"]["kind"] == "aqi_exceedance"} == \
        {a["alert_id"] for a in aqi}
    # known gap: on a backlog replay the traced source (and so the inspect task id) can differ from the first
    # run, because which station-hours are complete when tracing runs depends on partition progress
    with psycopg.connect(db_url) as conn:
        # the same station-hours are traced again (upserted in place), none is added
        assert conn.execute("SELECT count(DISTINCT (station_id, at)) FROM source_attributions").fetchone()[0] == n_att
        dup = conn.execute("SELECT count(*) - count(DISTINCT (pollutant, cell_id, valid_at)) FROM air_grid").fetchone()
        assert dup[0] == 0


@pytest.mark.parametrize(("seed", "start"), [(7, "2026-11-26T20:39Z"), (11, "2026-11-26T21:13Z")])
async def test_stream_in_time_order_names_the_source_and_flags_only_drifting_sensors(db_url, tmp_path, seed, start):
    """The demo's order (the simulator publishes in simulated time): the handler, on the real database, is fed
    the city's 24 h in time order with its heavy work every 30 simulated minutes; the episode must be traced
    to the true source and every drifting sensor, and no healthy one, flagged (seeds 7 and 11 of the demo)."""
    from psycopg_pool import AsyncConnectionPool

    from services.air_quality.domain.simulate import check_detection, generate
    from services.air_quality.handlers import AirService
    from services.air_quality.settings import AirSettings
    from shared.city import default_city

    city = default_city()
    sc = generate(city, pd.Timestamp(start), 24, seed)
    config = {"city": {"name": city.name, "centre_lat": city.centre_lat, "centre_lon": city.centre_lon,
                       "districts": [{"district_id": d.district_id, "name_zh": d.name_zh, "name_en": d.name_en,
                                      "bbox": list(d.bbox), "land_use": d.land_use} for d in city.districts]},
              "domains": {"air": json.loads(json.dumps(sc.config, default=str))}}
    specs = {s.sensor_id: s for s in sc.sensors}
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=3, open=False)
    await pool.open()
    svc = AirService(AirSettings(db_url=db_url, state_dir=tmp_path, air_heavy_every_s=1e9), pool, config=config)
    outs, batch, step = [], [], pd.Timestamp(start) + pd.Timedelta(minutes=30)
    try:
        for _, _, value in observation_envelopes("air", specs, sc.readings):
            env = json.loads(value)
            if pd.Timestamp(env["payload"]["observed_at"]) >= step:
                outs += await svc.handle(batch)
                await svc.drain()
                outs += await svc.heavy()
                batch, step = [], step + pd.Timedelta(minutes=30)
            batch.append(env)
        outs += await svc.handle(batch)
        await svc.drain()
        outs += await svc.heavy()
    finally:
        await pool.close()
    alerts = [json.loads(o.value)["payload"] for o in outs if o.topic == "cityops.alerts.v1"]
    results = {(t["scenario"], t.get("sensor_id")): check_detection(t, alerts) for t in sc.truth}
    assert all(r["detected"] for r in results.values()), results
    drifting = {t["sensor_id"] for t in sc.truth if t["scenario"] == "sensor_drift"}
    flagged = {a["evidence"]["sensor_id"] for a in alerts if a["kind"] == "sensor_calibration"}
    assert flagged == drifting
    source = [a for a in alerts if a["kind"] == "pollution_source" and a["status"] == "raised"]
    assert [a["evidence"]["top_source_id"] for a in source][:1] == [sc.truth[0]["source_id"]]


async def test_hours_that_keep_disagreeing_still_send_an_inspector_after_six(scenario, tmp_path):
    """Two consecutive traced hours that agree name the source; when the plume keeps swinging between two
    sources the sixth traced hour names the one with the largest contribution summed over the hours, and the
    alert says so (the inspector is not held back until the exceedance ends)."""
    from schemas.products import SourceAttribution
    from services.air_quality.handlers import AirService
    from services.air_quality.settings import AirSettings

    specs, readings, truth, config = scenario
    svc = AirService(AirSettings(db_url="postgresql://unused/none", state_dir=tmp_path), None, config=config)
    from services.air_quality.handlers import _Station

    sid = config["domains"]["air"]["reference_stations"][0]
    st = svc.stations[sid] = _Station(sid, specs[sid].lat, specs[sid].lon, specs[sid].district)
    a, b = list(svc.sources["source_id"][:2])
    t0 = pd.Timestamp("2026-11-26T10:39Z")
    svc._trace_hour(st, t0, {"pm25": 200.0})  # noqa: SLF001 - opens the trace as an exceedance hour does
    ep = svc.traces[st.station_id]
    outs = []
    hours = [((a, 30.0), (b, 20.0))] + [((b, 40.0), (a, 35.0)), ((a, 50.0), (b, 10.0))] * 2 + [((b, 40.0), (a, 35.0))]
    for h, (top, other) in enumerate(hours):
        t = t0 + pd.Timedelta(hours=h)
        svc.latest_attribution[st.station_id] = SourceAttribution(
            station_id=st.station_id, at=t.to_pydatetime(), pollutant="pm25", observed=150.0,
            contributions=[{"source_id": s, "kind": "industrial", "rank": r, "contribution": c, "confidence": 0.5}
                           for r, (s, c) in enumerate((top, other), 1)])
        got = await svc._settle(st, t, ep)  # noqa: SLF001
        assert (got == []) == (h < 5), (h, got)
        outs += got
    alert = json.loads(outs[0].value)["payload"]
    assert alert["kind"] == "pollution_source" and alert["evidence"]["top_source_id"] == a  # 235 vs 160 µg/m³
    assert "summed over 6 traced hour" in alert["message_en"] and "累计贡献" in alert["message_zh"]
    task = json.loads(outs[1].value)["payload"]
    assert task["kind"] == "inspect_source" and task["evidence"]["source_id"] == a
    # the inspector is told the park's other stacks, nearest first: every source within 1 km of a is listed
    from shared.city import to_local_xy_m

    srcs = svc.sources.set_index("source_id")
    x, y = to_local_xy_m(srcs["lat"].to_numpy(float), srcs["lon"].to_numpy(float),
                         float(srcs.loc[a, "lat"]), float(srcs.loc[a, "lon"]))
    d = dict(zip(srcs.index, np.hypot(x, y), strict=True))
    near = task["evidence"]["nearby_sources"]
    assert a.startswith("park") and near and {s for s, m in d.items() if 0 < m < 1000} <= set(near)
    assert [d[s] for s in near] == sorted(d[s] for s in near) and a not in near
    assert near[0] in task["description_zh"] and near[0] in task["description_en"]
    assert await svc._settle(st, t0 + pd.Timedelta(hours=6), ep) == []  # noqa: SLF001 - named once


def _unit_service(scenario, tmp_path):
    """The service without Kafka or a database, one reference station registered: for decisions of one hour."""
    from services.air_quality.handlers import AirService, _Station
    from services.air_quality.settings import AirSettings

    specs, _, _, config = scenario
    svc = AirService(AirSettings(db_url="postgresql://unused/none", state_dir=tmp_path), None, config=config)
    sid = config["domains"]["air"]["reference_stations"][0]
    svc.stations[sid] = _Station(sid, specs[sid].lat, specs[sid].lon, specs[sid].district)
    return svc, svc.stations[sid]


def _hour(st, t: pd.Timestamp, **values):
    from schemas.observations import Observation, QualifiedValue

    units = {"co": "ug/m3", "temp": "degC"}
    return Observation(sensor_id=st.station_id, domain="air", kind="reference_station", gateway_id="gw-test",
                       district=st.district, lat=st.lat, lon=st.lon, observed_at=t.to_pydatetime(),
                       values={q: QualifiedValue(value=v, unit=units.get(q, "ug/m3"), qc=1) for q, v in values.items()})


async def _feed(svc, st, t, **values) -> list[dict]:
    o = _hour(st, t, **values)
    outs = await svc._station_hour(o, t, {q: v.value for q, v in o.values.items()})  # noqa: SLF001
    return [json.loads(x.value)["payload"] for x in outs]


async def test_an_hour_without_pm25_neither_clears_the_alert_nor_counts_as_clean(scenario, tmp_path):
    """PM2.5 failing QC for an hour (PM10 still reported, AQI 125) used to clear a PM2.5 alert and raise a new one
    the hour after, and count as an hour under the tracing threshold; now the alert holds for up to three such
    hours, after which what the station still measures decides."""
    from services.air_quality.handlers import AQI_HOLD_MAX_H

    svc, st = _unit_service(scenario, tmp_path)
    t0 = pd.Timestamp("2026-11-26T10:00Z")
    raised = await _feed(svc, st, t0, pm25=160.0, pm10=200.0)
    assert [a["status"] for a in raised] == ["raised"] and raised[0]["evidence"]["primary"] == ["pm25"]
    assert await _feed(svc, st, t0 + pd.Timedelta(hours=1), pm10=200.0) == []
    assert svc.traces[st.station_id].below_h == 0  # no PM2.5: not an hour under the threshold
    assert await _feed(svc, st, t0 + pd.Timedelta(hours=2), pm25=165.0, pm10=200.0) == []  # the same alert goes on
    outs = []
    for h in range(AQI_HOLD_MAX_H + 1):
        outs += await _feed(svc, st, t0 + pd.Timedelta(hours=3 + h), pm10=200.0)
    assert [a["status"] for a in outs] == ["cleared"] and outs[0]["alert_id"] == raised[0]["alert_id"]


async def test_so2_and_co_count_in_the_station_aqi(scenario, tmp_path):
    """HJ 633: the AQI is the largest sub-index of all six pollutants; SO2 700 µg/m³ (1-h IAQI 167) and CO
    40,000 µg/m³ = 40 mg/m³ (1-h IAQI 160) each raise the alert with clean particulates."""
    svc, st = _unit_service(scenario, tmp_path)
    t0 = pd.Timestamp("2026-11-26T10:00Z")
    a = await _feed(svc, st, t0, pm25=30.0, so2=700.0)
    assert [x["evidence"]["primary"] for x in a] == [["so2"]] and a[0]["evidence"]["aqi"] == 167
    assert "SO2" in a[0]["message_en"] and "SO2" in a[0]["message_zh"]
    svc2, st2 = _unit_service(scenario, tmp_path)
    b = await _feed(svc2, st2, t0, pm25=30.0, co=40000.0)
    assert [x["evidence"]["primary"] for x in b] == [["co"]] and b[0]["evidence"]["aqi"] == 160
    assert b[0]["evidence"]["concentrations_ugm3"]["co"] == 40000.0


async def test_a_day_with_too_few_ozone_hours_for_an_8h_mean_has_no_daily_aqi_and_no_crash(scenario, tmp_path):
    svc, st = _unit_service(scenario, tmp_path)
    t0 = pd.Timestamp("2026-11-26T00:00Z")
    for h in range(21):
        assert await _feed(svc, st, t0 + pd.Timedelta(hours=h), temp=5.0) == []
    assert await _feed(svc, st, t0 + pd.Timedelta(hours=21), o3=80.0) == []
    assert st.aqi_24h is None and st.aqi_1h["aqi"] == 25


async def test_a_short_exceedance_names_the_largest_summed_source_even_if_never_first(scenario, tmp_path):
    """Hour 1 ranks A 30 / B 25, hour 2 C 30 / B 25: B contributed most over the exceedance (50), so B is named,
    from the hour it contributed most, listed first there (it used to end with no source named)."""
    from schemas.products import SourceAttribution
    from services.air_quality.handlers import _Episode

    svc, st = _unit_service(scenario, tmp_path)
    a, b, c = list(svc.sources["source_id"][:3])
    t0 = pd.Timestamp("2026-11-26T10:00Z")
    ep = _Episode(t0, "trace-test", 0)
    for h, ((s1, c1), (s2, c2)) in enumerate([((a, 30.0), (b, 25.0)), ((c, 30.0), (b, 25.0))]):
        ep.atts.append(SourceAttribution(
            station_id=st.station_id, at=(t0 + pd.Timedelta(hours=h)).to_pydatetime(), pollutant="pm25",
            observed=120.0, contributions=[{"source_id": s, "kind": "industrial", "rank": r, "contribution": v,
                                            "confidence": 0.5} for r, (s, v) in enumerate(((s1, c1), (s2, c2)), 1)]))
    outs = [json.loads(x.value)["payload"] for x in await svc._settle_short(st, t0 + pd.Timedelta(hours=3), ep)]  # noqa: SLF001
    assert [o["kind"] for o in outs] == ["pollution_source", "inspect_source"]
    assert outs[0]["evidence"]["top_source_id"] == b and outs[1]["evidence"]["source_id"] == b
    assert [x["source_id"] for x in outs[0]["evidence"]["attribution"]][:1] == [b]


async def test_a_restart_takes_up_the_open_aqi_alerts_and_clears_them(scenario, db_url, tmp_path):
    """The hysteresis lives in memory and the stream resumes after its committed offsets: an alert open at a
    crash was never cleared, and one still over the limit was raised again under a new id. At start-up the
    service takes up its open alerts from the alerts table (as the notification service stored them)."""
    from psycopg_pool import AsyncConnectionPool

    from services.air_quality.handlers import AirService, _Station
    from services.air_quality.settings import AirSettings

    specs, _, _, config = scenario
    a_id, b_id = config["domains"]["air"]["reference_stations"][:2]
    t0 = pd.Timestamp("2026-11-26T10:00Z")
    with psycopg.connect(db_url) as c:
        for sid, alert_id, kind in ((a_id, "air-alert-a", "aqi_exceedance"), (b_id, "air-alert-b", "aqi_exceedance"),
                                    (b_id, "air-alert-old", "aqi_exceedance")):
            resolved = "now()" if alert_id == "air-alert-old" else "NULL"
            c.execute(
                "INSERT INTO alerts (alert_id, domain, kind, severity, status, title_zh, title_en, message_zh, message_en,"
                f" dedup_key, raised_at, evidence, resolved_at) VALUES (%s, 'air', %s, 'major', 'raised', 't', 't', 'm',"
                f" 'm', %s, %s, %s, {resolved})",
                (alert_id, kind, f"air:aqi:{sid}", (t0 - pd.Timedelta(hours=3)).to_pydatetime(),
                 json.dumps({"aqi": 180, "peak_aqi": 190, "primary": ["pm25"],
                             "episode_start": (t0 - pd.Timedelta(hours=3)).isoformat()})))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        svc = AirService(AirSettings(db_url=db_url, state_dir=tmp_path), pool, config=config)
        assert await svc.restore_open_alerts() == 2
        for sid in (a_id, b_id):
            svc.stations[sid] = _Station(sid, specs[sid].lat, specs[sid].lon, specs[sid].district)
        cleared = await _feed(svc, svc.stations[a_id], t0, pm25=40.0)
        assert [(x["status"], x["alert_id"]) for x in cleared] == [("cleared", "air-alert-a")]
        assert cleared[0]["evidence"]["peak_aqi"] == 190
        assert await _feed(svc, svc.stations[b_id], t0, pm25=160.0) == []  # still over: the same alert goes on
    finally:
        await pool.close()
