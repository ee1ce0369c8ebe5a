"""Stream handlers of the emergency service: machines, worker safety, gas releases, cross-domain incidents.

Three consumers (:func:`processors`) share one :class:`EmergencyService` (its per-sensor state and
the incidents):

- equipment observations -> per-machine `hybrid` fault detector, trained on the first part of
  each machine's stream (off the event loop) -> equipment_health rows, fault alerts, an
  `inspect_equipment` task and a pumping-station incident;
- the restricted personal topic (wearables; personal because of the topic they arrive on) -> worker
  safety alerts (pseudonymous on the shared topic) and worker incidents;
- fixed safety detectors, other domains' alerts, weather nowcasts and station wind -> gas-release
  evacuation incidents, flood incidents from rainstorm + drain alerts.

Everything is judged in simulated time (`observed_at`). Alert ids are `stable_id(dedup_key,
episode start)` and incident ids come from what they are about, so a replayed batch gives the
same ids; the database takes them with upserts on the natural keys. Reports and maps are drawn
by a separate loop (:meth:`EmergencyService.reporter`) in a worker process, so that no drawing
delays an alert.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from schemas.alerts import Alert, GeoPoint
from schemas.observations import Observation
from schemas.products import Incident as IncidentMsg
from schemas.products import StationForecast
from schemas.tasks import FieldTask
from schemas.topics import ALERTS, OBSERVATION_TOPIC, PERSONAL_OBSERVATIONS
from services.emergency.domain import incidents as inc_rules
from services.emergency.domain.fault import OnlineFaultMonitor, fit_detector
from services.emergency.domain.privacy import episode_pseudonym, pseudonymise, shared_alert
from services.emergency.domain.safety import (
    ALERT_NAMES,
    GasLimits,
    SafetyAlert,
    SafetyMonitor,
    Severity,
    reading_from_message,
)
from services.emergency.domain.zones import Zone
from services.emergency.settings import EmergencySettings
from shared.city import City, District, default_city
from shared.stream import (
    Output,
    PoisonRecord,
    StreamProcessor,
    alert_output,
    open_alerts,
    output,
    stable_id,
    task_output,
)

logger = logging.getLogger("cityops.emergency")
SOURCE = "emergency"
INCIDENTS = "cityops.emergency.incidents.v1"
NOWCASTS = "cityops.weather.nowcast.v1"
EQUIPMENT = OBSERVATION_TOPIC["equipment"]
SAFETY = OBSERVATION_TOPIC["safety"]
SEVERITY = {1: "minor", 2: "major", 3: "critical"}
LEVEL = {1: "yellow", 2: "orange", 3: "red"}
INCIDENT_KIND = {"flood": "flood", "gas_evacuation": "gas_release", "pumping_station_fault": "equipment_fault",
                 "worker_safety": "worker_safety"}
# events rather than conditions: each is its own episode and never "clears"
EVENT_KINDS = {"fall", "sos", "restricted_entry"}
RECENT_READINGS = 2000  # per wearable: hours of readings at a few seconds apart
# worker alerts that call a crew out (the others are alerts only)
CALL_OUT_KINDS = {"fall", "man_down", "sos", "gas_h2s", "gas_co", "gas_lel", "o2_low", "o2_high"}
# hourly rain rate a rainstorm signal level stands for, when the alert carries no rate
WORKER_QUIET = pd.Timedelta(minutes=15)
RAIN_MM_H_OF_LEVEL = {"blue": 16.0, "yellow": 20.0, "orange": 32.0, "red": 40.0}


def city_from_config(d: dict[str, Any] | None) -> City:
    if not d:
        return default_city()
    return City(d.get("name", "city"), float(d["centre_lat"]), float(d["centre_lon"]), tuple(
        District(x["district_id"], x["name_zh"], x["name_en"], tuple(x["bbox"]), x.get("land_use", "urban"),
                 bool(x.get("low_lying", False))) for x in d["districts"]))


def _limits(d: dict[str, Any] | None) -> GasLimits:
    if not d:
        return GasLimits()
    return GasLimits(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _ts(t: datetime | str) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _good_values(obs: Observation) -> dict[str, float]:
    """Only QARTOD pass / not-evaluated values feed the models."""
    return {q: v.value for q, v in obs.values.items() if v.qc in (1, 2)}


def _parse(events: list[dict], prefix: str) -> list[Observation]:
    """All observations of a batch, validated before any state changes (so a poison batch replays cleanly)."""
    out = []
    for env in events:
        if not str(env.get("type", "")).startswith(prefix):
            continue
        try:
            out.append(Observation.model_validate(env["payload"]))
        except ValidationError as exc:
            raise PoisonRecord(f"not an Observation: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return out


@dataclass
class _Machine:
    machine_id: str
    station_id: str | None
    sensor_id: str
    lat: float
    lon: float
    district: str | None
    train: list[dict[str, float]] = field(default_factory=list)
    monitor: OnlineFaultMonitor | None = None
    last: pd.Timestamp | None = None
    episode_start: pd.Timestamp | None = None
    alert_id: str | None = None
    incident_id: str | None = None
    normal_run: int = 0
    peak: float = 0.0
    history_loaded: bool = False


@dataclass
class _Detector:
    source: dict[str, Any]
    release_at: pd.Timestamp | None = None
    alert_id: str | None = None
    incident_id: str | None = None
    below: int = 0
    peak_ppm: float = 0.0


@dataclass
class _Episode:
    start: pd.Timestamp
    alert_id: str
    grade: int
    absent: int = 0


@dataclass
class _Tracked:
    incident: inc_rules.Incident
    related: list[str] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    report_path: str | None = None
    map_path: str | None = None
    public_location: tuple[float, float] | None = None
    dirty: bool = True
    needs_report: bool = False
    # a flood incident: the dedup keys of the weather and water alerts behind it still open
    open_keys: set[str] = field(default_factory=set)
    district: str | None = None


class EmergencyService:
    """State and handlers of the emergency stream service (one instance per process)."""

    def __init__(self, settings: EmergencySettings, pool, *, config: dict[str, Any] | None = None):
        self.s = settings
        self.pool = pool
        cfg = settings.load_city_config() if config is None else config
        em = cfg.get("domains", {}).get("emergency", {})
        self.city = city_from_config(cfg.get("city"))
        self.zones = [Zone.from_config(z) for z in em.get("zones", [])]
        self.limits = _limits(em.get("gas_limits"))
        self.machine_cfg = {m["sensor_id"]: m for m in em.get("machines", [])}
        self.stations: dict[str, dict[str, Any]] = em.get("pumping_stations", {})
        self.gas_sources = {g["detector"]: g for g in em.get("gas_sources", []) if g.get("detector")}
        self.worker_of = {sid: w["worker_id"] for sid, w in em.get("wearables", {}).items()}
        self.train_until = _ts(em["train_until"]) if em.get("train_until") else None
        self.key = settings.pseudonym_key()
        self.out_dir = settings.emergency_state_dir
        self.machines: dict[str, _Machine] = {}
        self.detectors: dict[str, _Detector] = {}
        self.safety = SafetyMonitor(self.zones, self.limits)
        self.episodes: dict[str, dict[str, _Episode]] = {}  # stable pseudonym -> kind -> episode
        self.worker_incident: dict[str, str] = {}  # pseudonym -> open incident id
        self.worker_event_at: dict[str, pd.Timestamp] = {}  # pseudonym -> last fall/SOS/entry
        self.incidents: dict[str, _Tracked] = {}
        self.wind: tuple[pd.Timestamp, float | None, float | None] | None = None
        self.observed_wind: tuple[pd.Timestamp, float, float] | None = None  # newest station wind
        self.rain: list[inc_rules.RainNowcast] = []
        self.drains: list[inc_rules.DrainLevel] = []
        self.cross_alert_ids: list[tuple[pd.Timestamp, str, str]] = []  # (time, district, alert id) of the above
        self.cross_keys: list[tuple[pd.Timestamp, str, str]] = []  # (time, district, dedup key) of the same alerts
        self.fits = 0
        self.last_seen: dict[str, pd.Timestamp] = {}  # sensor -> newest observed_at handled
        # per wearable, the observed_at of its last RECENT_READINGS readings handled (a late one seen before is a
        # redelivery, not late)
        self.recent: dict[str, dict[pd.Timestamp, None]] = {}
        self.press_start: dict[tuple[str, str], pd.Timestamp] = {}  # (worker, event kind) -> the press's first reading
        self.late_dropped = 0  # late wearable readings without an event (their conditions were judged since)
        self.pdf_warned = False
        self._drawer: ProcessPoolExecutor | None = None

    # -- equipment ------------------------------------------------------------------------

    def _machine(self, obs: Observation) -> _Machine:
        m = self.machines.get(obs.sensor_id)
        if m is None:
            c = self.machine_cfg.get(obs.sensor_id, {})
            m = self.machines[obs.sensor_id] = _Machine(
                c.get("machine_id", obs.sensor_id), c.get("station_id"), obs.sensor_id, obs.lat, obs.lon, obs.district)
        return m

    def _training_done(self, m: _Machine, t: pd.Timestamp) -> bool:
        if self.train_until is not None and len(m.train) >= 20:
            return t > self.train_until
        return len(m.train) >= self.s.emergency_train_samples

    async def handle_equipment(self, events: list[dict]) -> list[Output]:
        obs = _parse(events, "observation.equipment")
        out: list[Output] = []
        health: list[tuple] = []
        for o in obs:
            t = _ts(o.observed_at)
            m = self._machine(o)
            if m.last is not None and t <= m.last:
                continue  # a replayed or late sample: its row and alerts exist already
            m.last = t
            sample = _good_values(o)
            if m.monitor is None:
                if not m.train and not m.history_loaded and (self.train_until is None or t > self.train_until):
                    await self._load_history(m, t)
                if not self._training_done(m, t):
                    m.train.append(sample)
                    continue
                await self._fit(m)
                if m.monitor is None:
                    m.train.append(sample)
                    continue
            score, flag, channels, started = m.monitor.update(sample)
            health.append((t.to_pydatetime(), m.machine_id, score, flag,
                           {"channels": channels, "sensor_id": m.sensor_id}))
            out += self._fault_rules(m, t, score, flag, channels, started, sample)
        if health:
            async with self.pool.connection() as conn:
                from services.emergency import repository

                await repository.write_equipment_health(conn, health)
        out += await self._flush_incidents()
        return out

    async def _load_history(self, m: _Machine, t: pd.Timestamp) -> None:
        """A machine's first sample in this process: learn from what is stored before it (a restart).

        With a training period (`train_until`) its stored samples; without one, the last
        `emergency_train_samples` stored before `t` that the detector did not judge abnormal, so a restarted
        service goes on judging at once instead of relearning "normal" from the live stream (a pump that is
        failing meanwhile would be learnt as normal). A first start finds nothing and learns from the stream."""
        from services.emergency import repository

        m.history_loaded = True
        if self.pool is None:
            return
        async with self.pool.connection() as conn:
            if self.train_until is not None:
                m.train = await repository.machine_history(conn, m.sensor_id, self.train_until.to_pydatetime())
            else:
                m.train = await repository.machine_history(conn, m.sensor_id, t.to_pydatetime(),
                                                           self.s.emergency_train_samples, before=True,
                                                           machine_id=m.machine_id)
        if m.train:
            logger.info("machine history loaded", extra={"fields": {"machine": m.machine_id, "rows": len(m.train)}})

    async def _fit(self, m: _Machine) -> None:
        frame = pd.DataFrame(m.train)
        try:
            # seconds of linear algebra: not on the event loop
            det = await asyncio.to_thread(fit_detector, frame, model=self.s.emergency_fault_model)
        except ValueError as exc:
            logger.warning("cannot fit machine yet", extra={"fields": {"machine": m.machine_id, "error": str(exc)}})
            return
        m.monitor = OnlineFaultMonitor(det)
        m.train = []
        self.fits += 1
        logger.info("machine detector trained", extra={"fields": {"machine": m.machine_id, "rows": len(frame)}})

    def _fault_rules(self, m: _Machine, t: pd.Timestamp, score: float, flag: bool, channels: list[str],
                     started: bool, sample: dict[str, float]) -> list[Output]:
        out: list[Output] = []
        dedup = f"emergency:equipment_fault:{m.machine_id}"
        if flag:
            m.normal_run = 0
            m.peak = max(m.peak, score)
        if started and m.episode_start is None:
            m.episode_start, m.peak = t, score
            m.alert_id = stable_id(dedup, t.isoformat())
            st = self.stations.get(m.station_id or "", {})
            where_zh = st.get("name_zh", m.station_id or m.sensor_id)
            where_en = st.get("name_en", m.station_id or m.sensor_id)
            chans = ", ".join(channels) or "several channels"
            evidence = {"observed_at": t.isoformat(), "machine_id": m.machine_id, "station_id": m.station_id,
                        "score": round(score, 3), "threshold": 1.0, "channels": channels,
                        "values": {c: round(v, 3) for c, v in sample.items()},
                        "model": self.s.emergency_fault_model, "supplies": st.get("supplies", [])}
            alert = Alert(
                alert_id=m.alert_id, domain="emergency", kind="equipment_fault", severity="major", level="orange",
                title_zh=f"设备故障预警：{where_zh} {m.machine_id}", title_en=f"Equipment fault warning: {where_en} {m.machine_id}",
                message_zh=f"{m.machine_id} 运行状态偏离正常（评分 {score:.1f}，异常通道：{chans}）。"
                           "请安排设备检修人员到场检查轴承与振动，必要时切换备用泵。",
                message_en=f"{m.machine_id} is running away from normal (score {score:.1f}; deviating: {chans}). "
                           "Send an equipment crew to check bearings and vibration; switch to the standby pump if needed.",
                location=GeoPoint(lat=m.lat, lon=m.lon), district=m.district, dedup_key=dedup, raised_at=t,
                evidence=evidence)
            out.append(alert_output(alert, source=SOURCE))
            tracked = None
            if m.station_id in self.stations:
                fault = inc_rules.EquipmentFault(t, m.machine_id, m.station_id, score, tuple(channels))
                tracked = self._open(inc_rules.pumping_station_incident(fault, self.stations, self.city),
                                     m.alert_id, public=(m.lat, m.lon))
                m.incident_id = tracked.incident.incident_id
                if m.alert_id not in tracked.related:
                    # a second machine of the station within the incident's hour: one incident, both faults in it
                    tracked.related.append(m.alert_id)
                    tracked.incident = dataclasses.replace(tracked.incident, evidence=(*tracked.incident.evidence, {
                        "time": t.isoformat(), "source": "emergency", "what": f"fault warning on {m.machine_id}",
                        "value": f"score {score:.1f}; channels: {chans}"}))
                    tracked.dirty = True
            task = FieldTask(
                task_id=stable_id("task", dedup, t.isoformat()), kind="inspect_equipment", domain="emergency",
                priority="high", title_zh=f"检查设备 {m.machine_id}（{where_zh}）", title_en=f"Inspect {m.machine_id} ({where_en})",
                description_zh=f"故障预警评分 {score:.1f}，异常通道：{chans}。检查轴承、振动和温度，报告是否需停机。",
                description_en=f"Fault score {score:.1f}; deviating channels: {chans}. Check bearing, vibration and "
                               "temperature; report whether the pump must stop.",
                location=GeoPoint(lat=m.lat, lon=m.lon), district=m.district, required_skills=["equipment"],
                related_alert_id=m.alert_id, created_at=t,
                evidence={**evidence, **({"map_png": tracked.map_path, "incident_id": tracked.incident.incident_id}
                                         if tracked else {})})
            out.append(task_output(task, source=SOURCE))
            if tracked:
                self._step(tracked, "dispatched", t, f"task {task.task_id}")
        elif m.episode_start is not None and not flag:
            m.normal_run += 1
            if m.normal_run >= self.s.emergency_clear_after:
                alert = Alert(
                    alert_id=m.alert_id or stable_id(dedup, m.episode_start.isoformat()), domain="emergency",
                    kind="equipment_fault", severity="minor", status="cleared",
                    title_zh=f"设备恢复正常：{m.machine_id}", title_en=f"Equipment back to normal: {m.machine_id}",
                    message_zh=f"{m.machine_id} 已连续 {m.normal_run} 个样本正常，预警解除；请在检修记录中注明处理结果。",
                    message_en=f"{m.machine_id} has been normal for {m.normal_run} samples; warning cleared. "
                               "Record what was done in the maintenance log.",
                    location=GeoPoint(lat=m.lat, lon=m.lon), district=m.district, dedup_key=dedup, raised_at=t,
                    evidence={"observed_at": t.isoformat(), "episode_start": m.episode_start.isoformat(),
                              "peak_score": round(m.peak, 3), "score": round(score, 3)})
                out.append(alert_output(alert, source=SOURCE))
                still = sorted(x.machine_id for x in self.machines.values()
                               if x is not m and x.incident_id == m.incident_id and x.episode_start is not None)
                if m.incident_id in self.incidents and not still:
                    self._step(self.incidents[m.incident_id], "resolved", t, "machine back to normal")
                elif m.incident_id in self.incidents:
                    # the station's incident stays open while another of its machines is still faulty
                    logger.info("machine back to normal; its station incident stays open",
                                extra={"fields": {"machine": m.machine_id, "still_faulty": still,
                                                  "incident_id": m.incident_id}})
                m.episode_start = m.alert_id = m.incident_id = None
                m.normal_run = 0
        return out

    # -- safety: wearables, fixed detectors, other domains --------------------------------

    async def restore_open_alerts(self) -> int:
        """After a restart: take up the worker conditions (heart rate, gases, man down …) still open.

        Their episodes live in memory; without this a condition open at a crash was never cleared, and one still
        on was raised again under a new subject. The alerts table the notification service keeps names each by its
        episode pseudonym and start: the worker is found again by recomputing that pseudonym for the workers the
        service can know (the city config's wearables, the personal sensors and the restricted readings since the
        oldest such episode began) — only the key's holder can. Falls, SOS and entries are events (nothing to
        clear). Returns how many were taken up."""
        from services.emergency import repository

        rows = [r for r in await open_alerts(self.pool, "emergency")
                if r["dedup_key"].startswith("emergency:worker:") and r["kind"] not in EVENT_KINDS
                and isinstance(r["evidence"], dict) and r["evidence"].get("episode_start")
                and r["evidence"].get("worker")]
        if not rows:
            return 0
        starts = [_ts(r["evidence"]["episode_start"]) for r in rows]
        async with self.pool.connection() as conn:
            known = await repository.known_worker_ids(conn, since=min(starts).to_pydatetime())
        worker_of_pid = {pseudonymise(w, self.key): w for w in {*self.worker_of.values(), *known}}
        pids = set(worker_of_pid)
        n = 0
        for r, start in zip(rows, starts, strict=True):
            subject, kind = r["evidence"]["worker"], r["kind"]
            pid = next((p for p in pids if episode_pseudonym(p, start, self.key) == subject), None)
            if pid is None or kind in self.episodes.get(pid, {}):
                continue
            grade = int(r["evidence"].get("grade") or r["evidence"].get("max_grade") or int(Severity.WARNING))
            self.episodes.setdefault(pid, {})[kind] = _Episode(start, r["alert_id"], grade)
            self.safety.resume(worker_of_pid[pid], kind, grade, start)
            n += 1
        if n:
            logger.info("took up %d open worker alert(s) after a restart", n)
        if n < len(rows):
            logger.warning("open worker alerts whose worker is not known here stay open until acknowledged",
                           extra={"fields": {"not_taken_up": len(rows) - n}})
        return n

    async def handle_personal(self, events: list[dict]) -> list[Output]:
        """Wearable readings from the restricted topic. The topic, not the envelope's type, makes them personal
        (the gateway types them `observation.personal`; records from before that said `observation.safety`)."""
        for env in events:
            if not str(env.get("type", "")).startswith("observation."):
                raise PoisonRecord(f"a {env.get('type')!r} record on the personal topic: only observations of "
                                   "personal sensors belong there")
        out: list[Output] = []
        # in time order: a wearable back in coverage sends its stored SOS after its current reading, often in one
        # poll, and the newer reading first made the SOS look already seen (dropped without a word)
        parsed = sorted(_parse(events, "observation."), key=lambda o: _ts(o.observed_at))
        late = self._late_events(parsed)
        for o in self._new(parsed):
            out += self._worker(o)
        for o in late:
            out += self._worker_late_event(o)
        out += await self._flush_incidents()
        return out

    def _late_events(self, obs: list[Observation]) -> list[Observation]:
        """Readings older than the newest handled for their wearable that carry an SOS or a fall: a wearable that
        stored readings while out of coverage sends them late, and its alarm must still go out. An exact repeat
        (a redelivery) is not late; late readings without an event only add to a count."""
        out = []
        for o in obs:
            t = _ts(o.observed_at)
            last = self.last_seen.get(o.sensor_id)
            if last is None or t > last or t in self.recent.get(o.sensor_id, {}):
                continue
            vals = _good_values(o)
            if any(vals.get(k, 0.0) >= 0.5 for k in ("sos", "fall")):
                self._remember(o.sensor_id, t)
                out.append(o)
            else:
                self.late_dropped += 1
        return out

    def _remember(self, sensor_id: str, t: pd.Timestamp) -> None:
        seen = self.recent.setdefault(sensor_id, {})
        seen[t] = None
        if len(seen) > RECENT_READINGS:
            del seen[next(iter(seen))]

    def _worker_late_event(self, o: Observation) -> list[Output]:
        """The SOS or fall of a late reading, alarmed on its own (the worker's running conditions are not
        rewound: heart rate and gas readings that came later already spoke for themselves)."""
        t = _ts(o.observed_at)
        worker_id = self.worker_of.get(o.sensor_id, o.sensor_id)
        pid = pseudonymise(worker_id, self.key)
        r = reading_from_message(t, worker_id, _good_values(o))
        zones = tuple(z.zone_id for z in self.zones if math.isfinite(r.lat) and z.contains(r.lat, r.lon))
        eps = self.episodes.setdefault(pid, {})
        out: list[Output] = []
        for kind, sev in (("sos", Severity.CRITICAL), ("fall", Severity.ALARM)):
            if getattr(r, kind):
                a = SafetyMonitor._alert(r, kind, sev, math.nan, zones)  # noqa: SLF001 - the monitor's own wording
                logger.warning("late %s from a wearable alarmed", kind, extra={"fields": {"at": str(t)}})
                out += self._worker_alert(a, pid, o, eps, late=True)
        return out

    def _new(self, obs: list[Observation]) -> list[Observation]:
        """The readings not handled yet: after a consumer rejoins (a rebalance under load), Kafka redelivers
        what came after the last commit, and a worker's or detector's rules must not see a reading twice."""
        out = []
        for o in obs:
            t = _ts(o.observed_at)
            if o.sensor_id in self.last_seen and t <= self.last_seen[o.sensor_id]:
                continue
            self.last_seen[o.sensor_id] = t
            if o.kind == "wearable":
                self._remember(o.sensor_id, t)
            out.append(o)
        return out

    async def handle_safety(self, events: list[dict]) -> list[Output]:
        """Fixed safety sensors, other domains' alerts, weather nowcasts and station wind."""
        fixed = sorted(_parse([e for e in events if e.get("type") == "observation.safety"], "observation.safety"),
                       key=lambda o: _ts(o.observed_at))
        weather = _parse([e for e in events if e.get("type") == "observation.weather"], "observation.weather")
        others = []
        for env in events:
            typ = env.get("type")
            try:
                if typ == "alert":
                    others.append(Alert.model_validate(env["payload"]))
                elif typ == "weather.nowcast":
                    others.append(StationForecast.model_validate(env["payload"]))
            except ValidationError as exc:
                raise PoisonRecord(f"bad {typ}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        out: list[Output] = []
        for x in others:
            if isinstance(x, StationForecast):
                self._wind_from(x)
        for o in weather:
            v = _good_values(o)
            t = _ts(o.observed_at)
            if "wind_dir" in v and "wind_speed" in v and (self.observed_wind is None or t >= self.observed_wind[0]):
                self.observed_wind = (t, float(v["wind_dir"]), float(v["wind_speed"]))
        for o in self._new(fixed):
            out += self._gas(o)
        for x in others:
            if isinstance(x, Alert):
                out += self._cross_domain(x)
        out += await self._flush_incidents()
        return out

    def _worker(self, o: Observation) -> list[Output]:
        t = _ts(o.observed_at)
        worker_id = self.worker_of.get(o.sensor_id, o.sensor_id)
        pid = pseudonymise(worker_id, self.key)
        vals = {q: v for q, v in _good_values(o).items()}
        alerts = self.safety.update(reading_from_message(t, worker_id, vals))
        open_now = self.safety.open_conditions(worker_id)
        eps = self.episodes.setdefault(pid, {})
        out: list[Output] = []
        for a in alerts:
            out += self._worker_alert(a, pid, o, eps)
        fired = {a.kind for a in alerts}
        for kind in EVENT_KINDS - fired:
            self.press_start.pop((pid, kind), None)  # the button was let go: the next press is a new alarm
        for kind, ep in list(eps.items()):
            if kind in open_now:
                ep.absent = 0
                continue
            ep.absent += 1
            if ep.absent >= self.s.emergency_worker_clear_after:
                out.append(self._worker_cleared(kind, ep, pid, o.district, t))
                del eps[kind]
        if any(a.kind in EVENT_KINDS for a in alerts):
            self.worker_event_at[pid] = t
        quiet_since = self.worker_event_at.get(pid)
        # a fall or SOS has no "cleared" reading: the incident closes once nothing is open for a while
        if not eps and pid in self.worker_incident and (quiet_since is None or t - quiet_since >= WORKER_QUIET):
            tracked = self.incidents.get(self.worker_incident.pop(pid))
            if tracked is not None:
                self._step(tracked, "resolved", t, "worker's alarms cleared")
        return out

    def _worker_alert(self, a: SafetyAlert, pid: str, o: Observation, eps: dict[str, _Episode],
                      late: bool = False) -> list[Output]:
        district = self.city.district_of(a.lat, a.lon) if not math.isnan(a.lat) else o.district
        district = district or o.district
        ep = eps.get(a.kind) if a.kind not in EVENT_KINDS else None
        if a.kind in EVENT_KINDS:
            # each press of the SOS button (each fall, each entry) is an alarm of its own: under one key per worker
            # and kind the notification service folded a second SOS into the first, acknowledged one and paged
            # nobody. Readings of one held press share its start, so its subject and key (repeats, not new pages).
            start = a.time if late else self.press_start.setdefault((pid, a.kind), a.time)
        else:
            start = ep.start if ep is not None else a.time
        # the shared topic names the worker per episode: its raise, updates and clearing share the subject and so
        # the dedup key (the notification service folds and clears by it); two episodes cannot be linked
        subject = episode_pseudonym(pid, start, self.key)
        dedup = f"emergency:worker:{subject}:{a.kind}"
        status = "raised"
        if ep is not None:
            status = "updated"
            ep.grade, ep.absent = max(ep.grade, int(a.severity)), 0
            alert_id = ep.alert_id
        else:
            alert_id = stable_id(dedup, a.time.isoformat())
            if a.kind not in EVENT_KINDS:
                eps[a.kind] = _Episode(a.time, alert_id, int(a.severity))
        view = shared_alert(a, self.key, district, start)
        zh, en, _ = ALERT_NAMES[a.kind]
        sev = int(a.severity)
        alert = Alert(
            alert_id=alert_id, domain="emergency", kind=a.kind, severity=SEVERITY[sev], level=LEVEL[sev],
            status=status, title_zh=f"人员安全{a.severity.label_zh}：{zh}", title_en=f"Worker safety {a.severity.name.lower()}: {en}",
            message_zh=view["message_zh"] + "。请立即通过对讲或电话联系该人员，必要时派人到场；身份与位置见受限系统。",
            message_en=view["message_en"] + ". Call the worker on radio or phone now and send help if there is no answer; "
                                            "identity and position are in the restricted system.",
            location=None, district=district, dedup_key=dedup, raised_at=a.time,
            evidence={"observed_at": a.time.isoformat(), "worker": subject, "episode_start": start.isoformat(),
                      "grade": sev, "zone_ids": view["zone_ids"]})
        out = [alert_output(alert, source=SOURCE)]
        if a.severity >= Severity.ALARM and a.kind in CALL_OUT_KINDS:
            out += self._worker_incident(a, pid, alert_id, district, start)
        return out

    def _worker_incident(self, a: SafetyAlert, pid: str, alert_id: str, district: str | None,
                         start: pd.Timestamp) -> list[Output]:
        open_id = self.worker_incident.get(pid)
        if open_id in self.incidents:
            tr = self.incidents[open_id]
            if alert_id not in tr.related:
                tr.related.append(alert_id)
                tr.dirty = True
            return []
        # the incident (public) and the crew's task name the worker as the alert that opened them does
        view = shared_alert(a, self.key, district, start)
        subject = view["worker"]
        masked = dataclasses.replace(a, worker_id=subject, message_zh=view["message_zh"],
                                     message_en=view["message_en"])
        inc = inc_rules.worker_incident(masked, self.city)
        if inc is None:
            return []
        if inc.incident_id in self.incidents:
            # the same worker and kind again within the hour, after the first incident closed: a new one
            inc = dataclasses.replace(inc, incident_id=f"{inc.incident_id}-{a.time.strftime('%H%M%S')}")
        zone = next((z for z in self.zones if z.zone_id in a.zone_ids), None)
        # the public incident (its message, report and map, served without a login) shows the zone or else the
        # district, never the worker's own position: that goes only to the crew's task on the internal topic
        public = ((zone.polygon.centroid.y, zone.polygon.centroid.x) if zone else self.city.centre_of(district)
                  or (self.city.centre_lat, self.city.centre_lon))
        inc = dataclasses.replace(inc, lat=public[0], lon=public[1])  # the stored incident too
        tr = self._open(inc, alert_id, public=public, points=[])
        known = math.isfinite(a.lat) and math.isfinite(a.lon)  # a wearable in a pump pit may have no fix
        where = GeoPoint(lat=a.lat, lon=a.lon) if known else GeoPoint(lat=public[0], lon=public[1])
        self.worker_incident[pid] = inc.incident_id
        zh, en, _ = ALERT_NAMES[a.kind]
        task = FieldTask(
            task_id=stable_id("task", inc.incident_id), kind="respond_incident", domain="emergency",
            priority="urgent", title_zh=f"人员救援：{zh}", title_en=f"Worker rescue: {en}",
            description_zh=f"人员 {subject} {zh}（{a.severity.label_zh}）。立即前往，携带急救包与气体检测仪；进入危险区须两人同行。"
                           + ("" if known else "定位信号缺失：任务位置为所在区域中心，请通过对讲确认人员位置。"),
            description_en=f"Worker {subject}: {en} ({a.severity.name.lower()}). Go now with a first-aid kit and a gas "
                           "monitor; enter hazard zones in pairs."
                           + ("" if known else " No position fix: the task points at the zone or district centre; "
                                               "find the worker by radio."),
            # the crew must find the person: the task (internal topic) carries the last position
            location=where, district=district, required_skills=["incident_response"],
            related_alert_id=alert_id, created_at=a.time,
            evidence={"observed_at": a.time.isoformat(), "worker": subject, "kind": a.kind, "grade": int(a.severity),
                      "zone_ids": list(a.zone_ids), "incident_id": inc.incident_id, "map_png": tr.map_path,
                      "position_known": known})
        self._step(tr, "dispatched", a.time, f"task {task.task_id}")
        return [task_output(task, source=SOURCE)]

    def _worker_cleared(self, kind: str, ep: _Episode, pid: str, district: str | None, t: pd.Timestamp) -> Output:
        zh, en, _ = ALERT_NAMES[kind]
        subject = episode_pseudonym(pid, ep.start, self.key)  # the episode's, as its raise and updates said
        alert = Alert(
            alert_id=ep.alert_id, domain="emergency", kind=kind, severity="info", status="cleared",
            title_zh=f"人员安全解除：{zh}", title_en=f"Worker safety cleared: {en}",
            message_zh=f"人员 {subject}：{zh} 已恢复正常，警报解除；请确认人员状况并记录。",
            message_en=f"Worker {subject}: {en} back to normal; alarm cleared. Confirm the worker is well and log it.",
            location=None, district=district, dedup_key=f"emergency:worker:{subject}:{kind}", raised_at=t,
            evidence={"observed_at": t.isoformat(), "worker": subject, "episode_start": ep.start.isoformat(),
                      "max_grade": ep.grade})
        return alert_output(alert, source=SOURCE)

    def _wind_from(self, f: StationForecast) -> None:
        if f.variable not in ("wind_dir", "wind_speed") or not f.values:
            return
        t = _ts(f.issued_at)
        if self.wind and t < self.wind[0]:
            return  # an older forecast arriving late must not replace the newer wind (nor blank half of it)
        prev = self.wind if self.wind and self.wind[0] <= t else (t, None, None)
        d, s = prev[1], prev[2]
        if f.variable == "wind_dir":
            d = float(f.values[0])
        else:
            s = float(f.values[0])
        self.wind = (t, d, s)

    def _current_wind(self, src: dict[str, Any], t: pd.Timestamp) -> tuple[inc_rules.Wind, str]:
        if (self.wind and self.wind[1] is not None and self.wind[2] is not None
                and abs(t - self.wind[0]) <= pd.Timedelta(hours=3)):
            return inc_rules.Wind(self.wind[0], self.wind[1], self.wind[2]), "nowcast"
        if self.observed_wind is not None and t - self.observed_wind[0] <= pd.Timedelta(hours=1):
            return inc_rules.Wind(*self.observed_wind), "observed wind (weather station)"
        if "prevailing_wind_from_deg" in src:
            return inc_rules.Wind(t, float(src["prevailing_wind_from_deg"]),
                                  float(src.get("prevailing_wind_speed_ms", 2.0))), "site prevailing wind (config)"
        return inc_rules.Wind(t, self.s.emergency_default_wind_from_deg,
                              self.s.emergency_default_wind_speed_ms), "default wind (settings)"

    def _gas(self, o: Observation) -> list[Output]:
        vals = _good_values(o)
        h2s = vals.get("h2s_ppm")
        if h2s is None:
            return []
        t = _ts(o.observed_at)
        src = self.gas_sources.get(o.sensor_id, {"source_id": o.sensor_id, "lat": o.lat, "lon": o.lon, "gas": "H2S"})
        d = self.detectors.setdefault(o.sensor_id, _Detector(src))
        low, high, _crit = self.limits.h2s_ppm
        dedup = f"emergency:gas_release:{src['source_id']}"
        out: list[Output] = []
        if d.release_at is None and h2s >= high:
            d.release_at, d.peak_ppm, d.below = t, h2s, 0
            d.alert_id = stable_id(dedup, t.isoformat())
            wind, wind_src = self._current_wind(src, t)
            rel = inc_rules.GasRelease(t, src["source_id"], float(src.get("lat", o.lat)), float(src.get("lon", o.lon)),
                                       src.get("gas", "H2S"), float(src.get("release_rate_g_s_assumed", 100.0)),
                                       float(src.get("threshold_mg_m3", 30 * 34.08 / 24.45)))
            inc, area = inc_rules.gas_evacuation_incident(rel, wind, self.city)
            tr = self._open(inc, d.alert_id, public=(rel.lat, rel.lon))
            inc = dataclasses.replace(inc, incident_id=tr.incident.incident_id)  # a fresh one if the hour's closed
            d.incident_id = inc.incident_id
            districts = list(inc.districts)
            evidence = {"observed_at": t.isoformat(), "detector": o.sensor_id, "source_id": src["source_id"],
                        "h2s_ppm": round(h2s, 2), "alarm_ppm": high, "wind_from_deg": wind.wind_from_deg,
                        "wind_speed_ms": wind.wind_speed_ms, "wind_source": wind_src,
                        "downwind_m": round(area.downwind_m), "stability": area.stability,
                        "districts": districts, "area_geojson": inc.area_geojson(), "incident_id": inc.incident_id}
            names_zh = "、".join(self.city.district(x).name_zh for x in districts)
            names_en = ", ".join(self.city.district(x).name_en for x in districts)
            alert = Alert(
                alert_id=d.alert_id, domain="emergency", kind="gas_release", severity="critical", level="red",
                title_zh=f"{rel.gas} 气体泄漏：{src['source_id']}", title_en=f"{rel.gas} release at {src['source_id']}",
                message_zh=f"检测到 {rel.gas} {h2s:.0f} ppm。立即疏散下风向 {area.downwind_m:.0f} 米范围（涉及 {names_zh}），"
                           "关闭泄漏源，救援人员佩戴正压式空气呼吸器进入。",
                message_en=f"{rel.gas} at {h2s:.0f} ppm. Evacuate {area.downwind_m:.0f} m downwind now (affects "
                           f"{names_en}), isolate the source; responders enter only with breathing apparatus.",
                location=GeoPoint(lat=rel.lat, lon=rel.lon), district=o.district or (districts[0] if districts else None),
                dedup_key=dedup, raised_at=t, evidence=evidence)
            out.append(alert_output(alert, source=SOURCE))
            task = FieldTask(
                task_id=stable_id("task", inc.incident_id), kind="respond_incident", domain="emergency",
                priority="urgent", title_zh=f"气体泄漏处置与疏散：{src['source_id']}",
                title_en=f"Gas release response and evacuation: {src['source_id']}",
                description_zh=f"{rel.gas} {h2s:.0f} ppm。组织下风向 {area.downwind_m:.0f} 米疏散，从上风向接近，佩戴呼吸器。",
                description_en=f"{rel.gas} {h2s:.0f} ppm. Evacuate {area.downwind_m:.0f} m downwind; approach from "
                               "upwind with breathing apparatus.",
                location=GeoPoint(lat=rel.lat, lon=rel.lon), district=alert.district,
                required_skills=["incident_response"], related_alert_id=d.alert_id, created_at=t,
                evidence={**evidence, "map_png": tr.map_path})
            out.append(task_output(task, source=SOURCE))
            self._step(tr, "dispatched", t, f"task {task.task_id}")
        elif d.release_at is not None:
            d.peak_ppm = max(d.peak_ppm, h2s)
            d.below = d.below + 1 if h2s < low else 0
            if d.below >= 5:
                alert = Alert(
                    alert_id=d.alert_id or stable_id(dedup, d.release_at.isoformat()), domain="emergency",
                    kind="gas_release", severity="info", status="cleared",
                    title_zh=f"气体泄漏解除：{src['source_id']}", title_en=f"Gas release over: {src['source_id']}",
                    message_zh=f"{src.get('gas', 'H2S')} 已连续 {d.below} 次低于 {low:g} ppm。复测确认后方可解除疏散。",
                    message_en=f"{src.get('gas', 'H2S')} below {low:g} ppm for {d.below} readings. Re-measure before "
                               "lifting the evacuation.",
                    location=GeoPoint(lat=o.lat, lon=o.lon), district=o.district, dedup_key=dedup, raised_at=t,
                    evidence={"observed_at": t.isoformat(), "episode_start": d.release_at.isoformat(),
                              "peak_h2s_ppm": round(d.peak_ppm, 2), "h2s_ppm": round(h2s, 2)})
                out.append(alert_output(alert, source=SOURCE))
                if d.incident_id in self.incidents:
                    self._step(self.incidents[d.incident_id], "resolved", t, "gas below the low alarm level")
                d.release_at = d.alert_id = d.incident_id = None
                d.below = 0
        return out

    def _cross_domain(self, a: Alert) -> list[Output]:
        if a.domain == "emergency":
            return []
        if a.status == "cleared":
            return self._flood_alert_cleared(a)
        t = _ts(a.raised_at)
        kind = a.kind.lower()
        low = [d.district_id for d in self.city.districts if d.low_lying]
        districts = [a.district] if a.district else low
        if a.domain == "weather" and "rainstorm" in kind:
            rate = a.evidence.get("rain_mm_h") or RAIN_MM_H_OF_LEVEL.get(a.level or "", 16.0)
            self.rain += [inc_rules.RainNowcast(t, d, float(rate)) for d in districts]
            self.cross_alert_ids += [(t, d, a.alert_id) for d in districts]
            self.cross_keys += [(t, d, a.dedup_key) for d in districts]
        elif a.domain == "water" and ("drain" in kind or "flood" in kind):
            lvl = a.evidence.get("level_m")
            rise = a.evidence.get("rise_m_per_h")
            self.drains += [inc_rules.DrainLevel(t, str(a.evidence.get("sensor_id", a.dedup_key)), d,
                                                 float(lvl) if lvl is not None else math.nan,
                                                 float(rise) if rise is not None else 0.2) for d in districts]
            self.cross_alert_ids += [(t, d, a.alert_id) for d in districts]
            self.cross_keys += [(t, d, a.dedup_key) for d in districts]
        else:
            return []
        horizon = t - pd.Timedelta(hours=6)
        self.rain = [r for r in self.rain if r.issued_at >= horizon]
        self.drains = [d for d in self.drains if d.time >= horizon]
        self.cross_alert_ids = [x for x in self.cross_alert_ids if x[0] >= horizon]
        self.cross_keys = [x for x in self.cross_keys if x[0] >= horizon]
        for tr in self.incidents.values():  # an open flood incident takes up later alerts of its district too
            if tr.district is not None and tr.open_keys and tr.district in districts:
                tr.open_keys.add(a.dedup_key)
        out: list[Output] = []
        for inc in inc_rules.flood_incidents(self.rain, self.drains, self.city):
            if inc.incident_id in self.incidents:
                continue
            did = inc.districts[0]
            tr = self._open(inc, a.alert_id, public=(inc.lat, inc.lon))
            # the weather and water alerts behind it
            tr.related = list(dict.fromkeys(i for _, d, i in self.cross_alert_ids if d == did))
            tr.open_keys = {k for _, d, k in self.cross_keys if d == did}
            tr.district = did
            dedup = f"emergency:flood:{did}"
            alert_id = stable_id(dedup, inc.opened_at.isoformat())
            sev = int(inc.severity)
            evidence = {"observed_at": inc.opened_at.isoformat(), "incident_id": inc.incident_id,
                        "evidence": list(inc.evidence), "from_alerts": list(tr.related)}
            tr.related.append(alert_id)
            alert = Alert(
                alert_id=alert_id, domain="emergency", kind="flood_incident", severity=SEVERITY[sev], level=LEVEL[sev],
                title_zh=inc.title_zh, title_en=inc.title_en,
                message_zh="暴雨临近且排水管位持续上涨。请预置排水泵、封闭下穿通道，通知低洼区居民做好转移准备。",
                message_en="Rainstorm nowcast and rising drains. Pre-position pumps, close underpasses and tell "
                           "residents of low-lying streets to be ready to move.",
                location=GeoPoint(lat=inc.lat, lon=inc.lon), district=did, dedup_key=dedup, raised_at=inc.opened_at,
                evidence=evidence)
            task = FieldTask(
                task_id=stable_id("task", inc.incident_id), kind="respond_incident", domain="emergency",
                priority="high", title_zh=f"内涝防御：{did}", title_en=f"Flood defence: {did}",
                description_zh="检查并清理雨水口，预置移动泵车，设置警戒。", description_en="Check and clear drains, "
                "pre-position mobile pumps, put up warnings.", location=GeoPoint(lat=inc.lat, lon=inc.lon),
                district=did, required_skills=["incident_response", "drain"], related_alert_id=alert_id,
                created_at=inc.opened_at, evidence={**evidence, "map_png": tr.map_path})
            out += [alert_output(alert, source=SOURCE), task_output(task, source=SOURCE)]
            self._step(tr, "dispatched", inc.opened_at, f"task {task.task_id}")
        return out

    def _flood_alert_cleared(self, a: Alert) -> list[Output]:
        """A weather or water alert behind a flood incident cleared; once all of them have, the incident is resolved
        and its alert cleared (flood incidents stayed dispatched for ever, and a longer storm opened a second one)."""
        out: list[Output] = []
        t = _ts(a.raised_at)
        for tr in self.incidents.values():
            if a.dedup_key not in tr.open_keys:
                continue
            tr.open_keys.discard(a.dedup_key)
            if tr.open_keys or tr.incident.state in (inc_rules.IncidentState.RESOLVED, inc_rules.IncidentState.REPORTED):
                continue
            self._step(tr, "resolved", t, "the weather and water alerts behind it cleared")
            dedup = f"emergency:flood:{tr.district}"
            alert = Alert(
                alert_id=stable_id(dedup, tr.incident.opened_at.isoformat()), domain="emergency",
                kind="flood_incident", severity="info", status="cleared",
                title_zh=f"内涝事件解除：{tr.district}", title_en=f"Flood incident over: {tr.district}",
                message_zh="降雨预警与排水管位告警均已解除。请确认积水已退、设施恢复后撤除警戒，并补充处置记录。",
                message_en="The rain and drain alerts behind it have all cleared. Confirm the water has gone and "
                           "the drains work before lifting the cordons, and complete the incident record.",
                location=GeoPoint(lat=tr.incident.lat, lon=tr.incident.lon), district=tr.district, dedup_key=dedup,
                raised_at=t, evidence={"observed_at": t.isoformat(), "incident_id": tr.incident.incident_id,
                                       "last_cleared": a.alert_id})
            out.append(alert_output(alert, source=SOURCE))
        return out

    # -- incidents --------------------------------------------------------------------------

    def _open(self, inc: inc_rules.Incident, alert_id: str, *, public: tuple[float, float] | None,
              points: list[dict[str, Any]] | None = None) -> _Tracked:
        tr = self.incidents.get(inc.incident_id)
        if tr is not None and tr.incident.state in (inc_rules.IncidentState.RESOLVED, inc_rules.IncidentState.REPORTED):
            # incident ids are per source and clock hour: a second release (a second fault) within the hour of one
            # already dealt with is a new incident, not a step of the closed one (which would refuse it)
            inc = dataclasses.replace(inc, incident_id=f"{inc.incident_id}-{inc.opened_at:%H%M%S}")
            tr = self.incidents.get(inc.incident_id)
        if tr is None:
            tr = self.incidents[inc.incident_id] = _Tracked(inc, [alert_id], points or [], public_location=public)
            tr.map_path = str(self.out_dir / "maps" / f"{inc.incident_id}.png")
            # the report document (PDF); its HTML page sits next to it
            tr.report_path = str(self.out_dir / "reports" / f"{inc.incident_id}.pdf")
        return tr

    def _step(self, tr: _Tracked, state: str, at: pd.Timestamp, note: str) -> None:
        last = tr.incident.timeline[-1].time if tr.incident.timeline else tr.incident.opened_at
        try:
            tr.incident = inc_rules.advance(tr.incident, state, max(at, last), "emergency-service", note)
            tr.dirty = True
        except inc_rules.InvalidTransition as exc:
            logger.info("incident step skipped", extra={"fields": {"error": str(exc)}})

    def message(self, tr: _Tracked, *, with_report: bool) -> IncidentMsg:
        inc = tr.incident
        updated = inc.timeline[-1].time if inc.timeline else inc.opened_at
        loc = GeoPoint(lat=tr.public_location[0], lon=tr.public_location[1]) if tr.public_location else None
        return IncidentMsg(
            incident_id=inc.incident_id, kind=INCIDENT_KIND.get(inc.kind, "other"), status=inc.state.value,
            severity=SEVERITY[int(inc.severity)], title_zh=inc.title_zh, title_en=inc.title_en, location=loc,
            districts=list(inc.districts), opened_at=inc.opened_at, updated_at=updated,
            related_alert_ids=list(tr.related), area_geojson=inc.area_geojson(),
            report_path=tr.report_path if with_report and Path(tr.report_path or "").exists() else None)

    async def _flush_incidents(self) -> list[Output]:
        """Store changed incidents with their steps and publish them; the reporter draws their reports."""
        from services.emergency import repository

        out: list[Output] = []
        changed = [tr for tr in self.incidents.values() if tr.dirty]
        if not changed:
            return out
        async with self.pool.connection() as conn:
            for tr in changed:
                msg = self.message(tr, with_report=True)
                steps = [(e.state.value, e.time.to_pydatetime(), e.note) for e in tr.incident.timeline]
                await repository.upsert_incident(conn, msg, steps)
                out.append(output(INCIDENTS, msg.incident_id, msg, source=SOURCE, occurred_at=msg.updated_at,
                                  event_id=stable_id(msg.incident_id, msg.status, msg.updated_at.isoformat(),
                                                     bool(msg.report_path))))
                tr.dirty = False
                tr.needs_report = True
        return out

    def _render_args(self, tr: _Tracked) -> tuple:
        inc = dataclasses.replace(tr.incident, lat=tr.public_location[0] if tr.public_location else tr.incident.lat,
                                  lon=tr.public_location[1] if tr.public_location else tr.incident.lon)
        return inc, self.city, self.zones, tr.points, tr.map_path, str(Path(tr.report_path).with_suffix(".pdf"))

    def _rendered(self, tr: _Tracked, report_path: str, why_no_pdf: str | None) -> None:
        tr.report_path = report_path
        if why_no_pdf is not None and not self.pdf_warned:
            # an image without Pango still files the HTML report; say so once, loudly
            logger.error("incident reports as HTML only: cannot draw PDF", extra={"fields": {"error": why_no_pdf}})
            self.pdf_warned = True

    def render(self, tr: _Tracked) -> None:
        """Draw the map PNG and the HTML and PDF report of one incident, here (blocking)."""
        self._rendered(tr, *render_files(*self._render_args(tr)))

    async def _render_elsewhere(self, tr: _Tracked) -> None:
        """Draw in a worker process: layout and PDF are pure-Python CPU work that, in a thread, would hold the
        GIL long enough on a loaded machine for the Kafka heartbeats to lapse and the groups to rebalance."""
        if self._drawer is None:
            self._drawer = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        try:
            got = await loop.run_in_executor(self._drawer, render_files, *self._render_args(tr))
        except BrokenProcessPool:
            logger.error("report drawer process died; starting a new one", extra={"fields": {
                "incident": tr.incident.incident_id}})
            self._drawer = None
            got = await asyncio.to_thread(render_files, *self._render_args(tr))
        self._rendered(tr, *got)

    async def reporter(self, stop: asyncio.Event, producer, every_s: float = 2.0) -> None:
        """Every few seconds: draw the reports of changed incidents, mark resolved ones reported, publish."""
        from services.emergency import repository

        while not stop.is_set():
            todo = [tr for tr in self.incidents.values() if tr.needs_report]
            for tr in todo:
                if stop.is_set():
                    break
                tr.needs_report = False
                await self._render_elsewhere(tr)
                if tr.incident.state == inc_rules.IncidentState.RESOLVED:
                    self._step(tr, "reported", tr.incident.timeline[-1].time, f"report {tr.report_path}")
                    await self._render_elsewhere(tr)
                msg = self.message(tr, with_report=True)
                steps = [(e.state.value, e.time.to_pydatetime(), e.note) for e in tr.incident.timeline]
                async with self.pool.connection() as conn:
                    await repository.upsert_incident(conn, msg, steps)
                o = output(INCIDENTS, msg.incident_id, msg, source=SOURCE, occurred_at=msg.updated_at,
                           event_id=stable_id(msg.incident_id, msg.status, msg.updated_at.isoformat(), True))
                await (await producer.send(o.topic, o.value, key=o.key))
                tr.dirty = False
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                pass
        if self._drawer is not None:
            self._drawer.shutdown(wait=False, cancel_futures=True)
            self._drawer = None


def render_files(inc: inc_rules.Incident, city: City, zones: list[Zone], points: list[dict[str, Any]],
                 map_path: str, pdf_path: str) -> tuple[str, str | None]:
    """Write an incident's map PNG, HTML report and PDF report; returns (the report's path, why there is no PDF).

    Module-level and free of service state, so a worker process can run it."""
    from services.emergency.domain.report import map_png, pdf_unavailable, render_pdf, render_report

    _write_atomic(Path(map_path), map_png(inc, city, zones, points))
    html = render_report(inc, city, datetime.now(UTC).isoformat(timespec="seconds"), zones, points)
    html_path = Path(pdf_path).with_suffix(".html")
    _write_atomic(html_path, html.encode("utf-8"))
    why = pdf_unavailable()
    if why is not None:
        return str(html_path), why
    # the PDF last: report_path is published only once it exists, and then the page exists too
    _write_atomic(Path(pdf_path), render_pdf(html))
    return pdf_path, None


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers (the HTTP routes, a dispatcher's browser) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


SAFETY_TOPICS = [SAFETY, ALERTS, NOWCASTS, OBSERVATION_TOPIC["weather"]]
PERSONAL_TOPICS = [PERSONAL_OBSERVATIONS]
EQUIPMENT_TOPICS = [EQUIPMENT]


def processors(svc: EmergencyService, bootstrap: str, group_prefix: str, readiness) -> list[StreamProcessor]:
    """The service's three consumers (the app and the tests wire them the same way)."""
    return [
        StreamProcessor("emergency-equipment", bootstrap, EQUIPMENT_TOPICS, f"{group_prefix}-equipment",
                        svc.handle_equipment, readiness, max_records=500),
        # wearables: small batches and short polls keep wearable -> alert latency low
        StreamProcessor("emergency-personal", bootstrap, PERSONAL_TOPICS, f"{group_prefix}-personal",
                        svc.handle_personal, readiness, max_records=500, poll_ms=100),
        StreamProcessor("emergency-safety", bootstrap, SAFETY_TOPICS, f"{group_prefix}-safety",
                        svc.handle_safety, readiness, max_records=500, poll_ms=100),
    ]
