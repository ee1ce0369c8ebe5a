"""The emergency scenario generator, and the domain finding what it injected."""

from __future__ import annotations

import pandas as pd
import pytest

from services.emergency.domain.fault import alerts_from, fit_detector
from services.emergency.domain.incidents import (
    EquipmentFault,
    GasRelease,
    Wind,
    advance,
    gas_evacuation_incident,
    pumping_station_incident,
)
from services.emergency.domain.report import render_report
from services.emergency.domain.safety import Severity, evaluate, readings_from_long
from services.emergency.domain.simulate import generate
from services.emergency.domain.zones import Zone
from shared.city import default_city

CITY = default_city()
START = pd.Timestamp("2026-05-01T00:00:00Z")
HOURS = 24.0


@pytest.fixture(scope="module")
def scenario():
    return generate(CITY, START, HOURS, seed=1)


def test_deterministic_for_a_seed_and_different_across_seeds(scenario) -> None:
    again = generate(CITY, START, HOURS, seed=1)
    pd.testing.assert_frame_equal(scenario.readings, again.readings)
    assert scenario.truth == again.truth and scenario.config == again.config
    other = generate(CITY, START, HOURS, seed=2)
    assert not scenario.readings["value"].equals(other.readings["value"])


def test_registry_fits_and_personal_data_is_marked(scenario) -> None:
    scenario.check()
    x0, y0, x1, y1 = CITY.bbox
    for s in scenario.sensors:
        assert x0 <= s.lon <= x1 and y0 <= s.lat <= y1 and s.district is not None
        assert s.personal == (s.kind == "wearable")
        assert s.domain == ("equipment" if s.kind == "machine" else "safety")
    kinds = pd.Series([s.kind for s in scenario.sensors]).value_counts().to_dict()
    assert kinds == {"wearable": 15, "machine": 3, "gas_detector": 1}
    machines = [s for s in scenario.sensors if s.kind == "machine"]
    assert all(5 <= len(s.quantities) <= 8 for s in machines)
    assert len({s.gateway_id for s in scenario.sensors}) <= 8
    # every value inside its registered valid range
    specs = {s.sensor_id: s.quantities for s in scenario.sensors}
    r = scenario.readings
    lo = [specs[s][q].valid_min for s, q in zip(r["sensor_id"], r["quantity"], strict=True)]
    hi = [specs[s][q].valid_max for s, q in zip(r["sensor_id"], r["quantity"], strict=True)]
    assert ((r["value"] >= lo) & (r["value"] <= hi)).all()


def test_scenarios_sit_in_the_last_60_percent(scenario) -> None:
    kinds = {t["scenario"] for t in scenario.truth}
    assert kinds == {"equipment_fault", "worker_fall", "gas_release", "restricted_entry"}
    for t in scenario.truth:
        assert pd.Timestamp(t["start"]) >= START + pd.Timedelta(hours=0.4 * HOURS), t
    assert pd.Timestamp(scenario.config["train_until"]) <= START + pd.Timedelta(hours=0.4 * HOURS)


def test_48_hours_stay_under_the_row_budget() -> None:
    sc = generate(CITY, START, 48.0, seed=3)
    assert len(sc.readings) < 152_000
    assert sc.readings["time"].diff().dropna().ge(pd.Timedelta(0)).all()


