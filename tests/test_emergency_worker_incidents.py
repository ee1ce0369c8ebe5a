"""Worker incidents in the emergency service, offline (no Kafka, no database): what the public incident shows
and what happens when a wearable has no position fix."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from schemas.observations import Observation, QualifiedValue


def _service(tmp_path):
    from services.emergency.handlers import EmergencyService
    from services.emergency.settings import EmergencySettings

    s = EmergencySettings(db_url="postgresql://unused/none", state_dir=tmp_path,
                          emergency_pseudonym_key="worker-test-key-0123456789abcdef")
    return EmergencyService(s, None, config={})


def _reading(t: str, **values) -> Observation:
    return Observation(sensor_id="wb-7", domain="safety", kind="wearable", gateway_id="gw-test", district=None,
                       lat=0.0, lon=0.0, observed_at=pd.Timestamp(t).to_pydatetime(),
                       values={q: QualifiedValue(value=v, unit="1", qc=1) for q, v in values.items()})


def _payloads(outs):
    return [(o.topic, json.loads(o.value)["payload"]) for o in outs]


def test_an_sos_without_a_position_fix_still_sends_a_crew(tmp_path):
    """An SOS from a wearable with no position (in a pump pit) built GeoPoint(nan) and the ValidationError stopped
    the service, again on every replay. The crew's task now points at the district or city centre and says so."""
    svc = _service(tmp_path)
    got = _payloads(svc._worker(_reading("2026-11-29T12:00Z", heart_rate_bpm=80.0, sos=1.0)))  # noqa: SLF001
    tasks = [p for topic, p in got if topic.endswith("tasks.v1")]
    assert len(tasks) == 1 and tasks[0]["evidence"]["position_known"] is False
    assert (tasks[0]["location"]["lat"], tasks[0]["location"]["lon"]) == (svc.city.centre_lat, svc.city.centre_lon)
    assert "find the worker by radio" in tasks[0]["description_en"] and "对讲确认人员位置" in tasks[0]["description_zh"]


def test_the_public_incident_never_shows_the_workers_position(tmp_path):
    """Outside any hazard zone the incident's public location, its stored coordinates and the report's map used to
    be the worker's own position (reports are served without a login). Now the district's centre; the exact
    position goes only to the crew's task."""
    svc = _service(tmp_path)
    lat, lon = svc.city.centre_lat + 0.0123, svc.city.centre_lon - 0.0234
    got = _payloads(svc._worker(_reading("2026-11-29T12:00Z", heart_rate_bpm=80.0, sos=1.0, lat=lat, lon=lon)))  # noqa: SLF001
    task = next(p for topic, p in got if topic.endswith("tasks.v1"))
    assert (task["location"]["lat"], task["location"]["lon"]) == (lat, lon)
    (tr,) = svc.incidents.values()
    did = svc.city.district_of(lat, lon)
    assert tr.public_location == svc.city.district(did).centre and tr.points == []
    assert (tr.incident.lat, tr.incident.lon) == tr.public_location
    msg = svc.message(tr, with_report=False)
    assert (msg.location.lat, msg.location.lon) == tr.public_location


def test_a_late_sos_is_alarmed_and_a_redelivery_is_not(tmp_path):
    """A wearable out of coverage sends its stored readings late: an SOS stamped before the newest reading handled
    was dropped without a trace. It is now alarmed (alert, incident, crew task); the same reading redelivered is not,
    and a late reading without an event changes nothing."""
    svc = _service(tmp_path)
    newer = _reading("2026-11-29T12:00:10Z", heart_rate_bpm=80.0)
    svc._worker(newer)  # noqa: SLF001
    svc.last_seen[newer.sensor_id] = pd.Timestamp(newer.observed_at)
    svc._remember(newer.sensor_id, pd.Timestamp(newer.observed_at))  # noqa: SLF001
    late_sos = _reading("2026-11-29T12:00:05Z", heart_rate_bpm=80.0, sos=1.0)
    late_plain = _reading("2026-11-29T12:00:07Z", heart_rate_bpm=81.0)
    events = svc._late_events([late_sos, late_plain])  # noqa: SLF001
    assert events == [late_sos] and svc.late_dropped == 1
    got = _payloads(svc._worker_late_event(late_sos))  # noqa: SLF001
    kinds = [(topic.split(".")[1], p.get("kind")) for topic, p in got]
    assert ("alerts", "sos") in kinds and ("tasks", "respond_incident") in kinds
    assert svc._late_events([late_sos]) == []  # noqa: SLF001 - redelivered: alarmed once
    assert svc._new([newer]) == []  # noqa: SLF001


