"""Worker safety, site security, evacuation area, cross-domain incidents, reports, privacy."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from shapely.geometry import Point, box

from services.emergency.domain.incidents import (
    DrainLevel,
    EquipmentFault,
    GasRelease,
    IncidentState,
    InvalidTransition,
    RainNowcast,
    Wind,
    advance,
    flood_incidents,
    gas_evacuation_incident,
    pumping_station_incident,
    worker_incident,
)
from services.emergency.domain.plume import evacuation_polygon
from services.emergency.domain.privacy import episode_pseudonym, expired, pseudonymise, shared_alert
from services.emergency.domain.report import render_report
from services.emergency.domain.safety import SafetyMonitor, Severity, WearableReading, evaluate
from services.emergency.domain.zones import Zone
from shared.city import default_city, haversine_m

CITY = default_city()
T0 = pd.Timestamp("2026-05-01T02:00:00Z")  # 10:00 in Asia/Shanghai
LAT, LON = 30.25, 120.15
PIT = Zone("hz-pit", "hazard", box(LON - 0.001, LAT - 0.001, LON + 0.001, LAT + 0.001), "泵坑", "Pump pit")
STORE = Zone("rz-store", "restricted", box(LON + 0.01, LAT, LON + 0.012, LAT + 0.002), "化学品库", "Chemical store",
             (("07:00", "19:00"),))


def _walk(n: int, lat: float, lon: float, fall_at: int | None = None, **gas: float) -> list[WearableReading]:
    """A worker moving ~11 m a minute until a fall, then lying still."""
    out = []
    for i in range(n):
        k = i if fall_at is None else min(i, fall_at)
        out.append(WearableReading(T0 + pd.Timedelta(minutes=i), "W-007", lat + 0.0001 * k, lon,
                                   h2s_ppm=gas.get("h2s", 0.0), co_ppm=gas.get("co", 2.0), o2_pct=gas.get("o2", 20.9),
                                   lel_pct=gas.get("lel", 0.0), heart_rate_bpm=gas.get("hr", 85.0),
                                   fall=(i == fall_at)))
    return out


@pytest.mark.parametrize(("inside", "fall_sev", "down_sev"), [(True, Severity.CRITICAL, Severity.CRITICAL),
                                                              (False, Severity.ALARM, Severity.CRITICAL)])
def test_fall_then_lying_still_alerts_fall_and_man_down(inside: bool, fall_sev: Severity, down_sev: Severity) -> None:
    lat = LAT - 0.0008 if inside else LAT + 0.01
    alerts = evaluate(_walk(8, lat, LON, fall_at=4), [PIT])
    kinds = [(a.kind, a.severity, a.time) for a in alerts]
    assert kinds[0] == ("fall", fall_sev, T0 + pd.Timedelta(minutes=4))
    assert kinds[1][:2] == ("man_down", down_sev)
    assert kinds[1][2] <= T0 + pd.Timedelta(minutes=5)
    assert len(alerts) == 2, "a standing condition must not re-alert every minute"
    assert ("hz-pit" in alerts[0].zone_ids) is inside
    assert "跌倒" in alerts[0].message_zh and "fall" in alerts[0].message_en


def test_standing_still_without_a_fall_is_man_down_after_the_immobility_time() -> None:
    still = [WearableReading(T0 + pd.Timedelta(seconds=30 * i), "W-1", LAT + 0.01, LON) for i in range(6)]
    alerts = evaluate(still)
    assert [(a.kind, a.severity) for a in alerts] == [("man_down", Severity.ALARM)]
    assert alerts[0].time == T0 + pd.Timedelta(seconds=90)


@pytest.mark.parametrize(("gas", "kind", "sev"), [
    ({"h2s": 12.0}, "gas_h2s", Severity.WARNING), ({"h2s": 20.0}, "gas_h2s", Severity.ALARM),
    ({"h2s": 80.0}, "gas_h2s", Severity.CRITICAL), ({"co": 250.0}, "gas_co", Severity.ALARM),
    ({"o2": 17.0}, "o2_low", Severity.ALARM), ({"o2": 15.0}, "o2_low", Severity.CRITICAL),
    ({"lel": 25.0}, "gas_lel", Severity.ALARM), ({"hr": 190.0}, "heart_rate", Severity.ALARM),
    ({"hr": 30.0}, "heart_rate", Severity.ALARM),
])
def test_gas_and_heart_rate_grades(gas: dict[str, float], kind: str, sev: Severity) -> None:
    alerts = evaluate(_walk(3, LAT + 0.01, LON, **gas))
    assert [(a.kind, a.severity) for a in alerts] == [(kind, sev)]


def test_alarm_worsening_re_alerts_and_clearing_resets() -> None:
    levels = [0, 12, 12, 30, 30, 0, 12]
    rs = [WearableReading(T0 + pd.Timedelta(minutes=i), "W-2", LAT + 0.01 + 0.0001 * i, LON, h2s_ppm=v)
          for i, v in enumerate(levels)]
    alerts = evaluate(rs)
    assert [(a.time.minute, a.severity) for a in alerts] == [(1, Severity.WARNING), (3, Severity.ALARM),
                                                            (6, Severity.WARNING)]


def test_sos_is_critical_every_press() -> None:
    mon = SafetyMonitor()
    a1 = mon.update(WearableReading(T0, "W-3", LAT, LON + 0.02, sos=True))
    a2 = mon.update(WearableReading(T0 + pd.Timedelta(seconds=5), "W-3", LAT, LON + 0.02, sos=True))
    assert [a.kind for a in a1 + a2] == ["sos", "sos"] and a1[0].severity == Severity.CRITICAL


@pytest.mark.parametrize(("utc_hour", "alerts"), [(2, 0), (12, 1), (23, 0), (10, 0), (11, 1), (22, 1)])
def test_restricted_zone_entry_outside_permitted_hours(utc_hour: int, alerts: int) -> None:
    # permitted 07:00-19:00 Asia/Shanghai = 23:00-11:00 UTC
    t = pd.Timestamp("2026-05-01T00:00:00Z") + pd.Timedelta(hours=utc_hour)
    outside = WearableReading(t, "W-4", LAT + 0.001, LON + 0.011 - 0.01)
    inside = WearableReading(t + pd.Timedelta(minutes=1), "W-4", LAT + 0.001, LON + 0.011)
    again = WearableReading(t + pd.Timedelta(minutes=2), "W-4", LAT + 0.0011, LON + 0.011)
    got = [a for a in evaluate([outside, inside, again], [STORE]) if a.kind == "restricted_entry"]
    assert len(got) == alerts
    if got:
        assert got[0].zone_ids == ("rz-store",) and got[0].severity == Severity.ALARM


def test_zone_window_over_midnight() -> None:
    z = Zone("rz-n", "restricted", box(0, 0, 1, 1), permitted_hours=(("22:00", "06:00"),), timezone="UTC")
    assert z.permitted_at(pd.Timestamp("2026-05-01T23:30Z")) and z.permitted_at(pd.Timestamp("2026-05-01T05:59Z"))
    assert not z.permitted_at(pd.Timestamp("2026-05-01T12:00Z"))
    assert Zone.from_config(z.to_config()) == z


@pytest.mark.parametrize("wind_from", [0.0, 90.0, 225.0, 270.0])
def test_evacuation_polygon_lies_downwind(wind_from: float) -> None:
    area = evacuation_polygon(LAT, LON, 1000.0, wind_from, 3.0, 140.0)
    assert area.polygon.is_valid and area.polygon.contains(Point(LON, LAT))
    assert area.downwind_m > 300
    towards = math.radians(wind_from + 180)
    # a point well downwind is inside, the mirror point upwind is not
    d = min(area.downwind_m * 0.6, area.downwind_m - 50)
    dn, de = d * math.cos(towards), d * math.sin(towards)
    lat_d, lon_d = LAT + math.degrees(dn / 6_371_000), LON + math.degrees(de / (6_371_000 * math.cos(math.radians(LAT))))
    lat_u, lon_u = 2 * LAT - lat_d, 2 * LON - lon_d
    assert area.polygon.contains(Point(lon_d, lat_d))
    assert not area.polygon.contains(Point(lon_u, lat_u))
    assert haversine_m(LAT, LON, lat_d, lon_d) == pytest.approx(d, rel=0.01)


def test_more_gas_or_less_wind_reaches_further() -> None:
    base = evacuation_polygon(LAT, LON, 500.0, 270, 4.0, 140.0, stability="D").downwind_m
    assert evacuation_polygon(LAT, LON, 2000.0, 270, 4.0, 140.0, stability="D").downwind_m > base
    assert evacuation_polygon(LAT, LON, 500.0, 270, 1.0, 140.0, stability="D").downwind_m > base
    tiny = evacuation_polygon(LAT, LON, 0.01, 270, 4.0, 140.0)
    assert tiny.downwind_m == 0 and tiny.polygon.area > 0  # still the circle around the source


def test_flood_needs_storm_rising_drain_and_low_lying_district() -> None:
    storm = [RainNowcast(T0, "d05", 30.0), RainNowcast(T0, "d01", 30.0), RainNowcast(T0, "d02", 5.0)]
    drains = [DrainLevel(T0 + pd.Timedelta(minutes=20), "dr-5", "d05", 1.2, 0.5),
              DrainLevel(T0 + pd.Timedelta(minutes=20), "dr-1", "d01", 1.2, 0.5),  # d01 is not low-lying
              DrainLevel(T0 + pd.Timedelta(minutes=20), "dr-2", "d02", 1.2, 0.5),  # d02: no storm
              DrainLevel(T0 + pd.Timedelta(hours=5), "dr-8", "d08", 1.2, 0.5)]
    incs = flood_incidents(storm + [RainNowcast(T0, "d08", 40.0)], drains, CITY)
    assert [i.districts for i in incs] == [("d05",)]  # d08: drain rose 5 h later, not the same event
    assert incs[0].kind == "flood" and len(incs[0].evidence) == 2
    assert flood_incidents(storm, drains, CITY) == flood_incidents(storm, drains, CITY)  # same id both times


def test_gas_release_incident_covers_downwind_district() -> None:
    d = CITY.district("d05")
    lat, lon = d.centre[0], d.bbox[2] - 0.002  # near d05's east edge; wind from the west pushes into d06
    inc, area = gas_evacuation_incident(GasRelease(T0, "plant-3", lat, lon, "H2S", 3000.0, 140.0),
                                        Wind(T0, 270.0, 2.0), CITY)
    assert "d06" in inc.districts and "d05" in inc.districts and "d04" not in inc.districts
    assert inc.area is not None and inc.severity == Severity.CRITICAL


def test_pumping_station_fault_names_supplied_districts() -> None:
    stations = {"ps-1": {"lat": LAT, "lon": LON, "supplies": ["d02", "d05"], "name_zh": "东湖泵站", "name_en": "East Lake"}}
    inc = pumping_station_incident(EquipmentFault(T0, "P-1", "ps-1", 4.2, ("vibration_rms_mms",)), stations, CITY)
    assert inc.districts == ("d02", "d05") and "中心区" in inc.title_zh
    with pytest.raises(KeyError):
        pumping_station_incident(EquipmentFault(T0, "P-9", "ps-9", 4.2, ()), stations, CITY)


def test_lifecycle_follows_the_order_and_report_has_timeline_evidence_and_map() -> None:
    alert = evaluate(_walk(8, LAT - 0.0008, LON, fall_at=2), [PIT])[0]
    inc = worker_incident(alert, CITY)
    assert inc is not None and inc.state == IncidentState.DETECTED
    with pytest.raises(InvalidTransition):
        advance(inc, "on_site", T0, "crew")
    t = alert.time
    for i, s in enumerate(["dispatched", "acknowledged", "on_site", "resolved", "reported"], start=1):
        inc = advance(inc, s, t + pd.Timedelta(minutes=i), "调度员 dispatcher")
    assert [e.state.value for e in inc.timeline] == ["detected", "dispatched", "acknowledged", "on_site",
                                                     "resolved", "reported"]
    with pytest.raises(InvalidTransition):
        advance(inc, "resolved", t + pd.Timedelta(minutes=9), "x")
    html = render_report(inc, CITY, "2026-05-01T03:00:00Z", zones=[PIT])
    assert html.count("<tr><td>") >= 7 and "已上报" in html and "data:image/png;base64,iVBOR" in html
    assert "人员跌倒" in html


def test_time_cannot_run_backwards_in_the_lifecycle() -> None:
    inc = worker_incident(evaluate([WearableReading(T0, "W-9", LAT, LON, sos=True)])[0], CITY)
    assert inc is not None
    with pytest.raises(InvalidTransition):
        advance(inc, "dispatched", T0 - pd.Timedelta(minutes=1), "x")


def test_pseudonyms_are_stable_keyed_and_shared_alerts_carry_no_personal_data() -> None:
    k1, k2 = b"k" * 32, b"j" * 32
    assert pseudonymise("W-007", k1) == pseudonymise("W-007", k1)
    assert pseudonymise("W-007", k1) != pseudonymise("W-007", k2) != pseudonymise("W-008", k2)
    with pytest.raises(ValueError):
        pseudonymise("W-007", b"short")
    alert = evaluate(_walk(3, LAT + 0.01, LON, hr=190.0))[0]
    shared = shared_alert(alert, k1, "d05", alert.time)
    text = repr(shared)
    assert "W-007" not in text and "190" not in text and f"{alert.lat:.4f}" not in text
    # on a shared topic the worker is named per episode, never by the stable pseudonym
    assert pseudonymise("W-007", k1) not in text and shared["kind"] == "heart_rate"
    assert shared["worker"] == episode_pseudonym(pseudonymise("W-007", k1), alert.time, k1)
    later = shared_alert(alert, k1, "d05", alert.time + pd.Timedelta(days=30))
    assert later["worker"] != shared["worker"] and later["worker"].startswith("w-")


def test_retention_default_seven_days() -> None:
    now = pd.Timestamp("2026-05-10T00:00Z")
    times = pd.Series(pd.to_datetime(["2026-05-02T23:59Z", "2026-05-03T00:01Z"], utc=True))
    assert expired(times, now).tolist() == [True, False]
    assert expired(times, now, days=1).tolist() == [True, True]
