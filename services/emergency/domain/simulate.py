"""The emergency domain's part of the simulated city.

- Three water pumping stations, one pump each, five channels a minute; pump P-2 develops
  a bearing fault (vibration and bearing temperature creep up, flow sags).
- Fifteen workers in three eight-hour shifts, five per shift at the three stations,
  their wearables (personal data) sending position, four gases and heart rate a minute,
  and fall / SOS flags when they happen. One worker falls inside the pump-pit hazard
  zone and lies still; one worker of a night or evening shift walks into a chemical store
  outside its permitted hours, whatever hour of the day the period ends.
- An H2S release from the wet well of station PS-3, seen by the fixed gas detector at
  the source and by the wearables of the workers nearby.

Everything injected happens in the last 60 % of the period; the first 40 % is normal
operation (the pumps' detectors train on it). Deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from shapely.geometry import Polygon

from schemas.registry import QuantitySpec, SensorSpec
from services.emergency.domain.machines import PUMP_CHANNELS, pump_series
from services.emergency.domain.plume import centreline_mg_m3, sigmas, stability_class
from services.emergency.domain.privacy import DEFAULT_RETENTION_DAYS
from services.emergency.domain.safety import GasLimits
from services.emergency.domain.zones import Zone
from shared.city import EARTH_RADIUS_M, City
from shared.simulator.scenario import DomainScenario

STEP = pd.Timedelta(minutes=1)
TIMEZONE = "Asia/Shanghai"
SIM_CHANNELS = ["flow_m3h", "discharge_pressure_bar", "motor_current_a", "vibration_rms_mms", "bearing_temp_c"]
H2S_MG_M3_PER_PPM = 34.08 / 24.45
# H2S IDLH is 100 ppm; evacuate where 30 ppm (≈ 42 mg/m³) could be reached
H2S_EVACUATE_MG_M3 = 30 * H2S_MG_M3_PER_PPM

WEARABLE_QUANTITIES = {
    "lat": QuantitySpec(unit="deg", valid_min=-90, valid_max=90),
    "lon": QuantitySpec(unit="deg", valid_min=-180, valid_max=180),
    "h2s_ppm": QuantitySpec(unit="ppm", valid_min=0, valid_max=500),
    "co_ppm": QuantitySpec(unit="ppm", valid_min=0, valid_max=2000),
    "o2_pct": QuantitySpec(unit="%", valid_min=0, valid_max=30),
    "lel_pct": QuantitySpec(unit="%LEL", valid_min=0, valid_max=100),
    "heart_rate_bpm": QuantitySpec(unit="bpm", valid_min=20, valid_max=250),
    "fall": QuantitySpec(unit="1", valid_min=0, valid_max=1),
    "sos": QuantitySpec(unit="1", valid_min=0, valid_max=1),
}

# station: (district, offset of the site from the district centre in metres east/north, supplied districts)
_STATIONS = {
    "PS-1": ("d03", (-600.0, 400.0), ["d01", "d02", "d03"], "高新泵站", "Hi-Tech pumping station"),
    "PS-2": ("d05", (500.0, -300.0), ["d04", "d05", "d06"], "中心泵站", "Central pumping station"),
    "PS-3": ("d08", (-400.0, -500.0), ["d07", "d08", "d09"], "河滨泵站", "Riverside pumping station"),
}


def _offset(lat: float, lon: float, east_m: Any, north_m: Any) -> tuple[Any, Any]:
    """Move (lat, lon) by metres east/north; works on numpy arrays of offsets."""
    dlat = np.degrees(np.asarray(north_m, dtype=float) / EARTH_RADIUS_M)
    dlon = np.degrees(np.asarray(east_m, dtype=float) / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


def _square(lat: float, lon: float, east_m: float, north_m: float, half_m: float) -> Polygon:
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    pts = [_offset(lat, lon, east_m + sx * half_m, north_m + sy * half_m) for sx, sy in corners]
    return Polygon([(float(lo), float(la)) for la, lo in pts])


def _sites(city: City) -> dict[str, dict[str, Any]]:
    out = {}
    for sid, (did, (e, n), supplies, zh, en) in _STATIONS.items():
        clat, clon = city.district(did).centre
        lat, lon = (float(v) for v in _offset(clat, clon, e, n))
        out[sid] = {"station_id": sid, "district": did, "lat": lat, "lon": lon, "supplies": supplies,
                    "name_zh": zh, "name_en": en}
    return out


def _zones(sites: dict[str, dict[str, Any]]) -> list[Zone]:
    zones = []
    for sid, s in sites.items():
        k = sid[-1]
        # the pump pit / wet well: 30 m square 40 m north of the site centre
        zones.append(Zone(f"hz-pit-{k}", "hazard", _square(s["lat"], s["lon"], 0, 40, 15),
                          f"{s['name_zh']}泵坑", f"{s['name_en']} pump pit", timezone=TIMEZONE))
        # the chemical store, away from where the crew works
        zones.append(Zone(f"rz-chem-{k}", "restricted", _square(s["lat"], s["lon"], -150, -100, 10),
                          f"{s['name_zh']}加药间", f"{s['name_en']} chemical store",
                          (("07:00", "19:00"),), TIMEZONE))
    return zones


def _shift_of(t: pd.Timestamp) -> int:
    return pd.Timestamp(t).tz_convert(TIMEZONE).hour // 8


def _intrusion_time(times: pd.DatetimeIndex) -> pd.Timestamp | None:
    """When the night-shift worker walks into the chemical store: in the injected part of the period (after
    45 % of it), outside the store's permitted 07:00-19:00 local, with the next ten minutes on the same shift.
    Preferably 01:00-03:00 local; otherwise the first such minute, so a 24 h demo ending at any time of day
    injects it (it used to wait for 01:00-03:00 and a run ending at 21:00 local had none)."""
    n = len(times)

    def night(t: pd.Timestamp) -> bool:
        return not 7 <= pd.Timestamp(t).tz_convert(TIMEZONE).hour < 19

    ok = [t for t in times[int(0.45 * n):]
          if night(t) and night(t + pd.Timedelta(minutes=10)) and _shift_of(t) == _shift_of(t + pd.Timedelta(minutes=10))
          and t + pd.Timedelta(minutes=10) <= times[-1]]
    return next((t for t in ok if pd.Timestamp(t).tz_convert(TIMEZONE).hour in (1, 2)), ok[0] if ok else None)


def generate(city: City, start: pd.Timestamp, hours: float, seed: int) -> DomainScenario:
    """Pumps, wearables and a gas detector with one bearing fault, one fall, one intrusion, one release."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    n = max(int(round(hours * 60)), 10)
    times = pd.date_range(start, periods=n, freq=STEP)
    t_at = lambda frac: times[min(int(frac * n), n - 1)]  # noqa: E731 - a moment as a share of the period
    sites = _sites(city)
    zones = _zones(sites)
    zone_by_id = {z.zone_id: z for z in zones}
    sensors: list[SensorSpec] = []
    frames: list[pd.DataFrame] = []
    truth: list[dict[str, Any]] = []

    def long(sensor_id: str, ts: pd.DatetimeIndex | list, cols: dict[str, np.ndarray]) -> None:
        for q, v in cols.items():
            frames.append(pd.DataFrame({"time": ts, "sensor_id": sensor_id, "quantity": q,
                                        "value": np.asarray(v, dtype=float)}))

    # -- pumps --------------------------------------------------------------------------
    fault_station, fault_start = "PS-2", t_at(0.55)
    machines = []
    for i, (sid, s) in enumerate(sites.items(), start=1):
        mid = f"P-{i}"
        sensor_id = f"pump-{sid.lower()}"
        fs = int(0.55 * n) if sid == fault_station else None
        data = pump_series(n, rng, rated_flow_m3h=[900.0, 1200.0, 700.0][i - 1], fault_start=fs,
                           fault_ramp=240, daily_amplitude=0.1,
                           wander=0.006, ambient_drift=0.01, cycle_min=360.0)
        sensors.append(SensorSpec(
            sensor_id=sensor_id, domain="equipment", kind="machine", gateway_id=f"gw-equip-{i}",
            lat=s["lat"], lon=s["lon"], district=city.district_of(s["lat"], s["lon"]),
            quantities={c: QuantitySpec(unit=PUMP_CHANNELS[c][0], valid_min=PUMP_CHANNELS[c][1],
                                        valid_max=PUMP_CHANNELS[c][2]) for c in SIM_CHANNELS},
            meta={"machine_id": mid, "station_id": sid}))
        long(sensor_id, times, {c: data[c].to_numpy() for c in SIM_CHANNELS})
        machines.append({"machine_id": mid, "sensor_id": sensor_id, "station_id": sid, "channels": SIM_CHANNELS})
    truth.append({"scenario": "equipment_fault", "start": fault_start.isoformat(), "end": None,
                  "machine_id": "P-2", "station_id": fault_station, "sensor_id": "pump-ps-2",
                  "channels": ["vibration_rms_mms", "bearing_temp_c"], "supplies": sites[fault_station]["supplies"],
                  "note": "bearing wear ramping to full severity over 4 h"})

    # -- gas release at PS-3 -----------------------------------------------------------
    pit3 = zone_by_id["hz-pit-3"].polygon.centroid
    gas_start, gas_end = t_at(0.75), t_at(0.75) + pd.Timedelta(minutes=40)
    rate_g_s, wind_from, wind_speed = 400.0, 200.0, 3.0
    stab = stability_class(wind_speed)
    theta = math.radians(wind_from + 180.0)

    def h2s_ppm_at(lat: np.ndarray, lon: np.ndarray, ts: pd.DatetimeIndex) -> np.ndarray:
        """Plume H2S at points (ppm), zero outside the release."""
        east = np.radians(np.asarray(lon) - pit3.x) * EARTH_RADIUS_M * math.cos(math.radians(pit3.y))
        north = np.radians(np.asarray(lat) - pit3.y) * EARTH_RADIUS_M
        x = east * math.sin(theta) + north * math.cos(theta)
        y = east * math.cos(theta) - north * math.sin(theta)
        xs = np.maximum(x, 1.0)
        sy, _ = sigmas(xs, stab)
        c = centreline_mg_m3(xs, rate_g_s, wind_speed, stab) * np.exp(-0.5 * (y / sy) ** 2)
        c = np.where(x > 0, c, 0.0) + 0.15 * rate_g_s * np.exp(-0.5 * (np.hypot(east, north) / 20.0) ** 2)
        on = (ts >= gas_start) & (ts < gas_end)
        return np.where(on, c / H2S_MG_M3_PER_PPM, 0.0)

    det_id = "gasdet-ps-3"
    sensors.append(SensorSpec(
        sensor_id=det_id, domain="safety", kind="gas_detector", gateway_id="gw-safety-fixed",
        lat=pit3.y, lon=pit3.x, district=city.district_of(pit3.y, pit3.x),
        quantities={"h2s_ppm": WEARABLE_QUANTITIES["h2s_ppm"], "lel_pct": WEARABLE_QUANTITIES["lel_pct"]},
        meta={"station_id": "PS-3", "source_id": "PS-3-wetwell"}))
    det_h2s = np.clip(rng.gamma(1.0, 0.3, n) + h2s_ppm_at(np.full(n, pit3.y), np.full(n, pit3.x), times), 0, 500)
    long(det_id, times, {"h2s_ppm": det_h2s, "lel_pct": np.clip(rng.gamma(1.0, 0.5, n), 0, 100)})
    truth.append({"scenario": "gas_release", "start": gas_start.isoformat(), "end": gas_end.isoformat(),
                  "source_id": "PS-3-wetwell", "station_id": "PS-3", "lat": pit3.y, "lon": pit3.x, "gas": "H2S",
                  "rate_g_s": rate_g_s, "wind_from_deg": wind_from, "wind_speed_ms": wind_speed,
                  "threshold_mg_m3": H2S_EVACUATE_MG_M3, "expect": "evacuation area downwind (to the NNE)"})

    # -- workers ------------------------------------------------------------------------
    station_ids = list(sites)
    fall_time = t_at(0.65)
    fall_shift = _shift_of(fall_time)
    intrusion_time = _intrusion_time(times)
    intruder = None if intrusion_time is None else 5 * _shift_of(intrusion_time)  # site 0's worker on that shift
    roster: dict[str, dict[str, Any]] = {}
    for w in range(15):
        shift, site_ix = divmod(w, 5)
        site_ix = site_ix % 3
        sensor_id = f"wb-{w + 1:02d}"
        worker_id = f"W-{1000 + 37 * (w + 1)}"
        site = sites[station_ids[site_ix]]
        roster[sensor_id] = {"worker_id": worker_id, "shift": ["00-08", "08-16", "16-24"][shift],
                             "station_id": site["station_id"]}
        sensors.append(SensorSpec(
            sensor_id=sensor_id, domain="safety", kind="wearable", gateway_id=f"gw-safety-{site_ix + 1}",
            lat=site["lat"], lon=site["lon"], district=city.district_of(site["lat"], site["lon"]),
            quantities=dict(WEARABLE_QUANTITIES), personal=True, meta={"station_id": site["station_id"]}))
        on = np.array([_shift_of(t) == shift for t in times])
        ts = times[on]
        if len(ts) == 0:
            continue
        m = len(ts)
        # walking about the site: 5-15 m a minute inside ~80 m of the centre, so a still
        # wearable really means a still worker
        step = rng.uniform(5, 15, m)
        ang = np.cumsum(rng.normal(0, 0.8, m))
        e = np.zeros(m)
        nn = np.zeros(m)
        for k in range(1, m):
            e[k] = 0.9 * e[k - 1] + step[k] * math.cos(ang[k])
            nn[k] = 0.9 * nn[k - 1] + step[k] * math.sin(ang[k])
            if math.hypot(e[k] - e[k - 1], nn[k] - nn[k - 1]) < 4:
                e[k] += 4.0 * math.cos(ang[k])
                nn[k] += 4.0 * math.sin(ang[k])
        hr = rng.uniform(68, 92) + rng.normal(0, 4, m)
        fall = np.zeros(m)
        sos = np.zeros(m)
        is_faller = shift == fall_shift and site_ix == 1 and w % 5 == 1
        if is_faller:
            k0 = int(np.searchsorted(ts, fall_time))
            if k0 < m:
                # walk into the pit zone, fall, lie still for 25 minutes until the crew arrives
                k_in = max(k0 - 3, 0)
                e[k_in:k0] = np.linspace(0, 5, k0 - k_in) if k0 > k_in else e[k_in:k0]
                nn[k_in:k0] = np.linspace(35, 40, k0 - k_in) if k0 > k_in else nn[k_in:k0]
                k1 = min(k0 + 25, m)
                e[k0:k1], nn[k0:k1] = 3.0, 42.0
                fall[k0] = 1
                hr[k0:k1] += np.linspace(35, 10, k1 - k0)
                truth.append({"scenario": "worker_fall", "start": ts[k0].isoformat(), "end": ts[k1 - 1].isoformat(),
                              "sensor_id": sensor_id, "zone_id": f"hz-pit-{site_ix + 1}",
                              "expect": "fall alert then man-down, critical (inside hazard zone)"})
        is_intruder = w == intruder
        if is_intruder:
            k0 = int(np.searchsorted(ts, intrusion_time))
            if k0 < m:
                k1 = min(k0 + 8, m)
                e[k0:k1] = -150 + rng.uniform(-3, 3, k1 - k0)
                nn[k0:k1] = -100 + rng.uniform(-3, 3, k1 - k0) + np.arange(k1 - k0) * 0.5
                zid = f"rz-chem-{site_ix + 1}"
                truth.append({"scenario": "restricted_entry", "start": ts[k0].isoformat(),
                              "end": ts[k1 - 1].isoformat(), "sensor_id": sensor_id, "zone_id": zid,
                              "expect": "restricted zone entered outside 07:00-19:00 local"})
        lat, lon = _offset(site["lat"], site["lon"], e, nn)
        lat, lon = np.asarray(lat), np.asarray(lon)
        h2s = rng.gamma(1.0, 0.4, m) + (h2s_ppm_at(lat, lon, ts) if site["station_id"] == "PS-3" else 0.0)
        cols = {
            "lat": lat, "lon": lon,
            "h2s_ppm": np.clip(h2s, 0, 500),
            "co_ppm": np.clip(rng.gamma(2.0, 1.5, m), 0, 2000),
            "o2_pct": np.clip(20.9 + rng.normal(0, 0.08, m), 0, 30),
            "lel_pct": np.clip(rng.gamma(1.0, 0.6, m), 0, 100),
            "heart_rate_bpm": np.clip(hr, 20, 250),
        }
        long(sensor_id, ts, cols)
        for flag, arr in (("fall", fall), ("sos", sos)):
            idx = np.flatnonzero(arr)
            if idx.size:
                long(sensor_id, ts[idx], {flag: arr[idx]})

    readings = pd.concat(frames, ignore_index=True).sort_values(["time", "sensor_id", "quantity"], kind="stable")
    readings = readings.reset_index(drop=True)
    config = {
        "timezone": TIMEZONE,
        "train_until": t_at(0.4).isoformat(),
        "zones": [z.to_config() for z in zones],
        "machines": machines,
        "pumping_stations": {sid: {k: v for k, v in s.items() if k != "station_id"} for sid, s in sites.items()},
        "gas_sources": [{"source_id": "PS-3-wetwell", "station_id": "PS-3", "lat": pit3.y, "lon": pit3.x,
                         "gas": "H2S", "threshold_mg_m3": H2S_EVACUATE_MG_M3, "detector": det_id,
                         "release_rate_g_s_assumed": rate_g_s,
                         # the site's prevailing wind, for the plume when no nowcast has arrived
                         "prevailing_wind_from_deg": wind_from, "prevailing_wind_speed_ms": wind_speed}],
        # personal: the roster maps wearables to workers; only the restricted side may read it
        "wearables": roster,
        "gas_limits": asdict(GasLimits()),
        "retention_days": DEFAULT_RETENTION_DAYS,
    }
    return DomainScenario("emergency", sensors, readings, truth, config)