def test_an_older_wind_forecast_arriving_late_keeps_the_newer_wind(tmp_path):
    from schemas.products import StationForecast

    svc = _service(tmp_path)

    def cast(issued, var, v):
        return StationForecast(station_id="wx-1", variable=var, issued_at=pd.Timestamp(issued).to_pydatetime(),
                               horizons_h=[1], values=[v], model="test",
                               unit="deg" if var == "wind_dir" else "m/s")

    svc._wind_from(cast("2026-11-29T12:00Z", "wind_dir", 90.0))  # noqa: SLF001
    svc._wind_from(cast("2026-11-29T12:00Z", "wind_speed", 4.0))  # noqa: SLF001
    svc._wind_from(cast("2026-11-29T11:00Z", "wind_dir", 270.0))  # noqa: SLF001
    assert svc.wind[1:] == (90.0, 4.0)


def test_a_second_gas_release_within_the_hour_opens_its_own_incident(tmp_path):
    """Incident ids are per source and clock hour: a second release in the hour of one already resolved got the
    closed incident back, its dispatch step was refused, and the new evacuation area was lost. It now opens a new
    incident, dispatched, with its own id in the alert and task."""
    svc = _service(tmp_path)

    def h2s(t: str, ppm: float) -> Observation:
        return Observation(sensor_id="gd-1", domain="safety", kind="gas_detector", gateway_id="gw-test", district=None,
                           lat=svc.city.centre_lat, lon=svc.city.centre_lon, observed_at=pd.Timestamp(t).to_pydatetime(),
                           values={"h2s_ppm": QualifiedValue(value=ppm, unit="ppm", qc=1)})

    ids = []
    minute = 0
    for _ in range(2):
        outs = []
        for ppm in [20.0, 20.0] + [2.0] * 5:
            outs += _payloads(svc._gas(h2s(f"2026-11-29T12:{minute:02d}Z", ppm)))  # noqa: SLF001
            minute += 1
        raised = [p for topic, p in outs if topic.endswith("alerts.v1") and p["status"] == "raised"]
        assert len(raised) == 1
        ids.append(raised[0]["evidence"]["incident_id"])
    assert ids[0] != ids[1]
    assert [svc.incidents[i].incident.state.value for i in ids] == ["resolved", "resolved"]
    assert [e.state.value for e in svc.incidents[ids[1]].incident.timeline][:2] == ["detected", "dispatched"]


def test_a_flood_incident_is_resolved_once_the_alerts_behind_it_clear(tmp_path):
    """Nothing ever resolved a flood incident: it stayed dispatched for ever (and a longer storm opened another).
    It is resolved, and its alert cleared, when the rain and drain alerts behind it have all cleared."""
    from datetime import timedelta

    from schemas.alerts import Alert

    svc = _service(tmp_path)
    did = next(d.district_id for d in svc.city.districts if d.low_lying)
    t = pd.Timestamp("2026-11-29T08:00Z").to_pydatetime()
    common = {"title_zh": "测试", "title_en": "test", "message_zh": "测试", "message_en": "test", "district": did}
    rain = Alert(alert_id="rain-1", domain="weather", kind="rainstorm_signal", severity="major", level="orange",
                 dedup_key=f"weather:rainstorm:{did}", raised_at=t, evidence={"observed_at": t.isoformat()}, **common)
    drain = Alert(alert_id="drain-1", domain="water", kind="drain_rising", severity="major", level="yellow",
                  dedup_key=f"water:drain:{did}", raised_at=t + timedelta(minutes=20),
                  evidence={"observed_at": t.isoformat(), "sensor_id": "dl-1", "level_m": 1.4, "rise_m_per_h": 0.5},
                  **common)
    opened = _payloads(svc._cross_domain(rain) + svc._cross_domain(drain))  # noqa: SLF001
    (tr,) = svc.incidents.values()
    assert any(p.get("kind") == "flood_incident" for _, p in opened) and tr.incident.state.value == "dispatched"

    def cleared(a, minutes):
        return a.model_copy(update={"alert_id": a.alert_id + "-c", "status": "cleared", "severity": "info",
                                    "raised_at": t + timedelta(minutes=minutes)})

    assert svc._cross_domain(cleared(rain, 90)) == []  # noqa: SLF001 - the drain is still high
    assert tr.incident.state.value == "dispatched"
    over = _payloads(svc._cross_domain(cleared(drain, 120)))  # noqa: SLF001
    assert [(p["kind"], p["status"]) for _, p in over] == [("flood_incident", "cleared")]
    first = next(p for _, p in opened if p.get("kind") == "flood_incident")
    assert over[0][1]["alert_id"] == first["alert_id"] and tr.incident.state.value == "resolved"


