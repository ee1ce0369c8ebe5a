"""Stream handler of the air-quality service: AQI alerts, grids, forecasts, calibration, source tracing.

Observations of the reference stations and low-cost sensors (and the weather stations' wind)
are kept per sensor in memory, in SIMULATED time (`observed_at`):

- every reference-station hour -> hourly and 24-h AQI (HJ 633) and the exceedance alert with
  hysteresis (`air:aqi:<station>`);
- every station hour above the PM2.5 threshold -> source tracing (溯源) once every station has
  reported that hour, with the calibrated low-cost sensors as extra receptors; when two traced
  hours agree (or a shorter exceedance ends, or six traced hours disagree: the largest summed
  contribution) a `pollution_source` alert names the source and an
  `inspect_source` field task with a map goes out (`air:source:<station>`, cleared two hours
  under the threshold);
- at most every `air_heavy_every_s` wall seconds, on the latest complete window only (stale
  windows are skipped when the stream is behind): the PM2.5/PM10/NO2/O3 grids with 1-sigma,
  the station forecasts 1-72 h (and the forecast exceedance alert `air:aqi-forecast:<station>`),
  the low-cost drift check (a `calibrate_sensor` task and a `sensor_calibration` alert when a
  sensor's gain against its reference changed, lastingly, beyond what its peers share);
- model fits (low-cost calibration after the scenario-free part, forecaster refits) run in a
  thread, never on the event loop.

Alert, task and product ids come from what they are about (`stable_id`), the database takes
products with upserts on their natural keys: a replayed batch yields the same ids and rows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from schemas.alerts import Alert, GeoPoint
from schemas.observations import Observation
from schemas.products import AirGrid, GridCell, SourceAttribution, StationForecast
from schemas.tasks import FieldTask
from schemas.topics import OBSERVATION_TOPIC
from services.air_quality import repository
from services.air_quality.domain import aqi as aqi_mod
from services.air_quality.domain.grid import Grid, estimate_grid, make_grid
from services.air_quality.settings import AirSettings
from shared.city import City, District, default_city, to_local_xy_m
from shared.stream import Output, PoisonRecord, alert_output, open_alerts, output, stable_id, task_output
from shared.units import UnitError, convert

logger = logging.getLogger("cityops.air")
SOURCE = "air-quality"
GRID_TOPIC = "cityops.air.grid.v1"
FORECAST_TOPIC = "cityops.air.forecast.v1"
ATTRIBUTION_TOPIC = "cityops.air.attribution.v1"
NOWCAST_TOPIC = "cityops.weather.nowcast.v1"
TOPICS = [OBSERVATION_TOPIC["air"], OBSERVATION_TOPIC["weather"], NOWCAST_TOPIC]
GRID_POLLUTANTS = ("pm25", "pm10", "no2", "o3")
# HJ 633-2012: the AQI is the largest sub-index over all six pollutants a station reports
AQI_POLLUTANTS = (*GRID_POLLUTANTS, "so2", "co")
AQI_HOLD_MAX_H = 3
DEFAULT_THRESHOLDS = {"pm25": 75.0, "pm10": 150.0, "no2": 200.0, "o3": 200.0}
# AQI level -> (severity, warning colour)
SEVERITY_OF_LEVEL = {"III": ("minor", "yellow"), "IV": ("major", "orange"), "V": ("critical", "red"),
                     "VI": ("critical", "red")}
# simulated hours a station-hour's tracing waits for the other stations' reports of that hour (a backlog
# replayed from Kafka can put partitions hours apart; a dead station holds tracing back this long)
TRACE_WAIT_H = 12.0
# a traced source must explain at least this much of the station's value to be named
MIN_CONTRIBUTION_UGM3 = 5.0
# a station's source trace is open from its first hour above the PM2.5 threshold until this many
# consecutive hours below it: a plume meanders across a station, and a dip of an hour is the same episode
TRACE_CLOSE_H = 2
# traced hours after which a source is named even if no two consecutive hours agreed (largest summed contribution):
# an inspector should be on the way within hours of an exceedance, not only once the plume steadies. Not fewer: on
# the service test's backlog the hours disagree for five hours and then agree on the true source; three named
# another
TRACE_SETTLE_MAX_H = 6
# weight of a calibrated low-cost sensor's rows against a reference station's in the source-tracing fit
LOWCOST_TRACE_WEIGHT = 0.5
# how far (robust z among the peers) a sensor's gain change must stand out to count as a drift
DRIFT_Z = 5.0
# ... and how far every earlier block of the drift window must stand out on the same side (a drift lasts)
DRIFT_HOLD_Z = 3.0
# readings this close (hours) to a station's exceedance hour are left out of the drift check: a plume crossing a
# sensor but not its reference station (or the reverse) is not a calibration problem
DRIFT_PLUME_MARGIN_H = 2.0
POLLUTANT_NAME = {"pm25": "PM2.5", "pm10": "PM10", "no2": "NO2", "o3": "O3", "so2": "SO2", "co": "CO"}


def city_from_config(d: dict[str, Any] | None) -> City:
    if not d:
        return default_city()
    return City(d.get("name", "city"), float(d["centre_lat"]), float(d["centre_lon"]), tuple(
        District(x["district_id"], x["name_zh"], x["name_en"], tuple(x["bbox"]), x.get("land_use", "urban"),
                 bool(x.get("low_lying", False))) for x in d["districts"]))


def _ts(t: datetime | str) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _good(obs: Observation) -> dict[str, float]:
    """Only QARTOD pass / not-evaluated values feed the models."""
    return {q: float(v.value) for q, v in obs.values.items() if v.qc in (1, 2) and math.isfinite(v.value)}


def _parse(events: list[dict]) -> tuple[list[Observation], list[StationForecast]]:
    """Validate a whole batch before any state changes, so a poison batch replays cleanly one by one."""
    obs, nowcasts = [], []
    for env in events:
        kind = str(env.get("type", ""))
        try:
            if kind.startswith("observation."):
                obs.append(Observation.model_validate(env["payload"]))
            elif kind == "weather.nowcast":
                nowcasts.append(StationForecast.model_validate(env["payload"]))
        except ValidationError as exc:
            e = exc.errors()[0]
            raise PoisonRecord(f"{kind} payload does not match its schema at {e['loc']}: {e['msg']}") from None
    return obs, nowcasts


@dataclass
class _Station:
    station_id: str
    lat: float
    lon: float
    district: str | None
    hours: dict[pd.Timestamp, dict[str, float]] = field(default_factory=dict)
    last_hour: pd.Timestamp | None = None
    aqi_1h: dict[str, Any] | None = None
    aqi_24h: dict[str, Any] | None = None


def _hour_value(st: _Station, times: pd.DatetimeIndex, quantity: str,
                exclude: frozenset[pd.Timestamp] = frozenset()) -> np.ndarray:
    """The station's hourly value covering each time: its latest report at or before it, within the hour.

    Station hours are stamped at whatever minute the network reports (the simulator starts at any
    minute), so a reading at 10:05 belongs to the 09:39 report, not to a 10:00 that never comes."""
    keys = sorted(st.hours)
    out = np.full(len(times), np.nan)
    if not keys or len(times) == 0:
        return out
    hours = pd.DatetimeIndex(keys)
    i = hours.searchsorted(times, side="right") - 1
    for k in np.flatnonzero(i >= 0):
        if times[k] - hours[i[k]] < pd.Timedelta(hours=1) and keys[i[k]] not in exclude:
            out[k] = st.hours[keys[i[k]]].get(quantity, np.nan)
    return out


@dataclass
class _LowCost:
    sensor_id: str
    lat: float
    lon: float
    district: str | None
    reference: str | None = None  # nearest reference station
    readings: deque = field(default_factory=lambda: deque(maxlen=2000))  # (t, raw, rh, temp)
    calibration: Any = None
    train_log_ratio: float | None = None  # median log(raw / reference) while the calibration was fitted
    train_range: tuple[float, float, float, float] | None = None  # raw max, rh min, rh max, temp min
    task_id: str | None = None
    fit_tried: bool = False  # calibration attempted (a sensor first heard after the others is fitted later)
    fit_failures: int = 0  # fits without enough pairs (its reference had not reported yet): retried up to 3 times
    recovered: bool = False  # its readings of the calibration period were looked for in the database


@dataclass
class _Episode:
    start: pd.Timestamp
    alert_id: str
    peak_aqi: int
    top_source: str | None = None  # the settled top source (two traced hours agree)
    tops: list[str | None] = field(default_factory=list)  # top source of each traced hour
    tasks: set[str] = field(default_factory=set)
    atts: list[Any] = field(default_factory=list)  # the traced hours that named a source
    below_h: int = 0  # consecutive hours under the tracing threshold (a trace closes after TRACE_CLOSE_H)
    primary: tuple[str, ...] = ()  # an AQI alert's primary pollutant(s) while over the limit
    held_h: int = 0  # consecutive hours the alert was held because its primary pollutant was missing


@dataclass
class LatestGrid:
    valid_at: pd.Timestamp
    grid: Grid
    values: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    sensors: tuple[np.ndarray, np.ndarray]


class AirService:
    """State and handler of the air-quality stream service (one instance per process)."""

    def __init__(self, settings: AirSettings, pool, *, config: dict[str, Any] | None = None):
        self.s = settings
        self.pool = pool
        cfg = settings.load_city_config() if config is None else config
        air = cfg.get("domains", {}).get("air", {})
        self.city = city_from_config(cfg.get("city"))
        self.grid = make_grid(self.city, float(air.get("grid", {}).get("cell_km", settings.air_cell_km)))
        self.grid_districts = [self.city.district_of(a, b) for a, b in zip(self.grid.lat, self.grid.lon, strict=True)]
        self.update = pd.Timedelta(minutes=float(air.get("grid", {}).get("update_min", settings.air_grid_update_min)))
        self.thresholds = {**DEFAULT_THRESHOLDS, **air.get("thresholds_ugm3", {})}
        on_off = air.get("aqi_alert", {"on": 150, "off": 130})
        self.on, self.off = float(on_off["on"]), float(on_off["off"])
        self.aqi_alert = aqi_mod.AqiAlert(self.on, self.off)
        self.forecast_alert = aqi_mod.AqiAlert(self.on, self.off)
        self.sources = pd.DataFrame(air.get("sources", []), columns=["source_id", "kind", "lat", "lon", "height_m",
                                                                     "district"])
        self.reference_ids = set(air.get("reference_stations", []))
        self.lowcost_step = pd.Timedelta(minutes=float(air.get("lowcost_step_min", 10)))
        self.calibration_until = _ts(air["calibration_until"]) if air.get("calibration_until") else None
        self.out_dir = settings.air_state_dir
        self.stations: dict[str, _Station] = {}
        self.lowcost: dict[str, _LowCost] = {}
        self.episodes: dict[str, _Episode] = {}  # dedup key -> open episode
        # station -> open source trace: tracing follows the PM2.5 exceedance itself, not the AQI alert, whose
        # hysteresis (on 150 / off 130) can clear and re-raise within one plume and would split its hours
        self.traces: dict[str, _Episode] = {}
        self.pending_traces: list[tuple[_Episode, str, pd.Timestamp]] = []  # (episode, station, hour)
        self.wind: dict[str, tuple[pd.Timestamp, float, float]] = {}  # sensor -> (t, from_deg, speed)
        self.nowcast_wind: tuple[pd.Timestamp, float | None, float | None] | None = None
        self.clock: pd.Timestamp | None = None
        self.first_seen: pd.Timestamp | None = None
        self.latest: LatestGrid | None = None
        self.last_heavy = 0.0
        self.forecaster = None
        self.forecaster_until: pd.Timestamp | None = None
        self.forecast_issued: pd.Timestamp | None = None
        self.latest_forecasts: dict[str, StationForecast] = {}
        self.latest_attribution: dict[str, SourceAttribution] = {}
        # (window, calibration rounds) of the last drift check: sensors fitted late are checked on the same window
        self.drift_checked: tuple[pd.Timestamp, int] | None = None
        self.fits = {"calibration": 0, "forecast": 0}
        self._bg: dict[str, asyncio.Task] = {}
        self.calibrated = False
        self.calibrated_until: pd.Timestamp | None = None
        self.recovered_stations: set[str] = set()  # stations whose calibration-period hours were read back

    async def restore_open_alerts(self) -> int:
        """After a restart: take up the AQI and forecast alerts this service raised that are still open.

        The hysteresis state lives in memory and the stream resumes from its committed offsets, so without this
        an alert open at a crash is never cleared (its station's AQI falls below `off` with nobody to say so),
        and one still over the limit is raised again under a new id. The open alerts are read from the alerts
        table the notification service keeps. Returns how many were taken up."""
        rows = await open_alerts(self.pool, "air", ("aqi_exceedance", "aqi_forecast_exceedance"))
        n = 0
        for r in rows:
            key, alert_id, raised_at, ev = r["dedup_key"], r["alert_id"], r["raised_at"], r["evidence"]
            if key in self.episodes:
                continue
            hysteresis = self.forecast_alert if key.startswith("air:aqi-forecast:") else self.aqi_alert
            hysteresis.active[key] = True
            start = _ts(ev["episode_start"]) if ev.get("episode_start") else pd.Timestamp(raised_at)
            peak = ev.get("peak_aqi") or ev.get("aqi") or ev.get("forecast_aqi") or 0
            self.episodes[key] = _Episode(start, alert_id, int(peak), primary=tuple(ev.get("primary") or ()))
            n += 1
        if n:
            logger.info("took up %d open air alert(s) after a restart", n)
        return n

    # -- the handler ----------------------------------------------------------------------

    async def handle(self, events: list[dict]) -> list[Output]:
        obs, nowcasts = _parse(events)
        out: list[Output] = []
        for f in nowcasts:
            self._nowcast(f)
        for o in sorted(obs, key=lambda x: x.observed_at):
            t = _ts(o.observed_at)
            self.clock = t if self.clock is None or t > self.clock else self.clock
            self.first_seen = t if self.first_seen is None or t < self.first_seen else self.first_seen
            vals = _good(o)
            if "wind_dir" in vals and "wind_speed" in vals:
                self.wind[o.sensor_id] = (t, vals["wind_dir"], vals["wind_speed"])
            if o.domain != "air":
                continue
            if o.kind == "reference_station" or o.sensor_id in self.reference_ids:
                out += await self._station_hour(o, t, vals)
            elif "pm25" in vals:
                self._lowcost_reading(o, t, vals)
        out += await self._run_traces()
        await self._recover_calibration_period()
        self._start_fits()
        if time.monotonic() - self.last_heavy >= self.s.air_heavy_every_s:
            self.last_heavy = time.monotonic()
            out += await self.heavy()
        return out

    def _nowcast(self, f: StationForecast) -> None:
        if f.variable in ("wind_dir", "wind_speed") and f.values:
            t = _ts(f.issued_at)
            wd, ws = (self.nowcast_wind or (t, None, None))[1:]
            if f.variable == "wind_dir":
                wd = float(f.values[0])
            else:
                ws = float(f.values[0])
            self.nowcast_wind = (t, wd, ws)

    # -- reference stations: AQI and exceedance alerts -------------------------------------

    async def _station_hour(self, o: Observation, t: pd.Timestamp, vals: dict[str, float]) -> list[Output]:
        st = self.stations.get(o.sensor_id)
        if st is None:
            st = self.stations[o.sensor_id] = _Station(o.sensor_id, o.lat, o.lon, o.district)
        co = o.values.get("co")
        if "co" in vals and co is not None:
            try:  # HJ 633 rates CO in mg/m³
                vals = {**vals, "co": convert(vals["co"], co.unit, "mg/m3")}
            except UnitError:  # a unit the project cannot read: no CO sub-index rather than a wrong one
                vals = {k: v for k, v in vals.items() if k != "co"}
        st.hours[t] = vals
        keep = t - pd.Timedelta(hours=self.s.air_history_h)
        for old in [h for h in st.hours if h < keep]:
            del st.hours[old]
        if st.last_hour is not None and t <= st.last_hour:
            return []  # a replayed or late hour: its alert decision was taken when it first came
        st.last_hour = t
        conc = {p: vals[p] for p in AQI_POLLUTANTS if p in vals}
        if not conc:
            return []
        r1 = aqi_mod.aqi(conc, period="1h")
        st.aqi_1h = {"at": t.isoformat(), "aqi": r1.aqi, "level": r1.level, "category_zh": r1.category_zh,
                     "category_en": r1.category_en, "primary": list(r1.primary), "iaqi": r1.iaqi, "concentrations": conc}
        day = [v for h, v in st.hours.items() if t - pd.Timedelta(hours=24) < h <= t]
        if len(day) >= 20:  # HJ 633/663: a daily value needs at least 20 hourly values
            st.aqi_24h = self._aqi_24h(st, t) or st.aqi_24h
        return await self._aqi_alert(st, t, r1, conc)

    def _aqi_24h(self, st: _Station, t: pd.Timestamp) -> dict[str, Any] | None:
        hrs = sorted(h for h in st.hours if t - pd.Timedelta(hours=24) < h <= t)
        df = pd.DataFrame([st.hours[h] for h in hrs], index=hrs)
        conc = {p: float(df[p].mean()) for p in ("pm25", "pm10", "no2", "so2", "co") if p in df and df[p].notna().any()}
        if "o3" in df and df["o3"].notna().any():
            o3_8h = df["o3"].rolling(8, min_periods=6).mean().max()
            if np.isfinite(o3_8h):  # too few O3 hours for any 8-hour mean: no O3 sub-index today
                conc["o3"] = float(o3_8h)
        if not conc:
            return None
        r = aqi_mod.aqi(conc, period="24h")
        return {"until": t.isoformat(), "aqi": r.aqi, "level": r.level, "category_zh": r.category_zh,
                "category_en": r.category_en, "primary": list(r.primary), "iaqi": r.iaqi, "hours": len(hrs)}

    async def _aqi_alert(self, st: _Station, t: pd.Timestamp, r, conc: dict[str, float]) -> list[Output]:
        key = f"air:aqi:{st.station_id}"
        ep = self.episodes.get(key)
        # an hour without a pollutant that drove the open alert (its analyser failed QC) says nothing about
        # whether the air recovered: the alert stays as it is, rather than clearing and re-raising an hour
        # later — for up to AQI_HOLD_MAX_H hours, then what the station still measures decides
        hold = ep is not None and any(p not in conc for p in ep.primary) and ep.held_h < AQI_HOLD_MAX_H
        if ep is not None:
            ep.held_h = ep.held_h + 1 if hold else 0
        change = None if hold else self.aqi_alert.update(key, r.aqi)
        out: list[Output] = []
        if change == "raised":
            ep = self.episodes[key] = _Episode(t, stable_id(key, t.isoformat()), r.aqi, primary=r.primary)
            out.append(self._alert(st, t, r, conc, ep, "raised"))
        elif ep is not None and change is None:
            ep.peak_aqi = max(ep.peak_aqi, r.aqi)
            if not hold and r.aqi >= self.on:
                ep.primary = r.primary
        elif change == "cleared" and ep is not None:
            out.append(self._alert(st, t, r, conc, ep, "cleared"))
            del self.episodes[key]
        self._trace_hour(st, t, conc)
        return out

    def _trace_hour(self, st: _Station, t: pd.Timestamp, conc: dict[str, float]) -> None:
        """Open or extend the station's source trace on a PM2.5 exceedance; count the hours under it."""
        tr = self.traces.get(st.station_id)
        if "pm25" not in conc:
            return  # no PM2.5 this hour (failed QC): neither an exceedance hour nor one under the threshold
        if conc["pm25"] > self.thresholds["pm25"]:
            if tr is None:
                key = f"air:source:{st.station_id}"
                tr = self.traces[st.station_id] = _Episode(t, stable_id(key, t.isoformat()), 0)
            tr.below_h = 0
            # trace every exceedance hour: the plume's signal across stations builds up over the hours
            self.pending_traces.append((tr, st.station_id, t))
        elif tr is not None:
            tr.below_h += 1

    async def _run_traces(self) -> list[Output]:
        """Trace the pending station-hours whose hour every live station and low-cost sensor has reported
        (partitions progress unevenly; tracing on a half-reported hour would rank sources on whoever
        happened to arrive, and a replay would name another source)."""
        if self.clock is None:
            return []
        if not self.pending_traces:
            return await self._close_traces() if self.traces else []
        lasts = [st.last_hour for st in self.stations.values() if st.last_hour is not None]
        complete = min(lasts) if lasts else self.clock
        # the calibrated low-cost sensors' readings of the whole station hour (their hourly means join the fit)
        lc = [s.readings[-1][0] + self.lowcost_step for s in self.lowcost.values()
              if s.calibration is not None and s.task_id is None and s.readings]
        mark = min(lc) if lc else self.clock
        # a station that stays silent may not hold tracing back for more than a few hours
        give_up = self.clock - pd.Timedelta(hours=TRACE_WAIT_H)
        out: list[Output] = []
        waiting = []
        for ep, sid, t in self.pending_traces:
            if (t > complete or t + pd.Timedelta(hours=1) - self.lowcost_step > mark) and t > give_up:
                waiting.append((ep, sid, t))
                continue
            st = self.stations[sid]
            out += await self._trace(st, t)
            out += await self._settle(st, t, ep)
        self.pending_traces = waiting
        return out + await self._close_traces()

    async def _close_traces(self) -> list[Output]:
        """Name the source of a short exceedance, end the traces that stayed under the threshold long
        enough; only traces with no hour left to trace."""
        busy = {id(ep) for ep, _, _ in self.pending_traces}
        out: list[Output] = []
        for sid, tr in list(self.traces.items()):
            if tr.below_h >= 1 and tr.top_source is None and tr.atts and id(tr) not in busy:
                st = self.stations[sid]
                out += await self._settle_short(st, st.last_hour, tr)
            if tr.below_h >= TRACE_CLOSE_H and id(tr) not in busy:
                st = self.stations[sid]
                if tr.top_source is not None and st.last_hour is not None:
                    out.append(self._source_alert(st, st.last_hour, tr, None))
                del self.traces[sid]
        return out

    def _alert(self, st: _Station, t: pd.Timestamp, r, conc: dict[str, float], ep: _Episode, status: str) -> Output:
        key = f"air:aqi:{st.station_id}"
        prim = "、".join(POLLUTANT_NAME.get(p, p) for p in r.primary) or "—"
        prim_en = ", ".join(POLLUTANT_NAME.get(p, p) for p in r.primary) or "none"
        where_zh = f"{st.district or '市区'} 站点 {st.station_id}"
        where_en = f"station {st.station_id} ({st.district or 'city'})"
        evidence = {"observed_at": t.isoformat(), "station_id": st.station_id, "aqi": r.aqi, "iaqi": r.iaqi,
                    "primary": list(r.primary), "concentrations_ugm3": {k: round(v * 1000.0 if k == "co" else v, 1) for k, v in conc.items()},
                    "on": self.on, "off": self.off, "episode_start": ep.start.isoformat(), "peak_aqi": ep.peak_aqi,
                    "aqi_24h": (st.aqi_24h or {}).get("aqi")}
        tr = self.traces.get(st.station_id)
        if tr is not None and tr.top_source is not None:
            evidence["top_source_id"] = tr.top_source
        if status == "cleared":
            alert = Alert(
                alert_id=ep.alert_id, domain="air", kind="aqi_exceedance", severity="info", status="cleared",
                level=None, title_zh=f"空气质量恢复：{where_zh}", title_en=f"Air quality recovered at {where_en}",
                message_zh=f"{where_zh} 小时 AQI 降至 {r.aqi}（{r.category_zh}），低于解除阈值 {self.off:.0f}；"
                           f"本次过程峰值 AQI {ep.peak_aqi}。可解除相关防护提示。",
                message_en=f"Hourly AQI at {where_en} fell to {r.aqi} ({r.category_en}), below the clearing "
                           f"threshold {self.off:.0f}; the episode peaked at AQI {ep.peak_aqi}. Protective advice "
                           "can be lifted.",
                location=GeoPoint(lat=st.lat, lon=st.lon), district=st.district, dedup_key=key, raised_at=t,
                evidence=evidence)
            return alert_output(alert, source=SOURCE)
        severity, level = SEVERITY_OF_LEVEL.get(r.level, ("minor", "yellow"))
        src_zh = src_en = ""
        if conc.get("pm25", 0.0) > self.thresholds["pm25"]:
            src_zh = "溯源分析进行中：连续两小时结果一致（或最多六小时）后发布首要来源并派发现场核查。"
            src_en = (" Source tracing is running: the leading source is announced, and an inspection dispatched, "
                      "once two hours agree (at most six traced hours).")
        alert = Alert(
            alert_id=ep.alert_id, domain="air", kind="aqi_exceedance", severity=severity, level=level,
            status="raised",
            title_zh=f"空气质量超标：{where_zh} AQI {r.aqi}（{r.category_zh}）",
            title_en=f"Air quality exceedance at {where_en}: AQI {r.aqi} ({r.category_en})",
            message_zh=f"{t.isoformat()} {where_zh} 小时 AQI {r.aqi}，首要污染物 {prim}，达到预警阈值 {self.on:.0f}。"
                       f"建议减少户外活动，敏感人群做好防护。{src_zh}",
            message_en=f"At {t.isoformat()} the hourly AQI at {where_en} reached {r.aqi} (primary pollutant "
                       f"{prim_en}), at or above the alert threshold {self.on:.0f}. Advise the public to reduce "
                       f"outdoor activity; sensitive groups should take precautions.{src_en}",
            location=GeoPoint(lat=st.lat, lon=st.lon), district=st.district, dedup_key=key, raised_at=t,
            evidence=evidence)
        return alert_output(alert, source=SOURCE)

    # -- source tracing ----------------------------------------------------------------------

    def _station_frame(self, since: pd.Timestamp, until: pd.Timestamp) -> pd.DataFrame:
        rows = []
        for st in self.stations.values():
            for h, v in st.hours.items():
                if since <= h <= until:
                    rows.append({"time": h, "station_id": st.station_id, "lat": st.lat, "lon": st.lon, **v})
        return pd.DataFrame(rows)

    def _lowcost_frame(self, hours: list[pd.Timestamp]) -> pd.DataFrame:
        """Calibrated low-cost PM2.5 per station hour, as extra receptors for source tracing.

        Each sensor's hourly mean over the station hour, divided by its gain against its reference
        at calibration and by the humidity growth all sensors share at that hour (the median over
        sensors of reading / expected), so a plume far above anything seen while calibrating still
        scales linearly (the tree calibration would flatten it). Drifting sensors are left out."""
        if not hours:
            return pd.DataFrame()
        edges = pd.DatetimeIndex(hours)
        rows: dict[str, pd.Series] = {}
        expect: dict[str, pd.Series] = {}
        for s in self.lowcost.values():
            ref = self.stations.get(s.reference or "")
            if s.calibration is None or s.task_id is not None or s.train_log_ratio is None or ref is None:
                continue
            r = [x for x in s.readings if edges[0] <= x[0] < edges[-1] + pd.Timedelta(hours=1)]
            if not r:
                continue
            times = pd.DatetimeIndex([x[0] for x in r])
            i = edges.searchsorted(times, side="right") - 1
            raw = pd.Series([x[1] for x in r], dtype=float).groupby(edges[i]).mean() / np.exp(s.train_log_ratio)
            rows[s.sensor_id] = raw
            refv = pd.Series({h: ref.hours[h].get("pm25", np.nan) for h in raw.index if h in ref.hours}, dtype=float)
            expect[s.sensor_id] = raw / refv.reindex(raw.index)
        if len(rows) < 3:
            return pd.DataFrame()
        growth = pd.DataFrame(expect).median(axis=1)
        table = pd.DataFrame(rows).div(growth, axis=0)
        long = table.stack().rename("pm25").reset_index()
        long.columns = ["time", "station_id", "pm25"]
        where = {sid: (self.lowcost[sid].lat, self.lowcost[sid].lon) for sid in rows}
        long["lat"] = [where[x][0] for x in long["station_id"]]
        long["lon"] = [where[x][1] for x in long["station_id"]]
        long["weight"] = LOWCOST_TRACE_WEIGHT
        return long.dropna(subset=["pm25"])

    async def _trace(self, st: _Station, t: pd.Timestamp) -> list[Output]:
        """Attribute the station's newest exceedance hour to the registered sources (in a thread)."""
        from services.air_quality.domain.attribution import attribute_observations

        if self.sources.empty:
            return []
        obs = self._station_frame(t - pd.Timedelta(hours=12), t)
        need = {"pm25", "wind_dir", "wind_speed"}
        if obs.empty or not need <= set(obs.columns):
            return []
        obs = obs.dropna(subset=["pm25"]).assign(weight=1.0)
        lc = self._lowcost_frame(sorted(obs["time"].unique()))
        if not lc.empty:
            obs = pd.concat([obs, lc], ignore_index=True)
        thr = float(self.thresholds["pm25"])
        res = await asyncio.to_thread(attribute_observations, obs, self.sources, "pm25", thr, None,
                                      [(t, st.station_id)])
        mine = [a for a in res if a.station_id == st.station_id and _ts(a.time) == t]
        if not mine:
            return []
        kinds = dict(zip(self.sources["source_id"], self.sources["kind"], strict=True))
        ranked = sorted(mine, key=lambda a: a.rank)[:5]
        att = SourceAttribution(
            station_id=st.station_id, at=t.to_pydatetime(), pollutant="pm25", observed=float(st.hours[t]["pm25"]),
            contributions=[{"source_id": a.source_id, "kind": kinds.get(a.source_id), "rank": int(a.rank),
                            "contribution": round(float(a.contribution), 2),
                            "confidence": round(float(a.confidence), 3)} for a in ranked])
        self.latest_attribution[st.station_id] = att
        async with self.pool.connection() as conn:
            await repository.write_attribution(conn, att)
        return [output(ATTRIBUTION_TOPIC, st.station_id, att, source=SOURCE, occurred_at=t.to_pydatetime(),
                       event_id=stable_id("air:attribution", st.station_id, "pm25", t.isoformat()))]

    async def _settle(self, st: _Station, t: pd.Timestamp, ep: _Episode) -> list[Output]:
        """Name a source (alert + inspect_source task) once two consecutive traced hours rank it first.

        The first exceedance hour carries little of the plume's signal; dispatching inspectors to
        a source that the next hour no longer ranks first wastes a crew."""
        att = self.latest_attribution.get(st.station_id)
        top = None
        if att is not None and _ts(att.at) == t and att.contributions:
            c = att.contributions[0]
            top = c["source_id"] if c["contribution"] >= MIN_CONTRIBUTION_UGM3 else None
        ep.tops.append(top)
        if top is not None:
            ep.atts.append(att)
        if ep.top_source is None and len(ep.atts) >= TRACE_SETTLE_MAX_H and top is not None \
                and (len(ep.tops) < 2 or ep.tops[-2] != top):
            return await self._settle_short(st, t, ep)
        if top is None or len(ep.tops) < 2 or ep.tops[-2] != top or ep.top_source == top:
            return []
        return await self._name_source(st, t, ep, att)

    async def _name_source(self, st: _Station, t: pd.Timestamp, ep: _Episode, att: SourceAttribution) -> list[Output]:
        ep.top_source = att.contributions[0]["source_id"]
        out = [self._source_alert(st, t, ep, att)]
        out += await self._inspection_task(st, t, ep, att)
        return out

    async def _settle_short(self, st: _Station, t: pd.Timestamp, ep: _Episode) -> list[Output]:
        """An exceedance that ended before two traced hours could agree is still traced: the source
        with the largest contribution summed over its traced hours is named, once the station is back
        under the threshold (a single-hour plume peak is what a short episode looks like at a station)."""
        total: dict[str, float] = {}
        for a in ep.atts:
            for c in a.contributions:
                total[c["source_id"]] = total.get(c["source_id"], 0.0) + float(c["contribution"])
        best = max(total, key=lambda k: total[k])
        att = next((a for a in reversed(ep.atts) if a.contributions[0]["source_id"] == best), None)
        if att is None:
            # the largest sum, yet never first in any one hour (A then C first, B second both times): name it
            # from the hour it contributed most, listed first there with the others in their order after it
            def share(a: SourceAttribution) -> float:
                return max((float(c["contribution"]) for c in a.contributions if c["source_id"] == best), default=0.0)

            hour = max(ep.atts, key=share)
            ranked = sorted(hour.contributions, key=lambda c: c["source_id"] != best)
            att = hour.model_copy(update={"contributions": [{**c, "rank": r} for r, c in enumerate(ranked, 1)]})
        return await self._name_source(st, t, ep, att)

    @staticmethod
    def _source_alert_id(st: _Station, ep: _Episode) -> str:
        return stable_id(f"air:source:{st.station_id}", ep.top_source, ep.start.isoformat())

    def _source_alert(self, st: _Station, t: pd.Timestamp, ep: _Episode, att: SourceAttribution | None) -> Output:
        key = f"air:source:{st.station_id}"
        alert_id = self._source_alert_id(st, ep)
        where_zh, where_en = f"{st.district or '市区'} 站点 {st.station_id}", f"station {st.station_id}"
        if att is None:
            alert = Alert(alert_id=alert_id, domain="air", kind="pollution_source", severity="info", status="cleared",
                          title_zh=f"污染过程结束：{where_zh}", title_en=f"Pollution episode over at {where_en}",
                          message_zh=f"{where_zh} 空气质量已恢复；请在核查记录中注明 {ep.top_source} 的处理结果。",
                          message_en=f"Air quality at {where_en} has recovered; record what the inspection of "
                                     f"{ep.top_source} found.",
                          location=GeoPoint(lat=st.lat, lon=st.lon), district=st.district, dedup_key=key,
                          raised_at=t.to_pydatetime(),
                          evidence={"observed_at": t.isoformat(), "station_id": st.station_id,
                                    "top_source_id": ep.top_source, "trace_id": ep.alert_id})
            return alert_output(alert, source=SOURCE)
        c = att.contributions[0]
        src = self.sources[self.sources["source_id"] == c["source_id"]].iloc[0]
        aqi_ep = self.episodes.get(f"air:aqi:{st.station_id}")
        if ep.tops[-2:] == [c["source_id"]] * 2:
            why_zh, why_en = "连续两小时溯源均将", "for two consecutive hours"
        else:  # the hours disagreed, or the exceedance was short: the largest contribution summed over them
            n_h = len(ep.atts)
            why_zh, why_en = f"按已溯源 {n_h} 小时的累计贡献，", f"by its contribution summed over {n_h} traced hour(s)"
        alert = Alert(
            alert_id=alert_id, domain="air", kind="pollution_source", severity="minor",
            title_zh=f"溯源结果：{where_zh} 超标首要来源 {c['source_id']}",
            title_en=f"Source traced for {where_en}: {c['source_id']} ranked first",
            message_zh=f"{why_zh} {src.kind} 源 {c['source_id']} 排名第一，估计贡献 {c['contribution']:.0f} µg/m³"
                       f"（观测 {att.observed:.0f} µg/m³，置信度 {c['confidence']:.0%}）。已派发现场核查任务，请核实排放情况。",
            message_en=f"Source tracing has ranked {src.kind} source {c['source_id']} first {why_en}: "
                       f"about {c['contribution']:.0f} µg/m³ of the observed {att.observed:.0f} µg/m³ (confidence "
                       f"{c['confidence']:.0%}). A field inspection has been dispatched; verify its emissions.",
            location=GeoPoint(lat=float(src.lat), lon=float(src.lon)), district=st.district, dedup_key=key,
            raised_at=t.to_pydatetime(),
            evidence={"observed_at": t.isoformat(), "station_id": st.station_id, "top_source_id": c["source_id"],
                      "top_source_kind": str(src.kind), "contribution_ugm3": c["contribution"],
                      "confidence": c["confidence"], "observed_ugm3": att.observed, "trace_id": ep.alert_id,
                      "aqi_alert_id": aqi_ep.alert_id if aqi_ep else None,
                      "episode_start": ep.start.isoformat(), "hourly_top_sources": list(ep.tops),
                      "attribution": att.contributions[:3]})
        return alert_output(alert, source=SOURCE)

    async def _inspection_task(self, st: _Station, t: pd.Timestamp, ep: _Episode,
                               att: SourceAttribution) -> list[Output]:
        from services.air_quality.domain.tasks import inspection_task

        top = att.contributions[0]
        src = self.sources[self.sources["source_id"] == top["source_id"]].iloc[0]
        task_id = stable_id("air:inspect_source", top["source_id"], ep.alert_id)
        if task_id in ep.tasks:
            return []
        ep.tasks.add(task_id)
        wd, ws = self.wind_at(t)
        nearby = self._nearby_sources(str(src.source_id))
        it = inspection_task(source_id=str(src.source_id), kind=str(src.kind), lat=float(src.lat), lon=float(src.lon),
                             pollutant="pm25", station_id=st.station_id, observed=att.observed,
                             threshold=float(self.thresholds["pm25"]), contribution=float(top["contribution"]),
                             confidence=float(top["confidence"]), time_iso=t.isoformat(),
                             wind_from_deg=wd if wd is not None else float("nan"),
                             wind_speed=ws if ws is not None else float("nan"),
                             same_park=nearby)
        png = await self._task_map(task_id, t, (float(src.lat), float(src.lon)))
        task = FieldTask(
            task_id=task_id, kind="inspect_source", domain="air", priority=it.priority, title_zh=it.title_zh,
            title_en=it.title_en, description_zh=it.body_zh, description_en=it.body_en,
            location=GeoPoint(lat=it.lat, lon=it.lon), district=src.district if isinstance(src.district, str) else None,
            required_skills=["air_inspection"], related_alert_id=self._source_alert_id(st, ep),
            created_at=t.to_pydatetime(),
            due_at=(t + pd.Timedelta(hours=4)).to_pydatetime(),
            evidence={"observed_at": t.isoformat(), "source_id": top["source_id"], "source_kind": str(src.kind),
                      "station_id": st.station_id, "observed_ugm3": round(att.observed, 1),
                      "estimated_contribution_ugm3": top["contribution"], "confidence": top["confidence"],
                      "rank": 1, "wind_from_deg": wd, "wind_speed_ms": ws, "map_png": png,
                      "nearby_sources": list(nearby)})
        return [task_output(task, source=SOURCE)]

    def _nearby_sources(self, source_id: str) -> tuple[str, ...]:
        """The other registered sources of `source_id`'s cluster (attribution.CLUSTER_M), nearest first."""
        from services.air_quality.domain.attribution import CLUSTER_M
        from services.air_quality.domain.plume import source_clusters
        from shared.city import to_local_xy_m

        srcs = self.sources.reset_index(drop=True)
        hit = np.flatnonzero(srcs["source_id"].astype(str).to_numpy() == source_id)
        if len(hit) == 0 or len(srcs) < 2:
            return ()
        x, y = to_local_xy_m(srcs["lat"].to_numpy(float), srcs["lon"].to_numpy(float),
                             float(srcs["lat"].mean()), float(srcs["lon"].mean()))
        j = int(hit[0])
        mates = next(c for c in source_clusters(x, y, CLUSTER_M) if j in c)
        mates = sorted((int(m) for m in mates if m != j), key=lambda m: np.hypot(x[m] - x[j], y[m] - y[j]))
        return tuple(str(srcs["source_id"].iloc[m]) for m in mates)

    async def _task_map(self, name: str, t: pd.Timestamp, mark: tuple[float, float] | None) -> str | None:
        """A PNG of the newest PM2.5 grid (made now when none is recent) with the source marked."""
        from services.air_quality.domain.heatmap import heatmap_png

        if self.latest is None or self.latest.valid_at < t - pd.Timedelta(hours=1):
            await self._grid_at(t)
        if self.latest is None or "pm25" not in self.latest.values:
            wm = self.watermark()
            if wm is not None:
                await self._grid_at(wm.floor(self.update))
        if self.latest is None or "pm25" not in self.latest.values:
            # catching up on a backlog, a trace can come before any grid: the inspector still gets the place
            logger.warning("no PM2.5 grid for the task map; the map marks the source only",
                           extra={"fields": {"task": name, "at": str(t)}})
            blank = np.full(len(self.grid.lat), np.nan)
            png = await asyncio.to_thread(heatmap_png, self.grid, blank, title="PM2.5 grid not estimated yet",
                                          sensors=(np.array([mark[0]]), np.array([mark[1]])) if mark else None,
                                          vmax=1.0)
        else:
            lg = self.latest
            lats = np.r_[lg.sensors[0], [mark[0]]] if mark else lg.sensors[0]
            lons = np.r_[lg.sensors[1], [mark[1]]] if mark else lg.sensors[1]
            png = await asyncio.to_thread(heatmap_png, lg.grid, lg.values["pm25"], title="PM2.5 µg/m³",
                                          sensors=(lats, lons))
        path = self.out_dir / "maps" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return str(path)

    def wind_at(self, t: pd.Timestamp) -> tuple[float | None, float | None]:
        """Vector-mean wind (from-direction, speed) of the observations within the hour before `t`."""
        recent = [(wd, ws) for (tt, wd, ws) in self.wind.values() if t - pd.Timedelta(hours=1.5) <= tt <= t]
        if not recent:
            if self.nowcast_wind and self.nowcast_wind[1] is not None:
                return self.nowcast_wind[1], self.nowcast_wind[2]
            return None, None
        a = np.array(recent, dtype=float)
        u, v = np.mean(np.sin(np.radians(a[:, 0])) * a[:, 1]), np.mean(np.cos(np.radians(a[:, 0])) * a[:, 1])
        return float(np.degrees(np.arctan2(u, v)) % 360), float(a[:, 1].mean())

    # -- low-cost sensors ------------------------------------------------------------------------

    def _lowcost_reading(self, o: Observation, t: pd.Timestamp, vals: dict[str, float]) -> None:
        s = self.lowcost.get(o.sensor_id)
        if s is None:
            s = self.lowcost[o.sensor_id] = _LowCost(o.sensor_id, o.lat, o.lon, o.district)
        if s.readings and t <= s.readings[-1][0]:
            return  # replayed reading
        s.readings.append((t, vals["pm25"], vals.get("rh", np.nan), vals.get("temp", np.nan)))

    def _nearest_station(self, lat: float, lon: float) -> _Station | None:
        if not self.stations:
            return None
        ids = list(self.stations)
        la = np.array([self.stations[i].lat for i in ids])
        lo = np.array([self.stations[i].lon for i in ids])
        x, y = to_local_xy_m(la, lo, lat, lon)
        return self.stations[ids[int(np.argmin(np.hypot(x, y)))]]

    def _disturbed_hours(self) -> dict[str, frozenset[pd.Timestamp]]:
        """Per station, the hours a local plume lifted it away from the rest of the network.

        A low-cost sensor is compared with its nearest reference station; while a plume crosses
        that station but not the sensor, the comparison says nothing about the sensor (this made a
        demo flag every sensor around the episode's station as drifting). A station is disturbed when
        its difference to the network median leaves its usual band by more than 3 robust sigma and
        15 µg/m³."""
        rows = {sid: {h: v["pm25"] for h, v in st.hours.items() if "pm25" in v} for sid, st in self.stations.items()}
        table = pd.DataFrame(rows)
        if table.shape[1] < 3 or table.empty:
            return {}
        diff = table.sub(table.median(axis=1), axis=0)
        until = self.calibration_until
        usual = diff[diff.index <= until] if until is not None and (diff.index <= until).sum() >= 6 else diff
        base = usual.median()
        spread = 1.4826 * (usual - base).abs().median()
        bad = (diff - base).abs().gt(np.maximum(3 * spread, 15.0), axis=1)
        return {sid: frozenset(bad.index[bad[sid].to_numpy()]) for sid in bad.columns if bad[sid].any()}

    def _pairs(self, s: _LowCost, since: pd.Timestamp | None = None, until: pd.Timestamp | None = None,
               exclude: dict[str, frozenset[pd.Timestamp]] | None = None):
        """(times, raw, rh, temp, reference pm25 of the nearest station in the same hour) of a sensor;
        the reference is NaN in `exclude`d station hours."""
        ref = self.stations.get(s.reference or "")
        if ref is None:
            return None
        r = np.array([x for x in s.readings if (since is None or x[0] > since) and (until is None or x[0] <= until)],
                     dtype=object)
        if len(r) == 0:
            return None
        times = pd.DatetimeIndex(r[:, 0])
        refv = _hour_value(ref, times, "pm25", (exclude or {}).get(ref.station_id, frozenset()))
        return times, r[:, 1].astype(float), r[:, 2].astype(float), r[:, 3].astype(float), refv

    def _calibration_due(self) -> bool:
        if "calibration" in self._bg or self.clock is None or not self.lowcost:
            return False
        if self.calibrated:
            # sensors whose partition was read after the first fit (a backlog) are fitted on the same period
            return self._reported_until(self.calibrated_until) and any(
                not s.fit_tried and s.readings and s.readings[-1][0] > self.calibrated_until
                for s in self.lowcost.values())
        if self.calibration_until is not None:
            return self._reported_until(self.calibration_until) and self._references_heard()
        return self.first_seen is not None and self.clock - self.first_seen >= pd.Timedelta(hours=12)

    def _references_heard(self) -> bool:
        """Has every configured reference station reported since the start? After a restart they come one by one,
        and a sensor fitted before its own reference was heard would be calibrated against a farther one; a
        station still silent after TRACE_WAIT_H is not waited for."""
        missing = self.reference_ids - set(self.stations)
        return not missing or (self.first_seen is not None and self.clock is not None
                               and self.clock - self.first_seen >= pd.Timedelta(hours=TRACE_WAIT_H))

    async def _recover_calibration_period(self) -> None:
        """After a restart past `calibration_until`: the period's readings, from the database.

        The calibration is fitted on the readings up to `calibration_until`, kept only in memory; a service
        restarted after it had none, marked every sensor tried, fitted nothing, and the low-cost sensors dropped
        out of the grid, the tracing and the drift check for good. The sink stored those readings: the sensors'
        (pm25, rh, temp) and the reference stations' PM2.5 of the last `air_history_h` hours up to the period's
        end are read back (as the weather service's `_recover` does), once per sensor, just before the fit."""
        if self.pool is None or not self._calibration_due():
            return
        until = self.calibrated_until or self.calibration_until
        if until is None:
            return
        sensors = [s for s in self.lowcost.values() if not s.fit_tried and not s.recovered
                   and (not s.readings or s.readings[0][0] > until)]
        # a reference first heard after its sensors were read back is read back on its own
        stations = [st for st in self.stations.values() if st.station_id not in self.recovered_stations
                    and not any(h <= until for h in st.hours)]
        if not sensors and not stations:
            return
        since = until - pd.Timedelta(hours=self.s.air_history_h)
        async with self.pool.connection() as conn:
            rows = await repository.calibration_readings(
                conn, [s.sensor_id for s in sensors] + [st.station_id for st in stations],
                since.to_pydatetime(), until.to_pydatetime())
        by_key: dict[tuple[str, pd.Timestamp], dict[str, float]] = {}
        for sid, t, q, v in rows:
            if v is not None and math.isfinite(v):
                by_key.setdefault((sid, _ts(t)), {})[q] = float(v)
        for s in sensors:
            s.recovered = True
            old = [(t, v["pm25"], v.get("rh", np.nan), v.get("temp", np.nan))
                   for (sid, t), v in by_key.items() if sid == s.sensor_id and "pm25" in v]
            if old:
                # the deque keeps its newest readings: what is read back goes before them
                s.readings = deque(sorted(old + list(s.readings), key=lambda r: r[0]), maxlen=s.readings.maxlen)
        for st in stations:
            self.recovered_stations.add(st.station_id)
            for (sid, t), v in by_key.items():
                if sid == st.station_id and "pm25" in v:
                    st.hours.setdefault(t, {"pm25": v["pm25"]})
        logger.info("calibration period read back from the database",
                    extra={"fields": {"until": until.isoformat(), "sensors": len(sensors), "stations": len(stations),
                                      "readings": len(by_key)}})

    def _reported_until(self, t: pd.Timestamp) -> bool:
        """Has every known sensor reported past `t`? Partitions of a backlog progress unevenly, and a fit on
        the ones that happened to arrive would miss the rest; a sensor silent for TRACE_WAIT_H no longer counts."""
        if self.clock is None or self.clock <= t:
            return False
        if self.clock - t > pd.Timedelta(hours=TRACE_WAIT_H):
            return True
        ends = [st.last_hour + pd.Timedelta(hours=1) for st in self.stations.values() if st.last_hour is not None]
        ends += [s.readings[-1][0] + self.lowcost_step for s in self.lowcost.values() if s.readings]
        return all(e > t for e in ends)

    def _calibration_pairs(self, until: pd.Timestamp) -> dict[str, tuple]:
        """Each sensor's training pairs up to `until`, copied on the event loop (the fit runs in a thread)."""
        pairs = {}
        disturbed = self._disturbed_hours()
        for s in self.lowcost.values():
            st = self._nearest_station(s.lat, s.lon)
            # fitted once it and its reference reported through the period (a backlog's partitions lag)
            if s.fit_tried or st is None or st.last_hour is None or st.last_hour + pd.Timedelta(hours=1) <= until \
                    or not s.readings or s.readings[-1][0] <= until:
                continue
            s.reference = st.station_id if st else None
            p = self._pairs(s, until=until, exclude=disturbed)
            if p is None and self.pool is not None and not s.recovered and (not s.readings
                                                                             or s.readings[0][0] > until):
                continue  # nothing in memory up to `until` (a restart after it): read back from the database first
            s.fit_tried = True
            if p is not None:
                pairs[s.sensor_id] = p[1:]
                raw, rh, temp, ref = p[1:]
                ok = np.isfinite(ref) & (ref > 1.0) & (raw > 1.0)
                if ok.sum() >= 20:
                    s.train_log_ratio = float(np.median(np.log(raw[ok] / ref[ok])))
                    s.train_range = (float(np.nanmax(raw)), float(np.nanmin(rh)), float(np.nanmax(rh)),
                                     float(np.nanmin(temp)))
        return pairs

    @staticmethod
    def _fit_calibrations(pairs: dict[str, tuple]) -> dict[str, Any]:
        from services.air_quality.domain.calibration import fit_calibration

        fitted = {}
        for sid, (raw, rh, temp, ref) in pairs.items():
            try:
                fitted[sid] = fit_calibration(raw, rh, temp, ref, n_jobs=1)
            except ValueError as exc:
                logger.info("low-cost sensor not calibrated", extra={"fields": {"sensor": sid, "why": str(exc)}})
        return fitted

    def pending_work(self) -> int:
        """Calibration and forecast fits still running in the background."""
        return sum(not t.done() for t in self._bg.values())

    def _reap(self) -> None:
        for name, task in list(self._bg.items()):
            if task.done():
                del self._bg[name]
                if task.exception() is not None:
                    raise task.exception()  # a failed fit is a bug, not bad data: let the process restart

    def _start_fits(self) -> None:
        self._reap()
        pairs = {}
        if self._calibration_due():
            until = self.calibrated_until or self.calibration_until or self.clock
            pairs = self._calibration_pairs(until)
        if pairs:  # none yet: the sensors or their references have not reported through the period
            self.calibrated_until = until

            async def calibrate() -> None:
                fitted = await asyncio.to_thread(self._fit_calibrations, pairs)
                for sid, cal in fitted.items():
                    self.lowcost[sid].calibration = cal
                for sid in set(pairs) - set(fitted):
                    s = self.lowcost[sid]
                    s.fit_failures += 1
                    s.fit_tried = s.fit_failures >= 3
                n = len(fitted)
                self.calibrated = True
                self.fits["calibration"] += 1
                logger.info("low-cost sensors calibrated", extra={"fields": {"sensors": n, "until": str(until)}})

            self._bg["calibration"] = asyncio.create_task(calibrate())
        if self._refit_due():
            until = self.clock
            frame = self._station_frame(until - pd.Timedelta(hours=self.s.air_history_h), until)

            async def refit() -> None:
                model = await asyncio.to_thread(self._fit_forecaster, frame, until)
                if model is not None:
                    self.forecaster, self.forecaster_until = model, until
                    self.fits["forecast"] += 1

            self._bg["forecast"] = asyncio.create_task(refit())

    async def drain(self) -> None:
        """Wait for the background fits (tests and shutdown)."""
        if self._bg:
            await asyncio.gather(*self._bg.values(), return_exceptions=True)

    # -- forecasts -------------------------------------------------------------------------------

    def _refit_due(self) -> bool:
        if "forecast" in self._bg or self.clock is None or len(self.stations) < 2:
            return False
        hours = {h for st in self.stations.values() for h in st.hours}
        if len(hours) < 12:
            return False
        if self.forecaster_until is None:
            return self.calibration_until is None or self.clock > self.calibration_until
        return self.clock - self.forecaster_until >= pd.Timedelta(hours=self.s.air_refit_every_h)

    @staticmethod
    def _network(obs: pd.DataFrame):
        """The station hours on whole hours, as the batch forecast has them (`forecast.hourly_network`): stations
        stamped at different minutes (:00 and :30) used to leave one of them out of the axis altogether."""
        from services.air_quality.domain.forecast import hourly_network

        if obs.empty or "pm25" not in obs:
            return None
        return hourly_network(obs, "pm25")

    def _fit_forecaster(self, obs: pd.DataFrame, until: pd.Timestamp):
        from services.air_quality.domain.forecast import StationForecaster

        net = self._network(obs)
        if net is None:
            return None
        # the frame ends at `until`, so the hour it falls in holds nothing later
        return StationForecaster(list(self.s.air_forecast_horizons), n_jobs=1).fit(net, until.ceil("h"))

    async def _issue_forecasts(self) -> list[Output]:
        """Forecasts of every station from its newest complete hour (older hours are skipped when behind)."""
        if self.forecaster is None:
            return []
        mark = self.watermark()
        # the newest station hour every station has had the chance to report (hours carry the network's minute)
        done = sorted({h for st in self.stations.values() for h in st.hours if mark is not None and h <= mark})
        issue = done[-1] if done else None
        if issue is None or (self.forecast_issued is not None and issue <= self.forecast_issued):
            return []
        model = self.forecaster
        frame = self._station_frame(issue - pd.Timedelta(hours=self.s.air_history_h), issue)
        net = await asyncio.to_thread(self._network, frame)
        # the network's rows are whole hours: the issue hour's report is in the row of the hour it falls in
        if net is None or net.times[-1] != issue.ceil("h"):
            return []
        mask = np.zeros(len(net.times), dtype=bool)
        mask[-1] = True
        preds = await asyncio.to_thread(model.predict, net, mask)
        self.forecast_issued = issue
        hs = list(model.horizons)
        out: list[Output] = []
        async with self.pool.connection() as conn:
            for j, sid in enumerate(net.station_ids):
                f = StationForecast(
                    station_id=sid, variable="pm25", unit="ug/m3", issued_at=issue.to_pydatetime(),
                    model="xgboost" if all(h in model.models for h in hs) else "xgboost+autoreg",
                    horizons_h=hs, values=[round(float(preds[h][0, j]), 2) for h in hs])
                self.latest_forecasts[sid] = f
                await repository.write_forecast(conn, f)
                out.append(output(FORECAST_TOPIC, sid, f, source=SOURCE, occurred_at=issue.to_pydatetime(),
                                  event_id=stable_id("air:forecast", sid, "pm25", issue.isoformat())))
                out += self._forecast_alert(sid, f, issue)
        return out

    def _forecast_alert(self, sid: str, f: StationForecast, issue: pd.Timestamp) -> list[Output]:
        near = [(h, v) for h, v in zip(f.horizons_h, f.values, strict=True) if h <= self.s.air_forecast_alert_max_h]
        if not near:
            return []
        h_max, v_max = max(near, key=lambda hv: hv[1])
        a = int(aqi_mod.iaqi("pm25", v_max, period="1h")[0])
        key = f"air:aqi-forecast:{sid}"
        change = self.forecast_alert.update(key, a)
        st = self.stations[sid]
        if change == "raised":
            self.episodes[key] = _Episode(issue, stable_id(key, issue.isoformat()), a)
        ep = self.episodes.get(key)
        if change is None or ep is None:
            return []
        level, zh, en, _ = aqi_mod.category(a)
        evidence = {"observed_at": issue.isoformat(), "station_id": sid, "forecast_aqi": a, "horizon_h": h_max,
                    "forecast_pm25_ugm3": v_max, "model": f.model, "on": self.on, "off": self.off,
                    "episode_start": ep.start.isoformat()}
        where_zh, where_en = f"{st.district or '市区'} 站点 {sid}", f"station {sid} ({st.district or 'city'})"
        if change == "cleared":
            del self.episodes[key]
            alert = Alert(alert_id=ep.alert_id, domain="air", kind="aqi_forecast_exceedance", severity="info",
                          status="cleared", title_zh=f"预报超标解除：{where_zh}",
                          title_en=f"Forecast exceedance lifted at {where_en}",
                          message_zh=f"未来 {self.s.air_forecast_alert_max_h} 小时 {where_zh} 预报 AQI 最高 {a}，低于 "
                                     f"{self.off:.0f}，预报预警解除。",
                          message_en=f"The highest forecast AQI at {where_en} in the next "
                                     f"{self.s.air_forecast_alert_max_h} h is {a}, below {self.off:.0f}; the forecast "
                                     "warning is lifted.",
                          location=GeoPoint(lat=st.lat, lon=st.lon), district=st.district, dedup_key=key,
                          raised_at=issue.to_pydatetime(), evidence=evidence)
            return [alert_output(alert, source=SOURCE)]
        severity, colour = SEVERITY_OF_LEVEL.get(level, ("minor", "yellow"))
        alert = Alert(alert_id=ep.alert_id, domain="air", kind="aqi_forecast_exceedance", severity=severity,
                      level=colour, title_zh=f"空气质量预报超标：{where_zh} {h_max} 小时内 AQI {a}（{zh}）",
                      title_en=f"Forecast exceedance at {where_en}: AQI {a} ({en}) within {h_max} h",
                      message_zh=f"{issue.isoformat()} 发布的预报显示 {where_zh} 在 {h_max} 小时后 PM2.5 约 {v_max:.0f} "
                                 f"µg/m³（AQI {a}），达到预警阈值 {self.on:.0f}。请提前发布健康提示并检查周边排放源。",
                      message_en=f"The forecast issued at {issue.isoformat()} expects PM2.5 of about {v_max:.0f} "
                                 f"µg/m³ (AQI {a}) at {where_en} in {h_max} h, at or above the alert threshold "
                                 f"{self.on:.0f}. Issue health advice early and check nearby emission sources.",
                      location=GeoPoint(lat=st.lat, lon=st.lon), district=st.district, dedup_key=key,
                      raised_at=issue.to_pydatetime(), evidence=evidence)
        return [alert_output(alert, source=SOURCE)]

    # -- heavy work: grids, forecasts, drift ---------------------------------------------------

    async def heavy(self) -> list[Output]:
        """Grid of the latest complete window, forecasts of the latest hour, the drift check."""
        out: list[Output] = []
        await self._recover_calibration_period()
        self._start_fits()  # also when no record arrives any more (the end of a backlog)
        if self.clock is None:
            return out
        mark = self.watermark()
        end = mark.floor(self.update)
        if self.latest is None or end > self.latest.valid_at:
            out += await self._grid_at(end)
        out += await self._issue_forecasts()
        out += self._drift_tasks()
        return out

    def drift_check_current(self) -> bool:
        """Has the drift check seen the newest complete window with every calibration fitted so far?"""
        mark = self.watermark()
        return (self.calibrated and mark is not None and self.drift_checked is not None
                and self.drift_checked >= (mark.floor(self.update), self.fits["calibration"]))

    def watermark(self) -> pd.Timestamp | None:
        """The newest time every live sensor has reached: Kafka partitions progress unevenly, so
        windows are complete only up to here (a sensor silent for 2 h no longer holds it back)."""
        if self.clock is None:
            return None
        # an hourly station has said all it will say about the hour until its next report is due
        lasts = [st.last_hour + pd.Timedelta(hours=1) - self.update for st in self.stations.values()
                 if st.last_hour is not None]
        lasts += [s.readings[-1][0] for s in self.lowcost.values() if s.readings]
        live = [t for t in lasts if t >= self.clock - pd.Timedelta(hours=2)]
        return min(live) if live else self.clock

    def _inputs(self, pollutant: str, at: pd.Timestamp) -> tuple[np.ndarray, ...]:
        lat, lon, val, sd = [], [], [], []
        for st in self.stations.values():
            recent = [h for h in st.hours if at - pd.Timedelta(minutes=90) < h <= at and pollutant in st.hours[h]]
            if recent:
                v = st.hours[max(recent)][pollutant]
                lat.append(st.lat), lon.append(st.lon), val.append(v), sd.append(max(0.03 * v, 1.0))
        if pollutant == "pm25":
            for s in self.lowcost.values():
                if s.calibration is None or not s.readings or s.task_id is not None:
                    continue  # uncalibrated or drifting sensors stay off the map
                t, raw, rh, temp = s.readings[-1]
                if not at - pd.Timedelta(minutes=30) < t <= at or not (np.isfinite(rh) and np.isfinite(temp)):
                    continue
                # a tree calibration is flat outside what it was fitted on: such readings stay off the map
                r = s.train_range
                if r is None or raw > 1.1 * r[0] or not (r[1] - 5 <= rh <= r[2] + 5) or temp < r[3] - 3:
                    continue
                v = float(s.calibration.apply(np.array([raw]), np.array([rh]), np.array([temp]))[0])
                lat.append(s.lat), lon.append(s.lon), val.append(v), sd.append(s.calibration.resid_sd)
        return np.array(lat), np.array(lon), np.array(val), np.array(sd)

    def _estimate(self, at: pd.Timestamp, wind: float | None) -> tuple[dict, dict, tuple]:
        values, std = {}, {}
        pts = (np.array([]), np.array([]))
        src = self.sources if not self.sources.empty else None
        for p in GRID_POLLUTANTS:
            lat, lon, val, sd = self._inputs(p, at)
            if len(val) < 3:
                continue
            try:
                est = estimate_grid(self.city, self.grid, lat, lon, val, sensor_sd=sd, sources=src, wind_from_deg=wind)
            except (ValueError, np.linalg.LinAlgError) as exc:
                logger.warning("grid skipped", extra={"fields": {"pollutant": p, "at": str(at), "why": str(exc)}})
                continue
            values[p], std[p] = est.value, est.std
            if p == "pm25":
                pts = (lat, lon)
        return values, std, pts

    async def _grid_at(self, at: pd.Timestamp) -> list[Output]:
        wd, _ = self.wind_at(at)
        values, std, pts = await asyncio.to_thread(self._estimate, at, wd)
        if not values:
            return []
        self.latest = LatestGrid(at, self.grid, values, std, pts)
        ncols = self.grid.shape[1]
        out = []
        async with self.pool.connection() as conn:
            for p in values:
                a = aqi_mod.iaqi(p, values[p], period="1h")
                cells = [GridCell(cell_id=f"r{i // ncols:03d}c{i % ncols:03d}", lat=round(float(self.grid.lat[i]), 6),
                                  lon=round(float(self.grid.lon[i]), 6), value=round(float(values[p][i]), 2),
                                  std=round(float(std[p][i]), 2), aqi=int(a[i]) if np.isfinite(a[i]) else None)
                         for i in range(len(self.grid.lat))]
                g = AirGrid(pollutant=p, valid_at=at.to_pydatetime(), cell_size_m=self.grid.cell_km * 1000,
                            method="regression_kriging", cells=cells)
                await repository.write_grid(conn, g, self.grid_districts)
                out.append(output(GRID_TOPIC, p, g, source=SOURCE, occurred_at=at.to_pydatetime(),
                                  event_id=stable_id("air:grid", p, at.isoformat())))
        return out

    def _drift_tasks(self) -> list[Output]:
        """A `calibrate_sensor` task for a low-cost sensor whose calibration no longer holds (once per sensor)."""
        from services.air_quality.domain.calibration import peer_drift

        if not self.calibrated or self.clock is None:
            return []
        mark = self.watermark().floor(self.update)
        if self.drift_checked is not None and (mark, self.fits["calibration"]) <= self.drift_checked:
            return []
        self.drift_checked = (mark, self.fits["calibration"])
        # A drift is a change of the sensor's gain against its reference that its peers do not share:
        # log(raw/ref) minus the same while the calibration was fitted, judged against the other sensors
        # over the last hours of comparable data (calibration.peer_drift). Humidity growth is common to all
        # sensors and cancels; the xgboost calibration is not used here because trees cannot extrapolate
        # beyond the fitted weather. Plume hours are left out: station hours a local plume lifted away
        # from the network, and every reading near an exceedance hour of any station.
        logs: dict[str, pd.Series] = {}
        disturbed = self._disturbed_hours()
        thr = float(self.thresholds["pm25"])
        exceed = pd.DatetimeIndex(sorted({h for st in self.stations.values() for h, v in st.hours.items()
                                          if v.get("pm25", 0.0) > thr}))
        margin = pd.Timedelta(hours=DRIFT_PLUME_MARGIN_H)
        since = max(self.calibration_until or mark, mark - pd.Timedelta(hours=24))
        for s in self.lowcost.values():
            if s.calibration is None or s.task_id is not None or s.train_log_ratio is None:
                continue
            p = self._pairs(s, since=since, until=mark, exclude=disturbed)
            if p is None:
                continue
            times, raw, _, _, ref = p
            ok = np.isfinite(ref) & (ref > 1.0) & (raw > 1.0)
            if len(exceed):
                i = exceed.searchsorted(times)
                after, before = exceed[np.minimum(i, len(exceed) - 1)], exceed[np.maximum(i - 1, 0)]
                ok &= np.asarray(np.minimum(abs(times - after), abs(times - before)) > margin)
            if ok.sum() < 12:
                continue
            # on the network's reporting step, so the peers' readings line up row by row
            e = pd.Series(np.log(raw[ok] / ref[ok]) - s.train_log_ratio, index=times[ok].floor(self.lowcost_step))
            logs[s.sensor_id] = e.groupby(level=0).mean()
        if len(logs) < 3:
            return []
        rows = max(int(pd.Timedelta(hours=2) / self.lowcost_step), 1)
        table = pd.DataFrame(logs).sort_index()
        verdict = peer_drift(table, blocks=2, block_rows=rows, z_drift=DRIFT_Z, z_hold=DRIFT_HOLD_Z)
        # the time the judged blocks span (plume hours left out, so at least their 2 x 2 h of rows)
        judged = table.index[table.notna().sum(axis=1) >= 3][-2 * rows:]
        span_h = ((judged[-1] - judged[0] + self.lowcost_step) / pd.Timedelta(hours=1)) if len(judged) else 0.0
        out = []
        for sid, row in verdict[verdict["flagged"].astype(bool)].iterrows():
            s = self.lowcost[sid]
            z, z_first = float(row["z_last"]), float(row["z_first"])
            t = logs[sid].index[-1]
            gain = float(np.exp(row["log_factor"]))
            ref_now = float(_hour_value(self.stations[s.reference], pd.DatetimeIndex([t]), "pm25")[0])
            bias = ref_now * (gain - 1) if np.isfinite(ref_now) else float("nan")
            s.task_id = stable_id("air:calibrate_sensor", s.sensor_id, t.isoformat())
            task = FieldTask(
                task_id=s.task_id, kind="calibrate_sensor", domain="air", priority="normal",
                title_zh=f"低成本传感器校准：{s.sensor_id}", title_en=f"Recalibrate low-cost sensor {s.sensor_id}",
                description_zh=f"{s.sensor_id} 相对参考站 {s.reference} 的响应较校准时变化为 {gain:.2f} 倍（扣除全网共同变化，"
                               f"已持续约 {span_h:.0f} 小时，当前约 {bias:+.1f} µg/m³），校准已不再有效。请到现场清洁或更换"
                               "传感器，并与参考站比对后重新标定；在此之前该传感器不参与网格估算。",
                description_en=f"{s.sensor_id}'s response to reference station {s.reference} is now {gain:.2f}× "
                               f"what it was at calibration, beyond what its peers share, over the last {span_h:.0f} "
                               f"hours (about {bias:+.1f} µg/m³ now); its calibration no longer holds. Clean or replace "
                               "the sensor on site and recalibrate it against the reference; until then it is "
                               "left out of the grid.",
                location=GeoPoint(lat=s.lat, lon=s.lon), district=s.district, required_skills=["air_inspection"],
                created_at=t.to_pydatetime(),
                evidence={"observed_at": t.isoformat(), "sensor_id": s.sensor_id, "reference_station": s.reference,
                          "bias_ugm3": round(bias, 2) if np.isfinite(bias) else None, "gain_change": round(gain, 3),
                          "peer_z": round(z, 2), "peer_z_first_block": round(z_first, 2),
                          "drift_span_h": round(span_h, 1),
                          "resid_sd_ugm3": round(s.calibration.resid_sd, 2), "readings": int(len(logs[sid])),
                          "n_train": s.calibration.n_train})
            out.append(task_output(task, source=SOURCE))
            key = f"air:calibration:{s.sensor_id}"
            alert = Alert(
                alert_id=stable_id(key, t.isoformat()), domain="air", kind="sensor_calibration", severity="minor",
                title_zh=f"传感器校准失效：{s.sensor_id}", title_en=f"Sensor calibration no longer holds: {s.sensor_id}",
                message_zh=f"{s.sensor_id} 与参考站 {s.reference} 持续偏差 {bias:+.1f} µg/m³，已退出网格估算并派发校准任务。",
                message_en=f"{s.sensor_id} differs from reference station {s.reference} by a persistent "
                           f"{bias:+.1f} µg/m³; it is left out of the grid and a calibration task was dispatched.",
                location=GeoPoint(lat=s.lat, lon=s.lon), district=s.district, dedup_key=key, raised_at=t.to_pydatetime(),
                evidence={**task.evidence, "task_id": s.task_id})
            out.append(alert_output(alert, source=SOURCE))
        return out

    # -- read side for the endpoints --------------------------------------------------------------

    def aqi_latest(self) -> list[dict[str, Any]]:
        return [{"station_id": st.station_id, "district": st.district, "lat": st.lat, "lon": st.lon,
                 "hourly": st.aqi_1h, "daily": st.aqi_24h,
                 "alert_active": f"air:aqi:{st.station_id}" in self.episodes}
                for st in sorted(self.stations.values(), key=lambda x: x.station_id) if st.aqi_1h]

    def map_path(self) -> Path:
        return self.out_dir / "grid_latest.png"
