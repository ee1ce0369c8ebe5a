"""Synthetic weather for tests and the city simulator.

`synthetic_observations` draws plausible station weather (diurnal temperature, synoptic
swings shared across the city, dew point, pressure with its semi-diurnal tide, wind, rain)
at any time step. `generate` registers ~20 weather stations in the city and injects, in the
last 60 % of the period, a rainstorm peaking at `start + 0.8 * hours` (the water domain uses
the same timing), a stuck temperature sensor and a temperature spike, with their truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Storm:
    """A convective rainstorm: Gaussian in time around `peak`, in space around (lat, lon)."""

    peak: pd.Timestamp
    lat: float
    lon: float
    peak_rate_mm_h: float = 48.0
    sigma_h: float = 1.5
    radius_km: float = 12.0


def _ar1(rng: np.random.Generator, n: int, k: int, phi: float, sd: float) -> np.ndarray:
    """n steps of k AR(1) series with stationary standard deviation sd."""
    out = np.empty((n, k))
    out[0] = rng.normal(0, sd, k)
    e = rng.normal(0, sd * np.sqrt(1 - phi**2), (n, k))
    for t in range(1, n):
        out[t] = phi * out[t - 1] + e[t]
    return out


def synthetic_observations(lat: np.ndarray, lon: np.ndarray, station_ids: list[str], times: pd.DatetimeIndex,
                           seed: int, storm: Storm | None = None, mean_temp_c: float = 18.0) -> pd.DataFrame:
    """Contract-format observations (time, station_id, lat, lon, temp, dewp, pres, rain, wind_dir, wind_speed).

    `rain` is mm accumulated over each time step.
    """
    rng = np.random.default_rng(seed)
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    n, k = len(times), len(station_ids)
    step_h = (times[1] - times[0]).total_seconds() / 3600 if n > 1 else 1.0
    hours = np.asarray((times - times[0]).total_seconds() / 3600, float)[:, None]
    solar = ((times.hour + times.minute / 60).to_numpy(float)[:, None] + lon[None, :] / 15) % 24
    phi = lambda per_h: per_h ** step_h  # noqa: E731 - AR coefficient per step from one per hour
    synoptic = _ar1(rng, n, 1, phi(0.985), 3.0)
    local = _ar1(rng, n, k, phi(0.9), 0.4)
    amp = rng.uniform(3.5, 5.5, k)
    offset = rng.normal(0, 0.8, k)
    diurnal = np.cos(2 * np.pi * (solar - 15) / 24)
    temp = mean_temp_c + offset + synoptic + local + amp * diurnal
    depression = np.maximum(0.5, 6 + 2.5 * diurnal + _ar1(rng, n, 1, phi(0.97), 2.0) + _ar1(rng, n, k, phi(0.8), 0.4))
    dewp = temp - depression
    elev = rng.uniform(0, 60, k)
    pres = (1012 - elev / 8.3 + _ar1(rng, n, 1, phi(0.995), 5.0) + 0.8 * np.cos(2 * np.pi * (solar - 10) / 12)
            + _ar1(rng, n, k, phi(0.5), 0.1))
    ws = np.abs(2.8 + 1.0 * diurnal + _ar1(rng, n, 1, phi(0.95), 1.2) + _ar1(rng, n, k, phi(0.7), 0.5))
    wd = (200 + np.degrees(np.cumsum(rng.normal(0, 0.05 * np.sqrt(step_h), (n, 1)), axis=0))
          + rng.normal(0, 15, (n, k))) % 360
    # light showers: a shared wet spell indicator with local intensity
    wet = (_ar1(rng, n, 1, phi(0.97), 1.0) > 1.6) & (rng.uniform(size=(n, k)) < 0.6)
    rain = np.where(wet, rng.gamma(0.8, 1.2, (n, k)) * step_h, 0.0)
    if storm is not None:
        from services.weather.domain.grid import distance_matrix_km

        d = distance_matrix_km(np.append(lat, storm.lat), np.append(lon, storm.lon))[-1, :-1]
        dt = np.asarray((times - storm.peak).total_seconds() / 3600, float)[:, None]
        shape = np.exp(-0.5 * (dt / storm.sigma_h) ** 2) * np.exp(-0.5 * (d / storm.radius_km) ** 2)[None, :]
        rain = rain + storm.peak_rate_mm_h * shape * step_h
        temp = temp - 5.0 * shape
        dewp = np.minimum(dewp + 2.0 * shape, temp)
        pres = pres - 3.0 * np.exp(-0.5 * (dt / (3 * storm.sigma_h)) ** 2)
        ws = ws + 9.0 * shape
    del hours
    df = pd.DataFrame({
        "time": np.repeat(times, k),
        "station_id": np.tile(np.asarray(station_ids, dtype=object), n),
        "lat": np.tile(lat, n), "lon": np.tile(lon, n),
        "temp": temp.ravel().round(2), "dewp": dewp.ravel().round(2), "pres": pres.ravel().round(2),
        "rain": rain.ravel().round(2), "wind_dir": wd.ravel().round(1), "wind_speed": ws.ravel().round(2),
    })
    return df


def station_layout(n: int, seed: int, bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """`n` station positions spread over bbox (lon_min, lat_min, lon_max, lat_max) on a jittered grid."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = bbox
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    i = np.arange(n)
    fx = (i % cols + 0.5 + rng.uniform(-0.3, 0.3, n)) / cols
    fy = (i // cols + 0.5 + rng.uniform(-0.3, 0.3, n)) / rows
    return y0 + fy * (y1 - y0), x0 + fx * (x1 - x0)


STEP_MIN = 10
QUANTITIES = {
    "temp": ("degC", -60.0, 60.0, 10.0),
    "dewp": ("degC", -70.0, 40.0, 10.0),
    "pres": ("hPa", 500.0, 1090.0, 6.0),  # station pressure: as the weather QC's fail span, for stations at height
    "rain": ("mm", 0.0, 100.0, None),
    "wind_dir": ("deg", 0.0, 360.0, None),
    "wind_speed": ("m/s", 0.0, 75.0, 20.0),
}


def generate(city, start: pd.Timestamp, hours: float, seed: int, n_stations: int = 20):
    """The weather part of the city simulation.

    20 weather stations (gateways gw-weather-1..3) report every 10 minutes; `rain` is mm in the
    10 minutes. In the last 60 % of the period: a rainstorm centred on the lowest-lying central
    district, peaking at start + 0.8 * hours (the water domain floods on the same timing), one
    temperature sensor stuck for 4 h and a one-hour temperature spike of +12 °C. Truth lists all three.
    """
    from schemas.registry import QuantitySpec, SensorSpec
    from shared.simulator.scenario import DomainScenario

    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    rng = np.random.default_rng(seed)
    lat, lon = station_layout(n_stations, seed, city.bbox)
    ids = [f"wx-{i + 1:02d}" for i in range(n_stations)]
    times = pd.date_range(start, start + pd.Timedelta(hours=hours), freq=f"{STEP_MIN}min", inclusive="left")
    low = [d for d in city.districts if d.low_lying] or list(city.districts)
    centre = min(low, key=lambda d: (d.centre[0] - city.centre_lat) ** 2 + (d.centre[1] - city.centre_lon) ** 2)
    peak = start + pd.Timedelta(hours=0.8 * hours)
    storm = Storm(peak=peak.floor(f"{STEP_MIN}min"), lat=centre.centre[0], lon=centre.centre[1])
    wide = synthetic_observations(lat, lon, ids, times, seed, storm=storm)
    truth = [{"scenario": "rainstorm", "start": (storm.peak - pd.Timedelta(hours=3 * storm.sigma_h)).isoformat(),
              "end": (storm.peak + pd.Timedelta(hours=3 * storm.sigma_h)).isoformat(), "peak": storm.peak.isoformat(),
              "district": centre.district_id, "lat": storm.lat, "lon": storm.lon,
              "peak_rate_mm_h": storm.peak_rate_mm_h, "expected_signal": "rainstorm",
              "expected_min_level_before_peak": "orange"}]
    # faults in the last 60 %, away from the storm
    t_lo = start + pd.Timedelta(hours=0.45 * hours)
    t_hi = start + pd.Timedelta(hours=0.7 * hours)
    stuck_id, spike_id = (str(x) for x in rng.choice(ids, 2, replace=False))
    t_stuck = (t_lo + (t_hi - t_lo) * float(rng.uniform(0, 0.5))).floor(f"{STEP_MIN}min")
    in_stuck = (wide["station_id"] == stuck_id) & (wide["time"] >= t_stuck) & (wide["time"] < t_stuck + pd.Timedelta(hours=4))
    wide.loc[in_stuck, "temp"] = wide.loc[in_stuck, "temp"].iloc[0]
    truth.append({"scenario": "stuck_sensor", "start": t_stuck.isoformat(),
                  "end": (t_stuck + pd.Timedelta(hours=4)).isoformat(), "sensor_id": stuck_id, "quantity": "temp"})
    t_spike = (t_lo + (t_hi - t_lo) * float(rng.uniform(0.6, 1.0))).floor(f"{STEP_MIN}min")
    t_spike = t_spike.floor("h")
    # one hour of readings 12 °C too warm: a spike at the hourly resolution the QC runs at
    at = (wide["station_id"] == spike_id) & (wide["time"] >= t_spike) & (wide["time"] < t_spike + pd.Timedelta(hours=1))
    wide.loc[at, "temp"] = wide.loc[at, "temp"] + 12.0
    truth.append({"scenario": "spike", "start": t_spike.isoformat(), "end": (t_spike + pd.Timedelta(hours=1)).isoformat(),
                  "sensor_id": spike_id, "quantity": "temp", "delta": 12.0})
    sensors = []
    for i, sid in enumerate(ids):
        q = {k: QuantitySpec(unit=u, valid_min=lo, valid_max=hi, max_rate_per_h=r) for k, (u, lo, hi, r) in QUANTITIES.items()}
        sensors.append(SensorSpec(sensor_id=sid, domain="weather", kind="weather_station",
                                  gateway_id=f"gw-weather-{i % 3 + 1}", lat=float(lat[i]), lon=float(lon[i]),
                                  district=city.district_of(float(lat[i]), float(lon[i])), quantities=q))
    readings = wide.melt(id_vars=["time", "station_id"], value_vars=list(QUANTITIES),
                         var_name="quantity", value_name="value").rename(columns={"station_id": "sensor_id"})
    readings = readings.sort_values(["time", "sensor_id", "quantity"], kind="stable").reset_index(drop=True)
    config = {"step_minutes": STEP_MIN, "rain_unit": "mm per step", "hourly": {"rain": "sum", "other": "mean"},
              "stations": {s.sensor_id: {"lat": s.lat, "lon": s.lon, "district": s.district} for s in sensors},
              "nowcast_horizons_h": [1, 2, 3, 4, 5, 6], "train_hours": round(0.4 * hours, 1)}
    return DomainScenario("weather", sensors, readings, truth, config)


def hourly_from_readings(readings: pd.DataFrame, stations: dict[str, dict]) -> pd.DataFrame:
    """Readings (time, sensor_id, quantity, value) -> contract observations per hour (rain summed)."""
    r = readings.copy()
    r["time"] = pd.to_datetime(r["time"], utc=True).dt.floor("h")
    wide = r.pivot_table(index=["time", "sensor_id"], columns="quantity", values="value", aggfunc="mean")
    if "rain" in wide.columns:
        wide["rain"] = r[r["quantity"] == "rain"].groupby(["time", "sensor_id"])["value"].sum()
    wide = wide.reset_index().rename(columns={"sensor_id": "station_id"})
    wide["lat"] = wide["station_id"].map(lambda s: stations[s]["lat"])
    wide["lon"] = wide["station_id"].map(lambda s: stations[s]["lon"])
    return wide


def check_detection(truth: dict, alerts: list[dict]) -> dict:
    """Was the injected scenario detected?

    rainstorm: the expected signal (at least the truth level) in the district before the peak;
    stuck_sensor / spike: a `sensor_fault` alert naming the sensor and quantity, raised from the start of
    the fault until 2 h after its end (QC judges whole hours, after they close).
    """
    scen = truth.get("scenario")
    if scen in ("stuck_sensor", "spike"):
        return _check_sensor_fault(truth, alerts)
    if scen != "rainstorm":
        return {"detected": False, "at": None, "delay_min": None, "note": f"no check for scenario {scen!r}"}
    from services.weather.domain.signals import LEVELS

    peak = pd.Timestamp(truth["peak"])
    need = LEVELS.index(truth.get("expected_min_level_before_peak", "blue"))
    hits = sorted(pd.Timestamp(a["raised_at"]) for a in alerts
                   if a.get("domain") == "weather" and a.get("kind") == "rainstorm_signal"
                   and a.get("district") == truth.get("district") and a.get("level") in LEVELS
                   and LEVELS.index(a["level"]) >= need)
    if not hits:
        return {"detected": False, "at": None, "delay_min": None,
                "note": f"no rainstorm signal >= {LEVELS[need]} in {truth.get('district')}"}
    at = hits[0]
    lead = (peak - at).total_seconds() / 60
    return {"detected": bool(at <= peak), "at": at.isoformat(), "delay_min": round(-lead, 1),
            "note": f"rainstorm {LEVELS[need]}+ raised {lead:.0f} min before the peak" if at <= peak
            else f"raised {-lead:.0f} min after the peak"}


def _check_sensor_fault(truth: dict, alerts: list[dict]) -> dict:
    start, end = pd.Timestamp(truth["start"]), pd.Timestamp(truth["end"])
    sid, q = truth.get("sensor_id"), truth.get("quantity")
    hits = sorted(pd.Timestamp(a["raised_at"]) for a in alerts
                  if a.get("domain") == "weather" and a.get("kind") == "sensor_fault"
                  and a.get("status", "raised") != "cleared"
                  and (a.get("evidence") or {}).get("sensor_id") == sid and (a.get("evidence") or {}).get("quantity") == q
                  and start <= pd.Timestamp(a["raised_at"]) <= end + pd.Timedelta(hours=2))
    if not hits:
        return {"detected": False, "at": None, "delay_min": None,
                "note": f"no sensor_fault alert for {sid} {q} between {start:%H:%M} and 2 h after {end:%H:%M}"}
    delay = (hits[0] - start).total_seconds() / 60
    return {"detected": True, "at": hits[0].isoformat(), "delay_min": round(delay, 1),
            "note": f"sensor_fault on {sid} {q} raised {delay:.0f} min after the fault began"}