def test_a_station_incident_stays_open_while_any_of_its_pumps_is_faulty(tmp_path):
    """Incidents are per station and hour: when a second pump of the station failed in the incident's hour it joined
    nothing (its alert was not related to the incident), and the first pump to recover resolved the incident while
    the other was still faulty. The incident now carries both faults and is resolved by the last recovery."""
    from services.emergency.handlers import _Machine

    svc = _service(tmp_path)
    district = svc.city.districts[0].district_id
    svc.stations = {"PS-9": {"lat": svc.city.centre_lat, "lon": svc.city.centre_lon, "supplies": [district],
                             "name_zh": "九号泵站", "name_en": "Station 9"}}
    a, b = (svc.machines.setdefault(f"vib-{k}", _Machine(f"pump-{k}", "PS-9", f"vib-{k}", svc.city.centre_lat,
                                                          svc.city.centre_lon, district)) for k in "ab")
    t0 = pd.Timestamp("2026-11-29T10:05Z")
    raised = _payloads(svc._fault_rules(a, t0, 3.0, True, ["vibration"], True, {"vibration": 9.0}))  # noqa: SLF001
    raised += _payloads(svc._fault_rules(b, t0 + pd.Timedelta(minutes=15), 2.5, True, ["temp"], True, {"temp": 80.0}))  # noqa: SLF001
    alerts = [p["alert_id"] for topic, p in raised if topic.endswith("alerts.v1")]
    assert len(alerts) == 2 and a.incident_id == b.incident_id
    tr = svc.incidents[a.incident_id]
    assert tr.related == alerts and any("pump-b" in e["what"] for e in tr.incident.evidence)

    def recover(m, start):
        outs = []
        for k in range(svc.s.emergency_clear_after):
            outs += svc._fault_rules(m, start + pd.Timedelta(minutes=k), 0.2, False, [], False, {})  # noqa: SLF001
        return [p["status"] for topic, p in _payloads(outs) if topic.endswith("alerts.v1")]

    assert recover(a, t0 + pd.Timedelta(minutes=30)) == ["cleared"]
    assert tr.incident.state.value == "dispatched"  # pump b is still faulty
    assert recover(b, t0 + pd.Timedelta(minutes=50)) == ["cleared"]
    assert tr.incident.state.value == "resolved"


def _personal_batch(*obs: Observation) -> list[dict]:
    from shared.kafka import envelope

    return [envelope("observation.personal", "test", o, occurred_at=o.observed_at) for o in obs]


@pytest.mark.stack
async def test_a_stored_sos_sent_after_the_current_reading_in_one_poll_is_alarmed(tmp_path, db_url):
    """A wearable back in coverage sends its current reading, then the SOS it stored: in one poll the newer reading
    was handled first and the SOS skipped as already seen - no alert, no crew, no log line. The batch is now taken
    in time order, so the SOS is alarmed."""
    from psycopg_pool import AsyncConnectionPool

    from services.emergency.handlers import EmergencyService
    from services.emergency.settings import EmergencySettings

    s = EmergencySettings(db_url=db_url, state_dir=tmp_path, emergency_pseudonym_key="worker-test-key-0123456789abcdef")
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        svc = EmergencyService(s, pool, config={})
        await svc.handle_personal(_personal_batch(_reading("2026-11-29T12:00:00Z", heart_rate_bpm=80.0)))
        outs = await svc.handle_personal(_personal_batch(_reading("2026-11-29T12:05:00Z", heart_rate_bpm=82.0),
                                                         _reading("2026-11-29T12:02:00Z", heart_rate_bpm=95.0, sos=1.0)))
        kinds = [(topic.split(".")[1], p.get("kind")) for topic, p in _payloads(outs)]
        assert ("alerts", "sos") in kinds and ("tasks", "respond_incident") in kinds
    finally:
        await pool.close()


def test_a_second_sos_press_is_a_new_alarm_and_a_held_press_is_one(tmp_path):
    """SOS alerts were keyed by worker and kind alone, and the notification service folds an alert under an open
    key into it: a second SOS ten minutes after an acknowledged one paged nobody. Each press now has its own key;
    the readings of one held press share it (the notification service counts them as repeats)."""
    svc = _service(tmp_path)
    keys = []
    for t, sos in (("12:00:00", 1.0), ("12:00:10", 1.0), ("12:00:20", 0.0), ("12:10:00", 1.0)):
        outs = _payloads(svc._worker(_reading(f"2026-11-29T{t}Z", heart_rate_bpm=80.0, sos=sos)))  # noqa: SLF001
        keys += [p["dedup_key"] for topic, p in outs if topic.endswith("alerts.v1") and p["kind"] == "sos"]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2], keys
