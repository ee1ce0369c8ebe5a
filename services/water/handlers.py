"""Stream handler of the water service: leaks in the distribution network and flood risk in the drainage.

One :class:`WaterService` consumes the water observations (pressure, flow, tank level, smart meters,
drain and river levels, rain gauges), the weather observations (rain) and the weather nowcasts:

- SCADA readings (15 min) are collected per time step; a step is complete when a reading two steps
  later has arrived. Complete steps go, with one step before them (the water balance needs the
  tank level change), through `detection.scada_to_wide` / `add_water_balance` into the
  :class:`~services.water.domain.detection.LeakMonitor`. The monitor is trained off the event loop
  on leak-free history simulated from the city config plus the stream's own leak-free part (the
  first 40 %); steps that arrive while it trains are kept and replayed into it.
  A localised leak -> leaks row (upsert), a network map PNG, a `water:leak:<dma>` alert with the
  ranked candidate pipes and a `repair_pipe` field task. A known leak that grows -> an "updated" alert.
- Drain level and rain (5 min) per catchment -> `flood.assess_flood` on every complete step (cheap),
  with the newest rain nowcast of the catchment's district when the weather service sent one ->
  graded `water:flood:<catchment>` alerts with lead time, an `inspect_drain` task for orange and red,
  lowered or cleared only after `water_flood_clear_after` evaluations below (no flapping).
- Minimum night flow of the network's water balance per night (the utility's classic indicator)
  is kept for `GET /mnf` and put into leak alerts as context.

Everything is judged in simulated time (`observed_at`). Alert ids are `stable_id(dedup_key, episode
start)`; leak ids name the DMA and detection time; so a replayed batch gives the same ids and the
database upserts change nothing. Operations from config (`operations`: [{start, end, note}]) suppress
leak alarms while they run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from schemas.alerts import Alert, GeoPoint
from schemas.observations import Observation
from schemas.products import StationForecast
from schemas.tasks import FieldTask
from schemas.topics import OBSERVATION_TOPIC
from services.water import repository
from services.water.domain import detection, flood, mapping, simulate
from services.water.domain import tasks as water_tasks
from services.water.domain.mnf import night_window, nightly_minimum
from services.water.domain.network import WaterNetwork, load_network
from services.water.settings import WaterSettings
from shared.city import City, District, default_city
from shared.stream import Output, PoisonRecord, alert_output, open_alerts, stable_id, task_output

logger = logging.getLogger("cityops.water")
SOURCE = "water"
NOWCASTS = "cityops.weather.nowcast.v1"
TOPICS = [OBSERVATION_TOPIC["water"], OBSERVATION_TOPIC["weather"], NOWCASTS]
SCADA_KINDS = {"pressure": "pressure", "flow": "flow", "level": "level", "demand": "demand"}
SCADA_QUANTITY = {"pressure": "pressure", "flow": "flow", "level": "level", "demand": "demand"}
PREFIX_KIND = {"wp": "pressure", "wf": "flow", "wl": "level", "wm": "demand"}
GRADE_RANK = {"none": 0, "blue": 1, "yellow": 2, "orange": 3, "red": 4}
GRADE_SEVERITY = {"blue": "minor", "yellow": "minor", "orange": "major", "red": "critical"}
SCADA_STEP = pd.Timedelta(minutes=15)
NIGHT_HOURS = 3  # the minimum-night-flow window
DRAIN_STEP = pd.Timedelta(minutes=5)
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
# ...and the others are this far ahead in simulated time (both, so neither a stall nor a backlog looks like silence)
SILENT_STREAM_GAP = pd.Timedelta(hours=1)


def _ts(t: datetime | str) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def city_from_config(d: dict[str, Any] | None) -> City:
    if not d:
        return default_city()
    return City(d.get("name", "city"), float(d["centre_lat"]), float(d["centre_lon"]), tuple(
        District(x["district_id"], x["name_zh"], x["name_en"], tuple(x["bbox"]), x.get("land_use", "urban"),
                 bool(x.get("low_lying", False))) for x in d["districts"]))


def parse(events: list[dict]) -> tuple[list[Observation], list[StationForecast]]:
    """Observations and nowcasts of a batch, validated before any state changes (a poison batch replays cleanly)."""
    obs, casts = [], []
    for env in events:
        kind = str(env.get("type", ""))
        try:
            if kind in ("observation.water", "observation.weather"):
                obs.append(Observation.model_validate(env["payload"]))
            elif kind == "weather.nowcast":
                casts.append(StationForecast.model_validate(env["payload"]))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise PoisonRecord(f"not a valid {kind} payload: {err['loc']}: {err['msg']}") from None
    return obs, casts


# quantities that are legitimately flat for hours: a stopped pump or closed valve (flow), an idle property's
# meter (demand), a dry spell (rain)
FLAT_IS_NORMAL = {"flow", "demand", "rain"}


def good_values(obs: Observation) -> dict[str, float]:
    """Only QARTOD pass / not-evaluated values feed the models — except a reading of `FLAT_IS_NORMAL` flagged for
    nothing but a flat line. Without those, the water balance, the pumps' on/off state (what the leak monitor
    conditions on) and complete SCADA steps would be missing whenever a pump is off."""
    out = {}
    for q, v in obs.values.items():
        if not math.isfinite(v.value):
            continue
        flat_only = (q in FLAT_IS_NORMAL and v.qc in (3, 4)
                     and {k for k, f in v.qc_tests.items() if f in (3, 4)} == {"flat_line"})
        if v.qc in (1, 2) or flat_only:
            out[q] = v.value
    return out


@dataclass
class LeakRecord:
    leak_id: str
    alert_id: str
    dma: str
    detected_at: pd.Timestamp
    candidates: list[dict]
    flow_m3h: float | None
    map_png: str | None
    updates: int = 0
    dedup_key: str = ""


# rain (mm) in the last three days before a catchment's response is refitted on it
FLOOD_REFIT_MM = 1.0


@dataclass
class CatchmentState:
    c: flood.Catchment
    sensors: dict[str, str]
    model: flood.CatchmentModel
    level: dict[pd.Timestamp, float] = field(default_factory=dict)
    rain: dict[pd.Timestamp, float] = field(default_factory=dict)
    evaluated_until: pd.Timestamp | None = None
    fitted: bool = False
    refit_hour: pd.Timestamp | None = None
    # the catchment's past (level, rain) before the stream: for fitting only, never evaluated as warnings
    past_level: pd.Series | None = None
    past_rain: pd.Series | None = None
    grade: str = "none"
    episode_start: pd.Timestamp | None = None
    alert_id: str | None = None
    below: int = 0
    task_sent: bool = False
    latest: flood.FloodRisk | None = None
    rain_wall: float = field(default_factory=time.monotonic)
    level_wall: float = 0.0


class WaterService:
    """Per-sensor state of the water domain and the handler the StreamProcessor calls."""

    def __init__(self, settings: WaterSettings, pool, *, config: dict[str, Any] | None = None):
        self.s = settings
        self.pool = pool
        self.cfg = config if config is not None else settings.load_city_config()
        self.wcfg: dict[str, Any] = self.cfg.get("domains", {}).get("water", {})
        self.city = city_from_config(self.cfg.get("city"))
        self.net: WaterNetwork = load_network(simulate.network_path())
        self.lat_lon = simulate.node_lat_lon(self.net, self.city)
        self.sensor_elements: dict[str, dict[str, str]] = dict(self.wcfg.get("sensors", {}))
        lfu = self.wcfg.get("training", {}).get("leak_free_until")
        self.train_until: pd.Timestamp | None = _ts(lfu) if lfu else None
        self.operations = [(_ts(o["start"]), _ts(o["end"]), o.get("note", "")) for o in self.wcfg.get("operations", [])]
        # SCADA: (time -> {"kind:element": value}) waiting to be complete; the training part in long form
        self.pending: dict[pd.Timestamp, dict[str, float]] = {}
        self.train_long: list[tuple[pd.Timestamp, str, str, float]] = []
        self.backlog: list[tuple[pd.Timestamp, dict[str, float]]] = []
        self.prev_row: tuple[pd.Timestamp, dict[str, float]] | None = None
        self.latest_scada: pd.Timestamp | None = None
        self.sensor_last: dict[str, pd.Timestamp] = {}
        self.scada_sensors = {sid for sid, v in self.sensor_elements.items() if v.get("kind") in SCADA_KINDS}
        self.fed_until: pd.Timestamp | None = None
        self.scada_anchor: pd.Timestamp | None = None  # the SCADA steps' grid: this time + k x SCADA_STEP
        self.balance_blind = False  # the water balance could not be formed at the last step fed
        self.balance_blind_steps = 0
        self.late = 0
        self.sensor_wall: dict[str, float] = {}
        self.last_arrival_wall = 0.0
        self.handled_wall = 0.0  # when the last batch was done with: time spent busy is not time the stream was quiet
        self.first_arrival_wall = 0.0
        self.last_feed_wall = time.monotonic()
        self.monitor: detection.LeakMonitor | None = None
        self.fitting: asyncio.Task | None = None
        self.fit_error: str | None = None
        self.history: pd.DataFrame | None = None
        self.leaks: dict[str, LeakRecord] = {}
        self.leak_by_monitor_id: dict[str, str] = {}
        # leak alerts open at a restart (restore_open_alerts): a confirmed leak's record waits in `leaks` for the
        # refitted monitor to alarm on it again (restored_leaks: its leak ids); an alarm not yet localised waits here
        # (dedup key -> alert id, detected_at) until the monitor alarms again in its DMA or a localisation window of
        # stream time has passed without that
        self.restored_leaks: set[str] = set()
        self.restored_alarms: dict[str, tuple[str, pd.Timestamp]] = {}
        self.restored_since: pd.Timestamp | None = None
        self.announced: dict[pd.Timestamp, tuple[str, str]] = {}
        self.night_flow: dict[str, dict[str, float]] = {}
        self.balance: list[tuple[pd.Timestamp, float]] = []
        # drainage
        self.catchments: dict[str, CatchmentState] = {}
        self.sensor_catchment: dict[str, tuple[str, str]] = {}
        for c in self.wcfg.get("catchments", []):
            cat = flood.Catchment(c["catchment_id"], c["name_zh"], c["name_en"], c.get("district"),
                                  float(c["base_level_m"]), tuple(float(x) for x in c["thresholds_m"]))
            st = CatchmentState(cat, dict(c.get("sensors", {})), flood.CatchmentModel(cat, 0.02, 0.2))
            self.catchments[cat.catchment_id] = st
            for role, sid in st.sensors.items():
                self.sensor_catchment[sid] = (cat.catchment_id, role)
        self.district_rain: dict[str, dict[pd.Timestamp, float]] = {}
        self.station_district: dict[str, str] = {}
        self.nowcast: dict[str, StationForecast] = {}

    # ---- start-up --------------------------------------------------------------------------
    async def pretrain(self) -> None:
        """Leak-free history from the city config, simulated off the event loop (a city has years of it)."""
        if not self.wcfg.get("sensors") or self.s.water_history_days <= 0 or "start" not in self.cfg:
            return
        days = float(self.s.water_history_days)
        start = _ts(self.cfg["start"]) - pd.Timedelta(days=days)
        seed = int(self.wcfg.get("seed", self.cfg.get("seed", 0))) + 1000
        if self.catchments:
            drains = await asyncio.to_thread(simulate.drainage_history, self.wcfg, start, days, seed)
            self._load_drainage_history(drains)
        hist = await asyncio.to_thread(simulate.leak_free_history, self.wcfg, start, days, seed)
        hist["sensor_id"] = [self.sensor_elements[s]["element"] for s in hist["sensor_id"]]
        self.history = hist
        logger.info("leak-free history ready", extra={"fields": {"days": days, "rows": len(hist)}})

    def _load_drainage_history(self, drains: pd.DataFrame) -> None:
        """Past drain levels and rain, kept apart from the live readings: the flood models fit on them."""
        for sid, g in drains.groupby("sensor_id"):
            if sid not in self.sensor_catchment:
                continue
            cid, role = self.sensor_catchment[sid]
            st = self.catchments[cid]
            series = pd.Series(g["value"].astype(float).to_numpy(), index=pd.DatetimeIndex(g["time"])).sort_index()
            if role == "drain_level":
                st.past_level = series
            elif role == "rain":
                st.past_rain = series
        logger.info("drainage history ready", extra={"fields": {"rows": len(drains)}})

    @staticmethod
    def _with_past(past: pd.Series | None, live: dict[pd.Timestamp, float], until: pd.Timestamp) -> pd.Series:
        s = pd.Series({k: v for k, v in live.items() if k <= until}, dtype=float)
        if past is not None and len(past):
            s = pd.concat([past[past.index < (s.index.min() if len(s) else until)], s])
        return s.sort_index()

    # ---- the handler ----------------------------------------------------------------------
    async def handle(self, events: list[dict]) -> list[Output]:
        obs, casts = parse(events)
        for f in casts:
            if "rain" in f.variable.lower() or "precip" in f.variable.lower():
                prev = self.nowcast.get(f.station_id)
                if prev is None or prev.issued_at <= f.issued_at:
                    self.nowcast[f.station_id] = f
        touched: set[str] = set()
        for o in obs:
            vals = good_values(o)
            t = _ts(o.observed_at)
            if o.domain == "weather":
                if o.district:
                    self.station_district[o.sensor_id] = o.district
                    if "rain" in vals:
                        self.district_rain.setdefault(o.district, {})[t] = vals["rain"]
                continue
            if o.sensor_id in self.sensor_catchment:
                cid, role = self.sensor_catchment[o.sensor_id]
                st = self.catchments[cid]
                if role == "drain_level" and "water_level" in vals:
                    st.level[t] = vals["water_level"]
                    st.level_wall = time.monotonic()
                elif role == "rain" and "rain" in vals:
                    st.rain[t] = vals["rain"]
                    st.rain_wall = time.monotonic()
                touched.add(cid)
                continue
            kind_el = self._scada_key(o)
            if kind_el is None:
                continue
            kind, element = kind_el
            v = vals.get(SCADA_QUANTITY[kind])
            if v is None:
                continue
            # on the SCADA grid (anchored at the first step seen): a reading a minute late belongs to its step,
            # where keyed as it came it made a step of its own that the 15-min reindexing then dropped
            self.scada_anchor = t if self.scada_anchor is None else self.scada_anchor
            t = self.scada_anchor + round((t - self.scada_anchor) / SCADA_STEP) * SCADA_STEP
            if self.fed_until is not None and t <= self.fed_until:
                self.late += 1  # its step went into the models already; a replayed step would count twice
                continue
            self.pending.setdefault(t, {})[f"{kind}:{element}"] = v
            now = time.monotonic()
            self.sensor_wall[o.sensor_id] = self.last_arrival_wall = now
            self.first_arrival_wall = self.first_arrival_wall or now
            self.sensor_last[o.sensor_id] = max(t, self.sensor_last.get(o.sensor_id, t))
            self.latest_scada = t if self.latest_scada is None or t > self.latest_scada else self.latest_scada
        out: list[Output] = []
        out += await self._scada_steps()
        for cid in sorted(touched):
            out += await self._flood(self.catchments[cid])
        self.handled_wall = time.monotonic()
        return out

    def pending_work(self) -> int:
        """SCADA steps not yet in the leak model (waiting for sensors, or for the model to be trained) and alarms
        whose localisation window is still open."""
        waiting_fit = 1 if self.fitting is not None and not self.fitting.done() else 0
        alarms = len(self.monitor.pending) if self.monitor is not None else 0
        return len(self.pending) + len(self.backlog) + waiting_fit + alarms

    def _scada_key(self, o: Observation) -> tuple[str, str] | None:
        meta = self.sensor_elements.get(o.sensor_id)
        if meta:
            return meta["kind"], meta["element"]
        if self.sensor_elements:
            return None  # the config lists this city's sensors; others on the topic are not ours
        kind = SCADA_KINDS.get(o.kind) or PREFIX_KIND.get(o.sensor_id.split("-", 1)[0])
        if kind is None or "-" not in o.sensor_id:
            return None
        element = o.sensor_id.split("-", 1)[1]
        ok = self.net.has_link(element) if kind == "flow" else self.net.has_node(element)
        return (kind, element) if ok else None

    # ---- leaks -----------------------------------------------------------------------------
    async def _scada_steps(self, now: float | None = None) -> list[Output]:
        """Steps every SCADA sensor has reported (a sensor's readings share a partition, so they come in order),
        or that a silent sensor no longer holds up. Readings for a step already fed are late. Silence is judged
        against the last arrival, or against `now` once the whole stream has gone quiet (see `tick`)."""
        if self.latest_scada is None:
            return []
        expected = self.scada_sensors or set(self.sensor_last)
        # a sensor is silent when the others kept reporting for `water_silent_sensor_s` wall seconds without it
        # and ran an hour of simulated time ahead of it
        # (counted from arrivals, so a stalled consumer or a partition that runs behind in a backlog is not silence)
        silent_after = self.s.water_silent_sensor_s
        gap = SILENT_STREAM_GAP
        waiting = [self.sensor_last.get(sid) for sid in expected
                   if (now or self.last_arrival_wall) - self.sensor_wall.get(sid, self.first_arrival_wall) < silent_after
                   or self.latest_scada - self.sensor_last.get(sid, _EPOCH) < gap]
        ready = self.latest_scada if not waiting else min((t or _EPOCH) for t in waiting)
        done = sorted(t for t in self.pending if t <= ready)
        rows = [(t, self.pending.pop(t)) for t in done]
        if rows:
            self.fed_until = rows[-1][0]
        if self.train_until is None and rows:
            self.train_until = rows[0][0] + pd.Timedelta(hours=self.s.water_train_hours)
        out: list[Output] = []
        for t, row in rows:
            if t <= self.train_until:
                self.train_long += [(t, key.split(":", 1)[1], key.split(":", 1)[0], v) for key, v in row.items()]
            else:
                self.backlog.append((t, row))
        if self.monitor is None and self.fitting is None and self.backlog:
            self.fitting = asyncio.create_task(self._fit(), name="water-fit")
        if self.monitor is not None and self.backlog:
            out += await self._feed()
        return out

    async def _fit(self) -> None:
        try:
            for _ in range(600):  # the history simulation started with the service; wait for it briefly
                if self.history is not None or not self.wcfg.get("sensors") or self.s.water_history_days <= 0:
                    break
                await asyncio.sleep(0.1)
            self.monitor = await asyncio.to_thread(self._build_monitor)
            logger.info("leak monitor trained", extra={"fields": {"train_until": str(self.train_until)}})
        except ValueError as exc:
            self.fit_error = str(exc)
            logger.error("leak monitor not trained: %s", exc)

    def _build_monitor(self) -> detection.LeakMonitor:
        own = pd.DataFrame(self.train_long, columns=["time", "sensor_id", "kind", "value"])
        frames = [f for f in (self.history, own) if f is not None and len(f)]
        if not frames:
            raise ValueError("no leak-free SCADA to learn from: set CITYOPS_CITY_CONFIG or send the training part")
        scada = pd.concat(frames, ignore_index=True)
        wide, sensors, step = detection.scada_to_wide(scada)
        sensors = detection.add_water_balance(wide, sensors, self.net, step)
        wide = wide.dropna(how="all")
        options = dict(self.wcfg.get("monitor", {}))
        options["suppress"] = [(a, b) for a, b, _ in self.operations]
        return detection.build_monitor(self.net, wide, sensors, step, cache_dir=self.s.water_state_dir, **options)

    async def _feed(self) -> list[Output]:
        """Complete SCADA steps into the monitor, with one earlier step for the water balance."""
        rows, self.backlog = self.backlog, []
        self.last_feed_wall = time.monotonic()
        ctx = [self.prev_row] if self.prev_row else []
        long = [(t, key.split(":", 1)[1], key.split(":", 1)[0], v) for t, r in ctx + rows for key, v in r.items()]
        scada = pd.DataFrame(long, columns=["time", "sensor_id", "kind", "value"])
        wide, sensors, step = detection.scada_to_wide(scada)
        if len(wide) > 1:
            step = SCADA_STEP
            wide = wide.reindex(pd.date_range(wide.index[0], wide.index[-1], freq=step))
        # every meter the monitor was trained with, silent ones as gaps: a supply meter or tank level missing from
        # the batch made the balance vanish (no alarm could fire) or come out without that tank's storage change
        known = [s for s in self.monitor.model.sensors if s.kind != "balance"]
        for s_ in known:
            if s_.sensor_id not in wide:
                wide[s_.sensor_id] = np.nan
        detection.add_water_balance(wide, known or sensors, self.net, SCADA_STEP)
        self._watch_balance(wide, known)
        if ctx:
            wide = wide.loc[wide.index > ctx[0][0]]
        self.prev_row = rows[-1]
        if "balance:network" in wide:
            self.balance += [(t, float(v)) for t, v in wide["balance:network"].items() if np.isfinite(v)]
            self._night_flow()
        events = self.monitor.update(wide)
        out: list[Output] = []
        for alarm in self.monitor.take_alarms():
            # an alarm is an alert at once; the candidates follow when the localisation window is full (in this
            # same call when a backlog came in at once: the alarm still goes first, so a replay says the same)
            if _ts(alarm.detected_at) not in self.announced:
                out += self._leak_alarm(alarm)
        for ev in events:
            out += await self._leak(ev) if ev.confirmed else self._leak_withdrawn(ev)
        if len(wide):
            out += self._expire_restored_alarms(wide.index[-1])
        return out

    def _watch_balance(self, wide: pd.DataFrame, known: list) -> None:
        """Say when the water balance cannot be formed (a supply meter or tank level silent): the monitor's
        leak statistic is the balance, so leak detection is blind until the meter reports again."""
        if "balance:network" not in wide:
            return
        gap = ~np.isfinite(wide["balance:network"].to_numpy(dtype=float))
        if gap.any() and not self.balance_blind:
            parts = [s.sensor_id for s in known if s.kind in ("flow", "level") and s.sensor_id in wide
                     and not np.isfinite(wide[s.sensor_id].to_numpy(dtype=float)).all()]
            logger.warning("water balance unavailable from %s (%s silent): leak detection is blind until they "
                           "report again", wide.index[np.argmax(gap)], ", ".join(parts) or "a supply meter",
                           extra={"fields": {"silent": parts, "since": str(wide.index[np.argmax(gap)])}})
        elif not gap.any() and self.balance_blind:
            logger.info("water balance available again: leak detection resumed")
        self.balance_blind = bool(gap[-1]) if len(gap) else self.balance_blind
        self.balance_blind_steps += int(gap.sum())

    async def tick(self) -> list[Output]:
        """Localise alarms still waiting for their window once the SCADA stream has been idle for a while
        (the end of a replay, or a gateway outage): a dispatcher gets candidates now rather than never."""
        out: list[Output] = []
        # quiet = listened for `water_idle_flush_s` and heard nothing; a long batch (a model fit, a stalled loop)
        # is not quiet: the records that came meanwhile are still to be polled
        quiet = time.monotonic() - max(self.last_arrival_wall, self.handled_wall)
        if self.pending and quiet >= self.s.water_idle_flush_s:
            out += await self._scada_steps(now=time.monotonic())  # a sensor that fell silent with the rest
        idle = time.monotonic() - self.last_feed_wall
        if (self.monitor is None or not self.monitor.pending or idle < self.s.water_idle_flush_s
                or self.pending or self.backlog):
            return out
        for ev in self.monitor.flush():
            out += await self._leak(ev) if ev.confirmed else self._leak_withdrawn(ev)
        return out

    def _episode_dma(self, ev: detection.LeakEvent) -> str:
        dmas = sorted(self.net.dmas())
        if ev.dma in dmas:
            return ev.dma
        return dmas[0] if len(dmas) == 1 else "network"

    def _leak_alarm(self, ev: detection.LeakEvent) -> list[Output]:
        """The alarm, at once, with the candidates the alarm's own hours point to (a notification service keeps
        an alert's first version; the refined candidates follow in an update, the leaks table and the repair task).

        After a restart the refitted monitor alarms again on a leak whose alert is still open: a confirmed leak of
        the DMA takes the alarm up silently (its localisation updates that leak), an alarm open at the crash goes
        on under its own id (an update, not a second alert)."""
        t = _ts(ev.detected_at)
        dma = self._episode_dma(ev)
        dedup = f"water:leak:{dma}"
        waiting = [lid for lid in sorted(self.restored_leaks) if self.leaks[lid].dedup_key == dedup]
        if waiting:
            self.announced[t] = (dedup, self.leaks[waiting[0]].alert_id)
            logger.info("leak alarm after a restart is the open leak %s again", waiting[0],
                        extra={"fields": {"leak_id": waiting[0], "detected_at": t.isoformat()}})
            return []
        resumed = self.restored_alarms.pop(dedup, None)
        alert_id = resumed[0] if resumed else stable_id(dedup, t.isoformat())
        self.announced[t] = (dedup, alert_id)
        cands = _candidate_dicts(ev)
        flow = float(ev.flow_m3h) if ev.flow_m3h == ev.flow_m3h else None
        evidence = {"observed_at": t.isoformat(), "detected_at": t.isoformat(), "statistic": ev.statistic,
                    "onset_at": _ts(ev.onset_at).isoformat() if ev.onset_at is not None else None, "dma": dma,
                    "candidates": cands, "top_pipe": ev.pipe_id or None,
                    "estimated_flow_m3h": round(flow, 2) if flow is not None else None,
                    "localisation": "provisional: from the hours before the alarm; refined candidates follow in an update",
                    "min_night_flow": dict(list(self.night_flow.items())[-2:])}
        if ev.pipe_id:
            lat, lon = self._pipe_lat_lon(ev.pipe_id)
            near_zh = f"，初步怀疑管段 {'、'.join(c['pipe_id'] for c in cands[:3])} 附近"
            near_en = f"; first candidates: pipes {', '.join(c['pipe_id'] for c in cands[:3])}"
        else:
            lat, lon = self.city.centre_lat, self.city.centre_lon
            near_zh = near_en = ""
        alert = Alert(alert_id=alert_id, domain="water", kind="leak", severity="major",
                      title_zh=f"管网疑似漏损：{dma}", title_en=f"Suspected water leak in {dma}",
                      message_zh=f"【漏损告警】{t:%m-%d %H:%M} 起{dma}供水量或压力异常（依据：{ev.statistic}）{near_zh}，"
                                 "正在精确定位，请做好听漏准备。",
                      message_en=f"[Leak alert] {dma}: supply or pressure abnormal from {t:%m-%d %H:%M} (evidence: "
                                 f"{ev.statistic}){near_en}; locating more precisely - get a leak survey crew ready.",
                      location=GeoPoint(lat=lat, lon=lon), district=self.city.district_of(lat, lon) if ev.pipe_id else None,
                      dedup_key=dedup, raised_at=t, evidence=evidence, status="updated" if resumed else "raised")
        return [alert_output(alert, source=SOURCE)]

    def _leak_dedup(self, ev: detection.LeakEvent) -> str:
        """The dedup key the alarm went out under (its DMA then), or the one it would have had."""
        announced = self.announced.get(_ts(ev.detected_at))
        return announced[0] if announced else f"water:leak:{self._episode_dma(ev)}"

    def _alarm_id(self, ev: detection.LeakEvent, dedup: str) -> str:
        """The id the alarm went out under (_leak_alarm), or the one it would have had."""
        announced = self.announced.get(_ts(ev.detected_at))
        return announced[1] if announced else stable_id(dedup, _ts(ev.detected_at).isoformat())

    def _leak_withdrawn(self, ev: detection.LeakEvent) -> list[Output]:
        """The alarm is cleared: over its localisation window the water balance did not rise (no repair task)."""
        t = _ts(ev.localised_at or ev.detected_at)
        dedup = self._leak_dedup(ev)
        alert_id = self._alarm_id(ev, dedup)
        limit = self.monitor.confirm_threshold_m3h if self.monitor else None
        rise = float(ev.flow_m3h)
        open_leaks = [rec.leak_id for rec in self.leaks.values() if rec.dedup_key == dedup]
        if open_leaks:
            # a "cleared" ends every open alert of its dedup key (one DMA's leak condition): with a confirmed leak
            # under the same key it would resolve that leak's alert and stop its escalation. The leak is not over.
            logger.info("leak alarm withdrawn; its alert is left to the confirmed leak it shares a key with",
                        extra={"fields": {"alert_id": alert_id, "balance_rise_m3h": rise, "open_leaks": open_leaks}})
            return []
        dma = self._episode_dma(ev)
        evidence = {"observed_at": t.isoformat(), "detected_at": _ts(ev.detected_at).isoformat(),
                    "statistic": ev.statistic, "dma": dma, "balance_rise_m3h": round(rise, 2),
                    "confirm_threshold_m3h": round(limit, 2) if limit is not None else None}
        alert = Alert(alert_id=alert_id, domain="water", kind="leak", severity="info", status="cleared",
                      title_zh=f"漏损告警解除：{dma}", title_en=f"Leak alarm withdrawn: {dma}",
                      message_zh=f"{_ts(ev.detected_at):%m-%d %H:%M} 的漏损告警解除：此后供水量平衡仅变化 {rise:.1f} "
                                 f"立方米/小时，低于日常波动 {limit or 0:.1f} 立方米/小时，判断为数据漂移而非漏损，无需派单。",
                      message_en=f"The leak alarm of {_ts(ev.detected_at):%m-%d %H:%M} is withdrawn: the water balance "
                                 f"moved by {rise:.1f} m3/h since, less than its day-to-day spread of {limit or 0:.1f} "
                                 "m3/h - a drift, not a leak. No crew needed.",
                      location=GeoPoint(lat=self.city.centre_lat, lon=self.city.centre_lon), district=None,
                      dedup_key=dedup, raised_at=t, evidence=evidence)
        logger.info("leak alarm withdrawn", extra={"fields": {"alert_id": alert_id, "balance_rise_m3h": rise}})
        return [alert_output(alert, source=SOURCE)]

    def _night_flow(self) -> None:
        """Nightly minimum of the network balance in its quietest 3 hours of the day (mnf.night_window, found on
        the balance itself: the city's night, whatever the clock's time zone), for GET /mnf."""
        if not self.balance:
            return
        cutoff = self.balance[-1][0] - pd.Timedelta(days=3)
        self.balance = [(t, v) for t, v in self.balance if t >= cutoff]
        s = pd.Series({t: v for t, v in self.balance})
        if s.index[-1] - s.index[0] < pd.Timedelta(days=1):
            return  # not a whole day yet: where the night lies is not known
        h0 = night_window(s, NIGHT_HOURS)
        for end, v in nightly_minimum(s, h0, NIGHT_HOURS).items():
            start = end - pd.Timedelta(hours=NIGHT_HOURS)
            self.night_flow[start.date().isoformat()] = {"min_night_flow_m3h": round(float(v), 2), "dma": "all",
                                                         "window": f"{start:%H:%M}-{end:%H:%M}"}

    def _pipe_lat_lon(self, pipe: str) -> tuple[float, float]:
        a, b = self.net.link_nodes[pipe]
        (la, oa), (lb, ob) = self.lat_lon[a], self.lat_lon[b]
        return (la + lb) / 2, (oa + ob) / 2

    async def _leak(self, ev: detection.LeakEvent) -> list[Output]:
        t = _ts(ev.localised_at or ev.detected_at)
        known = self.leak_by_monitor_id.get(ev.leak_id)
        announced = self.announced.get(_ts(ev.detected_at))
        dedup = self._leak_dedup(ev)
        if known is None:
            # a leak open at a restart that the refitted monitor found again: its update, not a second leak and crew
            restored_ids = {self.leaks[lid].alert_id for lid in self.restored_leaks}
            known = self._restored_match(ev, dedup)
            if known is not None:
                self.restored_leaks.discard(known)
            elif announced and announced[1] in restored_ids:
                # its alarm was taken for a restored leak, but it lies elsewhere: a leak of its own, alarmed now
                announced = None
                self.announced[_ts(ev.detected_at)] = (dedup, stable_id(dedup, _ts(ev.detected_at).isoformat()))
        leak_id = known or f"leak-{ev.dma}-{_ts(ev.detected_at):%Y%m%dT%H%M}"
        alert_id = self.leaks[known].alert_id if known else self._alarm_id(ev, dedup)
        self.leak_by_monitor_id[ev.leak_id] = leak_id
        map_path = self.s.water_state_dir / "maps" / f"{leak_id}.png"
        map_path.parent.mkdir(parents=True, exist_ok=True)
        sensor_nodes = [k.split(":", 1)[1] for k in (self.monitor.model.targets if self.monitor else [])
                        if k.startswith("pressure:")]
        if ev.candidates:
            await asyncio.to_thread(mapping.network_map_png, self.net, ev.candidates, map_path,
                                    sensor_nodes=sensor_nodes, title=f"{leak_id}: candidate pipes (1 = most likely)")
        cands = _candidate_dicts(ev)
        flow = float(ev.flow_m3h) if ev.flow_m3h == ev.flow_m3h else None
        rec = LeakRecord(leak_id, alert_id, ev.dma, _ts(ev.detected_at), cands, flow,
                         str(map_path) if ev.candidates else None, ev.updates, dedup)
        self.leaks[leak_id] = rec
        kind = "incipient" if ev.onset_at is not None and _ts(ev.detected_at) - _ts(ev.onset_at) > pd.Timedelta(hours=3) \
            else "burst"
        async with self.pool.connection() as conn:
            await repository.upsert_leak(conn, leak_id=leak_id, detected_at=rec.detected_at,
                                         pipe_id=ev.pipe_id, candidates=cands, flow_m3h=flow, dma=ev.dma, kind=kind)
        text = water_tasks.leak_alert_text(ev)
        lat, lon = self._pipe_lat_lon(ev.pipe_id) if ev.pipe_id else (self.city.centre_lat, self.city.centre_lon)
        district = self.city.district_of(lat, lon)
        night = list(self.night_flow.items())[-2:]
        evidence = {"observed_at": t.isoformat(), "detected_at": rec.detected_at.isoformat(),
                    "onset_at": _ts(ev.onset_at).isoformat() if ev.onset_at is not None else None,
                    "leak_id": leak_id, "statistic": ev.statistic, "dma": ev.dma, "leak_kind": kind,
                    "estimated_flow_m3h": round(flow, 2) if flow is not None else None,
                    "candidates": cands, "top_pipe": ev.pipe_id, "map_png": rec.map_png, "updates": ev.updates,
                    "min_night_flow": dict(night)}
        sev = {"high": "critical", "medium": "major", "low": "minor"}[water_tasks.leak_priority(flow or 0.0)]
        alert = Alert(alert_id=alert_id, domain="water", kind="leak", severity=sev,
                      status="updated" if known or announced else "raised",
                      title_zh=f"管网漏损：{ev.dma} 估计 {flow or 0:.0f} 立方米/小时",
                      title_en=f"Water leak in {ev.dma}: about {flow or 0:.0f} m3/h",
                      message_zh=text["zh"] + " 请安排听漏并核对候选管段。",
                      message_en=text["en"] + " Send a leak survey crew to the candidate pipes.",
                      location=GeoPoint(lat=lat, lon=lon), district=district, dedup_key=dedup, raised_at=t,
                      evidence=evidence)
        out = [alert_output(alert, source=SOURCE)]
        if not known and ev.candidates:
            rt = water_tasks.repair_task(ev, self.net, map_png=rec.map_png)
            task = FieldTask(task_id=stable_id("task", alert_id), kind="repair_pipe", domain="water",
                             priority={"high": "high", "medium": "normal", "low": "low"}[rt.priority],
                             title_zh=rt.title_zh, title_en=rt.title_en, description_zh=rt.body_zh,
                             description_en=rt.body_en, location=GeoPoint(lat=lat, lon=lon), district=district,
                             required_skills=["water_repair"], due_at=t + pd.Timedelta(hours=4),
                             related_alert_id=alert_id, created_at=t,
                             evidence={"leak_id": leak_id, "pipe_ids": rt.pipe_ids, "estimated_flow_m3h":
                                       rt.estimated_flow_m3h, "map_png": rec.map_png, "observed_at": t.isoformat()})
            out.append(task_output(task, source=SOURCE))
        logger.info("leak", extra={"fields": {"leak_id": leak_id, "pipe": ev.pipe_id, "updated": bool(known)}})
        return out

    def _take_up_leaks(self, rows: list[dict[str, Any]]) -> int:
        """Open leak alerts after a restart (see _leak_alarm): a confirmed leak (it has a leak id: candidates went
        out, a crew was sent) becomes a leak record again, an alarm not yet localised waits for the monitor."""
        n = 0
        for r in rows:
            ev, dedup = r["evidence"] or {}, r["dedup_key"]
            detected = _ts(ev.get("detected_at") or r["raised_at"])
            if ev.get("leak_id"):
                flow = ev.get("estimated_flow_m3h")
                self.leaks[ev["leak_id"]] = LeakRecord(
                    ev["leak_id"], r["alert_id"], str(ev.get("dma") or dedup.rsplit(":", 1)[-1]), detected,
                    list(ev.get("candidates") or []), float(flow) if flow is not None else None, ev.get("map_png"),
                    int(ev.get("updates") or 0), dedup)
                self.restored_leaks.add(ev["leak_id"])
            else:
                self.restored_alarms[dedup] = (r["alert_id"], detected)
            n += 1
        return n

    def _restored_match(self, ev: detection.LeakEvent, dedup: str) -> str | None:
        """The restored leak (see restore_open_alerts) this localised leak is, if any: of its key and, where both have
        pipes, within the monitor's merge distance of one of its first candidates (the key is a whole DMA, often the
        whole network: a new leak kilometres away is not the old one)."""
        limit = self.monitor.merge_distance_m if self.monitor else 1000.0
        for lid in sorted(self.restored_leaks):
            rec = self.leaks[lid]
            if rec.dedup_key != dedup:
                continue
            pipes = [c.get("pipe_id") for c in rec.candidates[:3] if c.get("pipe_id") in self.net.link_nodes]
            if not ev.pipe_id or not pipes or min(self.net.pipe_distance_m(ev.pipe_id, p) for p in pipes) <= limit:
                return lid
        return None

    def _expire_restored_alarms(self, now: pd.Timestamp) -> list[Output]:
        """What was taken up at a restart waits one localisation window of stream time for the refitted monitor. Then
        a confirmed leak no longer takes new alarms of its key as its own (it stays open until a dispatcher resolves
        it), and an alarm not alarmed on again is withdrawn (its window closed unseen, and the leak statistic has not
        crossed again since) - unless a confirmed leak is open under its key, whose alert a "cleared" would end."""
        if not self.restored_alarms and not self.restored_leaks:
            return []
        if self.restored_since is None:
            self.restored_since = now
            return []
        window = self.monitor.step * self.monitor.localise_steps if self.monitor else pd.Timedelta(hours=24)
        if now - self.restored_since < window:
            return []
        out: list[Output] = []
        self.restored_leaks.clear()
        for dedup, (alert_id, detected) in sorted(self.restored_alarms.items()):
            if any(rec.dedup_key == dedup for rec in self.leaks.values()):
                logger.info("leak alarm open at the restart left to the confirmed leak it shares a key with",
                            extra={"fields": {"alert_id": alert_id}})
                continue
            dma = dedup.rsplit(":", 1)[-1]
            hours = window / pd.Timedelta(hours=1)
            alert = Alert(alert_id=alert_id, domain="water", kind="leak", severity="info", status="cleared",
                          title_zh=f"漏损告警解除：{dma}", title_en=f"Leak alarm withdrawn: {dma}",
                          message_zh=f"{detected:%m-%d %H:%M} 的漏损告警解除：服务重启后连续 {hours:.0f} 小时的数据"
                                     "未再出现漏损信号，无需派单。",
                          message_en=f"The leak alarm of {detected:%m-%d %H:%M} is withdrawn: {hours:.0f} h of data "
                                     "since the service restarted show no leak signal. No crew needed.",
                          location=GeoPoint(lat=self.city.centre_lat, lon=self.city.centre_lon), district=None,
                          dedup_key=dedup, raised_at=now, evidence={"observed_at": now.isoformat(),
                                                                    "detected_at": detected.isoformat(), "dma": dma,
                                                                    "reason": "not seen again after a restart"})
            out.append(alert_output(alert, source=SOURCE))
            logger.info("leak alarm open at the restart withdrawn", extra={"fields": {"alert_id": alert_id}})
        self.restored_alarms.clear()
        return out

    # ---- flood -----------------------------------------------------------------------------
    async def restore_open_alerts(self) -> int:
        """After a restart: take up the leak alerts and flood warnings this service raised that are still open.

        A catchment's warning episode lives in memory and the stream resumes from its committed offsets, so
        without this every catchment still over its blue level raised a new warning under a new id, and one at
        orange or red sent its drain crew a second task; one that had fallen back was never lifted. Likewise a
        leak open at the crash was alarmed again by the refitted monitor under a new id, with a second crew.
        The open alerts are read from the alerts table the notification service keeps. Returns how many."""
        n = self._take_up_leaks(await open_alerts(self.pool, "water", ("leak",), newest_per_key=False))
        if n:
            logger.info("took up %d open leak alert(s) after a restart", n)
        if not self.catchments:
            return n
        rows = await open_alerts(self.pool, "water", ("flood_risk",))
        floods = 0
        for r in rows:
            alert_id, level, ev = r["alert_id"], r["level"], r["evidence"]
            st = self.catchments.get(str(ev.get("catchment_id")))
            if st is None or st.alert_id is not None or level not in flood.GRADES:
                continue
            # the warning's current grade is in its evidence: the stored level is the episode's highest (a lowering
            # does not lower it), and taking red for a catchment back at yellow hid a new rise to red
            grade = ev.get("grade") if ev.get("grade") in flood.GRADES else level
            st.alert_id, st.grade = alert_id, grade
            st.episode_start = _ts(ev["episode_start"]) if ev.get("episode_start") else None
            # the crew task goes out when a warning first reaches orange (see _flood_alert)
            st.task_sent = flood.GRADES.index(level) >= flood.GRADES.index("orange")
            floods += 1
        if floods:
            logger.info("took up %d open flood warning(s) after a restart", floods)
        return n + floods

    def _rain_series(self, st: CatchmentState, until: pd.Timestamp) -> pd.Series:
        rain = st.rain
        if not any(t > until - pd.Timedelta(hours=1) for t in rain) and st.c.district in self.district_rain:
            rain = self.district_rain[st.c.district]  # no gauge reading: the district's weather stations
        s = pd.Series(rain, dtype=float).sort_index()
        return s[s.index <= until] if len(s) else pd.Series([0.0], index=[until])

    def _nowcast_for(self, district: str | None, t: pd.Timestamp) -> list[float] | None:
        fresh = [f for sid, f in self.nowcast.items() if self.station_district.get(sid) == district
                 and pd.Timedelta(0) <= t - _ts(f.issued_at) <= pd.Timedelta(hours=1)]
        if not fresh:
            return None
        f = max(fresh, key=lambda f: f.issued_at)
        by_h = dict(zip(f.horizons_h, f.values, strict=False))
        return [max(0.0, float(by_h.get(h, 0.0))) for h in range(1, self.s.water_flood_horizon_h + 1)]

    async def _flood(self, st: CatchmentState) -> list[Output]:
        if not st.level:
            return []
        newest = max(st.level)
        # level and rain come from two sensors (two partitions): evaluate a step once both reported it,
        # or without the gauge once the level kept arriving for `water_silent_sensor_s` wall seconds without it
        has_gauge = "rain" in st.sensors
        rain_until = max(st.rain) if st.rain else min(st.level)
        gauge_silent = (st.level_wall - st.rain_wall >= self.s.water_silent_sensor_s
                        and newest - rain_until >= SILENT_STREAM_GAP)
        ready = newest if not has_gauge or gauge_silent else min(newest, max(st.rain, default=_EPOCH))
        out: list[Output] = []
        for t in sorted(x for x in st.level if x <= ready
                        and (st.evaluated_until is None or x > st.evaluated_until)):
            st.evaluated_until = t
            if not st.fitted and self.train_until is not None and t > self.train_until:
                hist = self._with_past(st.past_level, st.level, self.train_until)
                rain = self._with_past(st.past_rain, st.rain, self.train_until)
                if len(hist) >= 24:
                    st.model = flood.fit_catchment(st.c, hist, rain.reindex(hist.index).fillna(0.0))
                st.fitted = True
            elif st.fitted and t.floor("h") != st.refit_hour:
                # every hour, once it has rained: the catchment's response learned from the rain it is getting
                # (a history without rain leaves a generic drain's response, which overshot the demo's storm)
                st.refit_hour = t.floor("h")
                refit = self._refit_flood_model(st, t)
                if refit is not None:
                    st.model = refit
            level = pd.Series({k: v for k, v in st.level.items() if t - pd.Timedelta(hours=6) <= k <= t},
                              dtype=float).sort_index()
            risk = flood.assess_flood(st.model, level, self._rain_series(st, t),
                                      nowcast_mm_per_h=self._nowcast_for(st.c.district, t),
                                      horizon_h=self.s.water_flood_horizon_h)
            prev_level = level[level.index <= t - pd.Timedelta(hours=1)]
            rise = float(level.iloc[-1] - prev_level.iloc[-1]) if len(prev_level) else 0.0
            st.latest = risk
            out += self._flood_rules(st, risk, rise)
        cutoff = newest - pd.Timedelta(days=3)
        st.level = {k: v for k, v in st.level.items() if k >= cutoff or (self.train_until and k <= self.train_until)}
        return out

    def _refit_flood_model(self, st: CatchmentState, t: pd.Timestamp) -> flood.CatchmentModel | None:
        """Gain and recession refitted on the last three days up to `t`, when they hold at least FLOOD_REFIT_MM
        of rain (the first fit's history may hold none)."""
        level = self._with_past(st.past_level, st.level, t)
        rain = self._with_past(st.past_rain, st.rain, t)
        level = level[level.index > t - pd.Timedelta(days=3)]
        rain = rain.reindex(level.index).fillna(0.0)
        if len(level) < 24 or float(rain.sum()) < FLOOD_REFIT_MM:
            return None
        return flood.fit_catchment(st.c, level, rain)

    def _flood_rules(self, st: CatchmentState, risk: flood.FloodRisk, rise: float) -> list[Output]:
        t = _ts(risk.at)
        r, cur = GRADE_RANK[risk.grade], GRADE_RANK[st.grade]
        if r > cur:
            st.below = 0
            first = cur == 0
            if first:
                st.episode_start = t
                st.alert_id = stable_id(f"water:flood:{st.c.catchment_id}", t.isoformat())
                st.task_sent = False
            st.grade = risk.grade
            return self._flood_alert(st, risk, rise, "raised" if first else "updated")
        if r == cur:
            st.below = 0
            return []
        st.below += 1
        if st.below < self.s.water_flood_clear_after:
            return []
        st.below = 0
        st.grade = risk.grade
        if r == 0:
            out = self._flood_alert(st, risk, rise, "cleared")
            st.episode_start, st.alert_id = None, None
            return out
        return self._flood_alert(st, risk, rise, "updated")

    def _flood_alert(self, st: CatchmentState, risk: flood.FloodRisk, rise: float, status: str) -> list[Output]:
        c, t = st.c, _ts(risk.at)
        dedup = f"water:flood:{c.catchment_id}"
        lat, lon = self.city.centre_of(c.district) or (self.city.centre_lat, self.city.centre_lon)
        evidence = {"observed_at": t.isoformat(), "catchment_id": c.catchment_id, "grade": risk.grade,
                    "level_m": round(risk.level_m, 3), "projected_peak_m": round(risk.projected_peak_m, 3),
                    "lead_time_h": risk.lead_time_h, "rain_last_h_mm": round(risk.rain_last_h_mm, 2),
                    "rise_m_per_h": round(rise, 3), "thresholds_m": list(c.thresholds_m),
                    "sensor_id": st.sensors.get("drain_level"), "episode_start": st.episode_start.isoformat(),
                    "model": {"gain_m_per_mm": round(st.model.gain_m_per_mm, 5),
                              "recession_per_h": round(st.model.recession_per_h, 4)},
                    "nowcast_used": self._nowcast_for(c.district, t) is not None}
        if risk.lead_time_h is not None:
            evidence["expected_at"] = (t + pd.Timedelta(hours=risk.lead_time_h)).isoformat()
        if status == "cleared":
            alert = Alert(alert_id=st.alert_id, domain="water", kind="flood_risk", severity="info", level=None,
                          status="cleared", title_zh=f"防汛预警解除：{c.name_zh}",
                          title_en=f"Flood warning lifted: {c.name_en}",
                          message_zh=f"{c.name_zh}水位已回落至{risk.level_m:.2f}米，低于蓝色警戒水位，预警解除。请继续关注降雨。",
                          message_en=f"{c.name_en}: level back to {risk.level_m:.2f} m, below the blue level; the "
                                     "warning is lifted. Keep watching the rain.",
                          location=GeoPoint(lat=lat, lon=lon), district=c.district, dedup_key=dedup, raised_at=t,
                          evidence=evidence)
            return [alert_output(alert, source=SOURCE)]
        text = flood.flood_alert_text(risk, c)
        zh_grade = flood.GRADE_ZH[risk.grade]
        alert = Alert(alert_id=st.alert_id, domain="water", kind="flood_risk", severity=GRADE_SEVERITY[risk.grade],
                      level=risk.grade, status=status, title_zh=f"防汛{zh_grade}预警：{c.name_zh}",
                      title_en=f"Flood warning {risk.grade.upper()}: {c.name_en}", message_zh=text["zh"],
                      message_en=text["en"], location=GeoPoint(lat=lat, lon=lon), district=c.district,
                      dedup_key=dedup, raised_at=t, evidence=evidence)
        out = [alert_output(alert, source=SOURCE)]
        if risk.grade in ("orange", "red") and not st.task_sent:
            st.task_sent = True
            task = FieldTask(
                task_id=stable_id("task", st.alert_id), kind="inspect_drain", domain="water",
                priority="urgent" if risk.grade == "red" else "high",
                title_zh=f"排水巡查：{c.name_zh}（{zh_grade}预警）",
                title_en=f"Drain inspection: {c.name_en} ({risk.grade} warning)",
                description_zh=(f"水位{risk.level_m:.2f}米，预测峰值{risk.projected_peak_m:.2f}米。请检查雨水口、"
                                "泵站和闸门，清除堵塞，现场回报积水情况。"),
                description_en=(f"Level {risk.level_m:.2f} m, projected peak {risk.projected_peak_m:.2f} m. Check gullies,"
                                " pumping stations and gates, clear blockages and report standing water."),
                location=GeoPoint(lat=lat, lon=lon), district=c.district, required_skills=["drain"],
                due_at=t + pd.Timedelta(hours=1), related_alert_id=st.alert_id, created_at=t, evidence=evidence)
            out.append(task_output(task, source=SOURCE))
        return out

    # ---- read side for the endpoints ------------------------------------------------------
    def flood_risk(self) -> list[dict[str, Any]]:
        out = []
        for cid, st in sorted(self.catchments.items()):
            r = st.latest
            out.append({"catchment_id": cid, "name_zh": st.c.name_zh, "name_en": st.c.name_en,
                        "district": st.c.district, "warning": st.grade,
                        "thresholds_m": list(st.c.thresholds_m),
                        **({"at": r.at.isoformat(), "level_m": round(r.level_m, 3),
                            "projected_peak_m": round(r.projected_peak_m, 3), "projected_grade": r.grade,
                            "lead_time_h": r.lead_time_h, "rain_last_h_mm": round(r.rain_last_h_mm, 2)} if r else {})})
        return out

    def pipe_geometry(self, pipe: str) -> list[list[float]]:
        a, b = self.net.link_nodes[pipe]
        return [[self.lat_lon[a][1], self.lat_lon[a][0]], [self.lat_lon[b][1], self.lat_lon[b][0]]]


def _candidate_dicts(ev: detection.LeakEvent) -> list[dict]:
    """The candidates as JSON (up to 3 places to start, then the 10 best-fitting pipes): rank, pipe, share
    explained, flow, distance to the first and the posterior chance that the leak lies within 300 m of the
    pipe (null where not computed)."""
    return [{"rank": i, "pipe_id": c.pipe_id, "score": round(c.score, 4), "flow_m3h": round(c.flow_m3h, 2),
             "distance_to_top_m": round(c.distance_to_top_m, 1),
             "p_within_300m": round(c.p_within, 3) if c.p_within == c.p_within else None}
            for i, c in enumerate(ev.candidates, 1)]