def _alert_time(a: dict[str, Any]) -> pd.Timestamp | None:
    ev = a.get("evidence") or {}
    t = ev.get("observed_at") or a.get("raised_at")
    if t is None:
        return None
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def check_detection(truth: dict[str, Any], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Did the services detect one injected scenario? Judged on the alert rows the demo collected.

    equipment_fault: a fault alert on the right machine, after the fault began, naming one of its channels;
    gas_release: a release alert for the right source while the gas was out, with a downwind evacuation area;
    worker_fall: a fall or man-down alert in the right hazard zone while the worker was down (workers are
    pseudonymous on the shared topic, so the zone and the time identify the event);
    restricted_entry: an entry alert for the right zone during the intrusion.
    """
    start = pd.Timestamp(truth["start"])
    end = pd.Timestamp(truth["end"]) if truth.get("end") else None
    sc = truth.get("scenario")
    em = [a for a in alerts if a.get("domain") == "emergency"]

    def window(a: dict[str, Any], slack_min: float = 10.0) -> bool:
        t = _alert_time(a)
        return t is not None and t >= start and (end is None or t <= end + pd.Timedelta(minutes=slack_min))

    hits: list[dict[str, Any]] = []
    note = ""
    if sc == "equipment_fault":
        same = [a for a in em if a.get("kind") == "equipment_fault"
                and (a.get("evidence") or {}).get("machine_id") == truth["machine_id"] and window(a)]
        hits = [a for a in same if set((a.get("evidence") or {}).get("channels") or []) & set(truth["channels"])]
        note = (f"fault alert on {truth['machine_id']} naming {', '.join(truth['channels'])}" if hits else
                f"{len(same)} alerts on {truth['machine_id']}, none naming the faulty channels" if same else
                f"no fault alert on {truth['machine_id']} after {start.isoformat()}")
    elif sc == "gas_release":
        same = [a for a in em if a.get("kind") == "gas_release"
                and (a.get("evidence") or {}).get("source_id") == truth["source_id"] and window(a)]
        hits = [a for a in same if float((a.get("evidence") or {}).get("downwind_m") or 0) > 0]
        note = (f"release alert with a {hits[0]['evidence']['downwind_m']} m downwind evacuation area" if hits else
                "release alert without an evacuation area" if same else f"no release alert for {truth['source_id']}")
    elif sc in ("worker_fall", "restricted_entry"):
        kinds = {"fall", "man_down"} if sc == "worker_fall" else {"restricted_entry"}
        hits = [a for a in em if a.get("kind") in kinds and window(a, 5.0)
                and truth["zone_id"] in ((a.get("evidence") or {}).get("zone_ids") or [])]
        if sc == "worker_fall" and hits and not any(a.get("severity") == "critical" for a in hits):
            note = "detected, but never raised to critical inside the hazard zone"
        else:
            note = f"{', '.join(sorted({a['kind'] for a in hits}))} alert in {truth['zone_id']}" if hits else \
                f"no {'/'.join(sorted(kinds))} alert in {truth['zone_id']} during the event"
    else:
        return {"detected": None, "at": None, "delay_min": None, "note": f"unknown scenario {sc!r}"}
    if not hits:
        return {"detected": False, "at": None, "delay_min": None, "note": note}
    first = min(_alert_time(a) for a in hits)
    return {"detected": True, "at": first.isoformat(), "delay_min": round((first - start).total_seconds() / 60, 1),
            "note": note}