def test_domain_finds_what_was_injected(scenario) -> None:
    cfg, r = scenario.config, scenario.readings
    truth = {t["scenario"]: t for t in scenario.truth}
    t_train = pd.Timestamp(cfg["train_until"])

    # equipment: the faulty pump is flagged within an hour, the healthy ones stay mostly quiet
    fault_start = pd.Timestamp(truth["equipment_fault"]["start"])
    for m in cfg["machines"]:
        wide = r[r["sensor_id"] == m["sensor_id"]].pivot(index="time", columns="quantity", values="value")
        wide = wide[m["channels"]]
        scores = fit_detector(wide[wide.index <= t_train], model="hybrid").score(wide[wide.index > t_train])
        idx = wide.index[wide.index > t_train]
        if m["machine_id"] == truth["equipment_fault"]["machine_id"]:
            hits = idx[scores.is_anomaly & (idx >= fault_start)]
            assert len(hits) and hits[0] - fault_start < pd.Timedelta(hours=1)
            assert scores.is_anomaly[idx < fault_start].mean() < 0.05
            last = alerts_from(scores)[-1]
            assert set(last.channels) & set(truth["equipment_fault"]["channels"])
            inc = pumping_station_incident(EquipmentFault(hits[0], m["machine_id"], m["station_id"],
                                                          float(scores.score.max()), tuple(last.channels)),
                                           cfg["pumping_stations"], CITY)
            assert set(inc.districts) == set(truth["equipment_fault"]["supplies"])
        else:
            assert scores.is_anomaly.mean() < 0.1

    # workers and site security: exactly the injected events, nothing else
    zones = [Zone.from_config(z) for z in cfg["zones"]]
    people = r[r["sensor_id"].str.startswith(("wb-", "gasdet-"))]
    alerts = evaluate(readings_from_long(people), zones)
    fall = truth["worker_fall"]
    fall_alerts = [a for a in alerts if a.worker_id == fall["sensor_id"] and a.kind in ("fall", "man_down")]
    assert [a.kind for a in fall_alerts] == ["fall", "man_down"]
    assert fall_alerts[0].time == pd.Timestamp(fall["start"]) and fall_alerts[0].severity == Severity.CRITICAL
    assert fall["zone_id"] in fall_alerts[0].zone_ids
    entry = [a for a in alerts if a.kind == "restricted_entry"]
    assert [(a.worker_id, a.zone_ids, a.time) for a in entry] == [
        (truth["restricted_entry"]["sensor_id"], (truth["restricted_entry"]["zone_id"],),
         pd.Timestamp(truth["restricted_entry"]["start"]))]
    gas = truth["gas_release"]
    gas_alerts = [a for a in alerts if a.kind == "gas_h2s"]
    assert gas_alerts and all(pd.Timestamp(gas["start"]) <= a.time < pd.Timestamp(gas["end"]) for a in gas_alerts)
    assert min(a.time for a in gas_alerts) == pd.Timestamp(gas["start"])
    assert {a.kind for a in alerts} <= {"fall", "man_down", "restricted_entry", "gas_h2s"}

    # gas + wind -> evacuation incident with its area, through to the report
    src = cfg["gas_sources"][0]
    inc, area = gas_evacuation_incident(
        GasRelease(min(a.time for a in gas_alerts), src["source_id"], src["lat"], src["lon"], src["gas"],
                   src["release_rate_g_s_assumed"], src["threshold_mg_m3"]),
        Wind(pd.Timestamp(gas["start"]), gas["wind_from_deg"], gas["wind_speed_ms"]), CITY)
    assert area.downwind_m > 200 and inc.area is not None and inc.districts
    inc = advance(inc, "dispatched", inc.opened_at + pd.Timedelta(minutes=2), "dispatcher")
    html = render_report(inc, CITY, "2026-05-02T00:00:00Z", zones=zones)
    assert "疏散" in html and "evacuate" in html and "base64," in html


@pytest.mark.parametrize("start_utc_hour", range(24))
def test_a_day_starting_at_any_hour_has_its_intrusion_at_night_in_the_injected_part(start_utc_hour: int) -> None:
    """The demo runs the 24 h up to now: whatever the hour, the intrusion is injected (a CI run at 21:00 local
    once had none, the night hours falling in the normal first part)."""
    from services.emergency.domain.simulate import TIMEZONE, _intrusion_time

    start = pd.Timestamp("2026-11-27T00:00Z") + pd.Timedelta(hours=start_utc_hour)
    times = pd.date_range(start, start + pd.Timedelta(hours=24), freq="1min")
    t = _intrusion_time(times)
    assert t is not None and t >= start + pd.Timedelta(hours=0.45 * 24)
    assert not 7 <= t.tz_convert(TIMEZONE).hour < 19 and not 7 <= (t + pd.Timedelta(minutes=10)).tz_convert(TIMEZONE).hour < 19


def test_the_intrusion_of_an_evening_run_is_found() -> None:
    """The CI run that had no intrusion: 24 h ending 21:00 local. Now an evening-shift worker walks in."""
    start = pd.Timestamp("2026-11-27T13:00Z")
    sc = generate(CITY, start, 24.0, seed=1)
    truth = [t for t in sc.truth if t["scenario"] == "restricted_entry"]
    assert len(truth) == 1
    zones = [Zone.from_config(z) for z in sc.config["zones"]]
    people = sc.readings[sc.readings["sensor_id"].str.startswith("wb-")]
    entry = [a for a in evaluate(readings_from_long(people), zones) if a.kind == "restricted_entry"]
    assert [(a.worker_id, a.zone_ids, a.time) for a in entry] == [
        (truth[0]["sensor_id"], (truth[0]["zone_id"],), pd.Timestamp(truth[0]["start"]))]
