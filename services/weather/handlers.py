"""Weather streaming: quality control, warning signals, nowcasts and bulletins, hour by hour.

Hours are SIMULATED time (observed_at). An hour is closed once every live station has reported a
later hour (`SignalMonitor.watermark`: partitions progress unevenly in a backlog). When hour `h`
closes, in this order:

- signals: district aggregates of the gateway-passed readings, and for the rainstorm also the
  district's rain nowcast (CMA: rain that "has reached or will reach" the amount) -> CMA signals
  with hysteresis (`SignalBoard`) as alerts (`weather:<signal>:<district>`);
- QC: each station's hourly value (mean of its gateway-passed readings, rain summed) is judged by
  `qc_newest_hour` (gross range, step, flat line, the spatial buddy check); a value the gateway
  flagged in at least half of the hour's readings (e.g. a stuck sensor) keeps the gateway's flag.
  Flags are kept per station-hour; a failed value raises a `sensor_fault` alert
  (`weather:sensor_fault:<station>:<quantity>`), cleared after it passes again;
- nowcasts: every variable at every station 1–6 h ahead with p10/p90 from the candidates of
  `domain.nowcast` on QC-passed values only; the rolling skill picks the model per station and
  horizon. `issued_at` is the end of hour h (when its data are complete); the value for horizon k
  is the mean of the hour ending at issued_at + k h (rain: its total). Published on
  `cityops.weather.nowcast.v1` and upserted into `forecasts`;
- bulletins: per district, Chinese and English text, a PNG chart and an HTML page
  (`domain.bulletin`) on `cityops.weather.bulletins.v1` and in `bulletins`. When several hours close
  in one batch (a backlog), only the newest gets bulletins: a stale bulletin informs nobody.

Ids come from what they are about (`stable_id`) and rows are upserts on natural keys, so a replay
yields the same events and no new rows. A record that is not an Observation is a PoisonRecord
(dead-lettered); the batch is parsed completely before any state changes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from schemas.alerts import Alert, GeoPoint
from schemas.products import Bulletin, StationForecast
from services.weather.domain.grid import StationGrid
from services.weather.domain.signals import SIGNAL_ZH, SignalBoard, rainstorm_index
from shared.stream import Output, PoisonRecord, alert_output, open_alerts, output, stable_id

logger = logging.getLogger("cityops.weather")
SOURCE = "weather-service"
NOWCAST_TOPIC = "cityops.weather.nowcast.v1"
BULLETIN_TOPIC = "cityops.weather.bulletins.v1"
SILENT_S = 60.0
SEVERITY = {"blue": "minor", "yellow": "minor", "orange": "major", "red": "critical"}
UNITS = {"temp": "degC", "dewp": "degC", "pres": "hPa", "wind_speed": "m/s", "wind_dir": "deg", "rain": "mm"}
# quantities whose failed values are announced as a sensor fault (rain and wind direction have no
# step, flat-line or buddy test worth paging anyone about)
FAULT_QUANTITIES = {"temp": ("气温", "temperature"), "dewp": ("露点", "dew point"), "pres": ("气压", "pressure"),
                    "wind_speed": ("风速", "wind speed")}
PASS, NOT_EVALUATED, SUSPECT, FAIL, MISSING = 1, 2, 3, 4, 9


@dataclass(frozen=True)
class Reading:
    """One station report: value, gateway QARTOD flag and the tests that flagged it, per quantity."""

    sensor_id: str
    t: pd.Timestamp
    district: str
    lat: float
    lon: float
    values: dict[str, tuple[float, int, tuple[str, ...]]]

    @property
    def hour(self) -> pd.Timestamp:
        return self.t.floor("h")

    def passed(self, q: str) -> bool:
        """Passed the gateway's QC; a flat line of zero rain or calm wind is weather, not a stuck sensor."""
        v, qc, bad = self.values[q]
        if qc in (PASS, NOT_EVALUATED):
            return True
        return bad == ("flat_line",) and (q == "rain" or (q == "wind_speed" and v == 0.0))


def parse_readings(events: list[dict]) -> list[Reading]:
    """Every event of the batch as a Reading; the first unreadable one raises PoisonRecord."""
    out = []
    for env in events:
        try:
            p = env["payload"]
            t = pd.Timestamp(p["observed_at"]).tz_convert("UTC")
            vals = {}
            for q, v in p["values"].items():
                tests = v.get("qc_tests") or {}
                bad = tuple(sorted(k for k, f in tests.items() if f in (SUSPECT, FAIL)))
                vals[str(q)] = (float(v["value"]), int(v.get("qc", NOT_EVALUATED)), bad)
            out.append(Reading(str(p["sensor_id"]), t, p.get("district") or "unknown", float(p["lat"]),
                               float(p["lon"]), vals))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PoisonRecord(f"not a weather Observation ({exc}); fix the producer") from exc
    return out


class SignalMonitor:
    """Hourly district aggregates of gateway-passed readings -> CMA warning signals as alerts."""

    def __init__(self, stations: list[str] | None = None):
        """stations: the roster (city config); hours wait for each of them until it is SILENT_S silent."""
        self.board = SignalBoard()
        self.roster = list(stations or [])
        self.started = time.monotonic()
        # (district, hour) -> (station, observed_at) -> {quantity: value}: a redelivered record counts once
        self.open: dict[tuple[str, pd.Timestamp], dict[tuple[str, pd.Timestamp], dict[str, float]]] = defaultdict(dict)
        self.rain: dict[str, dict[pd.Timestamp, float]] = defaultdict(dict)
        # district -> hour -> mean temperature: the high-temperature signal goes by the day's maximum
        self.temp: dict[str, dict[pd.Timestamp, float]] = defaultdict(dict)
        self.station_hour: dict[str, pd.Timestamp] = {}
        self.station_seen: dict[str, float] = {}  # wall clock of the station's last record (silence only)
        self.episode: dict[tuple[str, str], pd.Timestamp] = {}
        self.loc: dict[str, tuple[float, float]] = {}
        self.last_closed: pd.Timestamp | None = None
        self.late = 0

    async def handle(self, events: list[dict]) -> list[Output]:
        readings = parse_readings(events)
        for r in readings:
            self.add(r)
        out: list[Output] = []
        for h in self.ready_hours():
            out += self.close_hour(h)
        return out

    def add(self, r: Reading) -> bool:
        """Take one reading; False if its hour is already closed (counted in `late`, not used)."""
        h = r.hour
        self.station_seen[r.sensor_id] = time.monotonic()
        if self.last_closed is not None and h <= self.last_closed:
            self.late += 1
            return False
        self.loc.setdefault(r.district, (r.lat, r.lon))
        self.open[(r.district, h)][(r.sensor_id, r.t)] = {q: v for q, (v, qc, _) in r.values.items()
                                                          if qc in (PASS, NOT_EVALUATED)}
        self.station_hour[r.sensor_id] = max(self.station_hour.get(r.sensor_id, h), h)
        return True

    def watermark(self) -> pd.Timestamp | None:
        """Every live station has reported up to this hour (partitions progress unevenly in a backlog);
        a station with no record for SILENT_S wall seconds is treated as silent and not waited for."""
        now = time.monotonic()
        if any(sid not in self.station_hour and now - self.started <= SILENT_S for sid in self.roster):
            return None
        live = [h for sid, h in self.station_hour.items() if now - self.station_seen[sid] <= SILENT_S]
        return min(live) if live else None

    def ready_hours(self) -> list[pd.Timestamp]:
        wm = self.watermark()
        return sorted({h for (_, h) in self.open if wm is not None and h < wm})

    def close_hour(self, h: pd.Timestamp, expected_rain: dict[str, list[float]] | None = None,
                   expected_temp: dict[str, list[float]] | None = None) -> list[Output]:
        """Signals of hour h from its district aggregates; the board moves to the end of the hour.

        expected_rain: per district, the rain nowcast for the coming hours (mm per hour). As in the CMA
        definitions ("will reach or has reached"), the rainstorm metric takes the wettest 3/6/12-hour
        window that ends now or later over observed plus expected rain. expected_temp: per district, the
        temperature nowcast for the coming hours; the high-temperature metric is the largest of the last
        24 hours' district means and these (as `signal_metrics`), so a hot spell's warning stands through
        its nights instead of being lifted every evening and raised again every afternoon.
        """
        out: list[Output] = []
        metrics: dict[str, dict[str, float]] = {"rainstorm": {}, "gale": {}, "high_temperature": {}}
        evidence: dict[str, dict] = {}
        for (d, hh) in [k for k in self.open if k[1] == h]:
            recs = self.open.pop((d, hh))
            by_q: dict[str, list[float]] = defaultdict(list)
            for vals in recs.values():
                for q, v in vals.items():
                    by_q[q].append(v)
            # rain is mm per 10-min step: district hourly rain = all steps' rain / stations reporting
            n_st = max(len({sid for sid, _ in recs}), 1)
            self.rain[d][h] = float(np.sum(by_q["rain"]) / n_st) if by_q.get("rain") else 0.0
            for k in [k for k in self.rain[d] if k <= h - pd.Timedelta(hours=12)]:
                del self.rain[d][k]
            seen = [self.rain[d].get(h - pd.Timedelta(hours=k), 0.0) for k in range(11, -1, -1)]
            fut = [max(0.0, float(x)) for x in (expected_rain or {}).get(d, [])]
            seq = np.array(seen + fut)
            acc = {w: float(max(seq[e - w:e].sum() for e in range(len(seen), len(seq) + 1))) for w in (3, 6, 12)}
            # gauges resolve 0.1 mm; rounding keeps sums of fractions from missing a threshold by 1e-12
            acc = {w: round(v, 2) for w, v in acc.items()}
            metrics["rainstorm"][d] = rainstorm_index(acc[3], acc[6], acc[12])
            if by_q.get("wind_speed"):
                metrics["gale"][d] = float(np.mean(by_q["wind_speed"]))
            if by_q.get("temp"):
                self.temp[d][h] = float(np.mean(by_q["temp"]))
            for k in [k for k in self.temp[d] if k <= h - pd.Timedelta(hours=24)]:
                del self.temp[d][k]
            if self.temp[d]:
                hot = max([*self.temp[d].values(), *(float(x) for x in (expected_temp or {}).get(d, []))])
                metrics["high_temperature"][d] = hot
            evidence[d] = {"rain_3h_mm": round(sum(seen[-3:]), 1), "rain_6h_mm": round(sum(seen[-6:]), 1),
                           "rain_12h_mm": round(sum(seen), 1), "rain_expected_mm": [round(x, 1) for x in fut],
                           "rain_3h_mm_with_nowcast": round(acc[3], 1)}
            if d in metrics["high_temperature"]:
                evidence[d]["temp_max_24h_c_with_nowcast"] = round(metrics["high_temperature"][d], 1)
        for ch in self.board.update(h + pd.Timedelta(hours=1), metrics):
            out.append(alert_output(self._alert(ch, evidence.get(ch.area, {})), source=SOURCE))
        self.last_closed = h if self.last_closed is None else max(self.last_closed, h)
        return out

    def _alert(self, ch, ev: dict) -> Alert:
        key = (ch.signal, ch.area)
        if ch.action == "raise":
            self.episode[key] = ch.time
        start = self.episode.get(key, ch.time)
        zh, en = ch.text()
        if ch.action == "lift":  # nothing left to prepare for
            msg_zh, msg_en = zh + " 相应防御措施可以解除。", en + " The response measures for it can be stood down."
        else:
            msg_zh, msg_en = zh + " 请按预警级别做好防御准备。", en + " Follow the response plan for this level."
        dedup = f"weather:{ch.signal}:{ch.area}"
        lat, lon = self.loc.get(ch.area, (None, None))
        raised_at: datetime = ch.time.to_pydatetime()
        return Alert(
            alert_id=stable_id(dedup, start.isoformat(), ch.action, ch.time.isoformat()) if ch.action != "raise"
            else stable_id(dedup, start.isoformat()),
            domain="weather", kind=f"{ch.signal}_signal", severity=SEVERITY.get(ch.level or ch.previous or "", "minor"),
            level=ch.level or ch.previous, status="cleared" if ch.action == "lift" else
            ("raised" if ch.action == "raise" else "updated"),
            title_zh=zh, title_en=en,
            message_zh=msg_zh, message_en=msg_en,
            location={"lat": lat, "lon": lon} if lat is not None else None, district=ch.area, dedup_key=dedup,
            raised_at=raised_at,
            evidence={"observed_at": raised_at.isoformat(), "metric": round(ch.metric, 4), "action": ch.action,
                      "previous": ch.previous, **ev})


# ------------------------------------------------------------------------------------------ the service


@dataclass
class StreamOptions:
    horizons: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    variables: list[str] = field(default_factory=lambda: list(UNITS))
    buffer_h: int = 336
    refit_every_h: int = 6
    min_train_h: int = 6
    fault_clear_h: int = 2
    # background refits (a service); False fits in line, so a test's outputs do not depend on timing
    refit_in_background: bool = True

    @classmethod
    def from_settings(cls, s) -> StreamOptions:
        return cls(list(s.weather_nowcast_horizons), list(s.weather_nowcast_variables), int(s.weather_buffer_h),
                   int(s.weather_refit_every_h), int(s.weather_min_train_h), int(s.weather_fault_clear_h))


@dataclass
class _Fault:
    start: pd.Timestamp
    clean_h: int = 0


def nowcast_config(horizons: list[int]):
    """The candidates' settings for the stream: light trees (a fit per variable and horizon every few
    hours on two shared cores), intervals from six verified hours on."""
    from services.weather.domain.nowcast import NowcastConfig

    return NowcastConfig(horizons=list(horizons), interval_window_h=336, min_interval_h=6, holdout_h=48,
                         xgb_params={"n_estimators": 80, "max_depth": 4, "learning_rate": 0.1, "subsample": 0.8,
                                     "colsample_bytree": 0.8, "min_child_weight": 5, "tree_method": "hist",
                                     "max_bin": 64, "n_jobs": 1})


def city_from_config(d: dict[str, Any] | None):
    from shared.city import City, District, default_city

    if not d:
        return default_city()
    return City(d.get("name", "city"), float(d["centre_lat"]), float(d["centre_lon"]), tuple(
        District(x["district_id"], x["name_zh"], x["name_en"], tuple(x["bbox"]), x.get("land_use", "urban"),
                 bool(x.get("low_lying", False))) for x in d["districts"]))


class WeatherService:
    """The weather stream's state: open hours, the hourly station buffer with its QC flags, models."""

    def __init__(self, options: StreamOptions | None = None, pool=None, *, config: dict[str, Any] | None = None,
                 roster: list[str] | None = None):
        cfg = config or {}
        stations = cfg.get("domains", {}).get("weather", {}).get("stations", {})
        self.opt = options or StreamOptions()
        self.pool = pool
        self.city = city_from_config(cfg.get("city"))
        self.monitor = SignalMonitor(roster if roster is not None else list(stations))
        self.meta: dict[str, tuple[float, float, str]] = {
            sid: (float(v["lat"]), float(v["lon"]), v.get("district") or "unknown") for sid, v in stations.items()}
        # hour -> station -> observed_at -> reading (a redelivered record counts once)
        self.pending: dict[pd.Timestamp, dict[str, dict[pd.Timestamp, Reading]]] = defaultdict(lambda: defaultdict(dict))
        self.raw: dict[pd.Timestamp, dict[str, dict[str, float]]] = {}  # hourly values (gateway-passed readings)
        self.flags: dict[pd.Timestamp, dict[str, dict[str, int]]] = {}  # hourly QC flag per station and quantity
        self.faults: dict[tuple[str, str], _Fault] = {}
        self.models: dict[str, Any] = {}
        self.fitted_at: pd.Timestamp | None = None
        self._fit_task: asyncio.Task | None = None
        self.nowcast_skill: dict[tuple[str, str], dict[str, Any]] = {}
        self.counts: Counter = Counter()
        # hour -> (station, quantity) -> (worst flag, tests) where most of the hour's readings failed at the gateway
        self._gateway_flags: dict[pd.Timestamp, dict[tuple[str, str], tuple[int, list[str]]]] = {}
        self.latest_casts: list[_Cast] = []
        self._recovered = False
        # xgboost forecasts issued in earlier hours (their skill is verified later) and the stations they are for
        self._cache: dict = {}
        self._cache_stations: tuple[str, ...] = ()
        # consecutive hours in which every reading of a station's quantity was the same value
        self.flat_run: Counter = Counter()

    async def restore_open_alerts(self) -> int:
        """After a restart: take up the sensor faults and warning signals this service left open.

        Faults, signal levels and their episodes live in memory and the stream resumes from its committed offsets:
        without this a fault open at a crash is never cleared, a signal in force is never lifted (and the bulletins
        say none is in force), and a signal that worsens is raised anew, which the notification service folds into
        the open alert as a repeat, so the upgrade reaches nobody. Read from the alerts table the notification
        service keeps. Returns how many were taken up."""
        rows = await open_alerts(self.pool, "weather")
        n = 0
        for r in rows:
            dedup, kind, level, raised_at, ev = r["dedup_key"], r["kind"], r["level"], r["raised_at"], r["evidence"]
            start = pd.Timestamp(raised_at).tz_convert("UTC")
            if kind == "sensor_fault" and ev.get("sensor_id") and ev.get("quantity"):
                key = (str(ev["sensor_id"]), str(ev["quantity"]))
                if key not in self.faults:
                    self.faults[key] = _Fault(pd.Timestamp(ev["observed_at"]) if ev.get("observed_at") else start)
                    n += 1
            elif kind.endswith("_signal") and level and dedup.count(":") == 2:
                _, signal, area = dedup.split(":")
                if (signal, area) not in self.monitor.board.level:
                    self.monitor.board.level[(signal, area)] = str(level)
                    self.monitor.episode[(signal, area)] = start
                    n += 1
        if n:
            logger.info("took up %d open weather alert(s) after a restart", n)
        return n

    # ---- stream --------------------------------------------------------------------------------
    async def handle(self, events: list[dict]) -> list[Output]:
        readings = parse_readings(events)  # before any state changes: a poison batch replays cleanly
        if self.pool is not None and not self._recovered and readings:
            readings = await self._recover(min(r.hour for r in readings)) + readings
        for r in readings:
            if self.monitor.add(r):
                self.pending[r.hour][r.sensor_id][r.t] = r
                if r.sensor_id not in self.meta or self.meta[r.sensor_id][2] == "unknown":
                    self.meta[r.sensor_id] = (r.lat, r.lon, r.district)
        hours = self.monitor.ready_hours()
        out: list[Output] = []
        for i, h in enumerate(hours):
            out += await self.close_hour(h)
            out += self.monitor.close_hour(h, self.expected_rain(), self.expected_temp())
            if i == len(hours) - 1:
                out += await self._bulletins(h, self.grid(passed_only=True))
        return out

    async def _recover(self, h0: pd.Timestamp) -> list[Reading]:
        """After a (re)start: the readings of the hours that may have been open, from the database.

        Offsets are committed per batch, so before a crash the records of the hour being collected were
        already committed: the stream resumes after them. The sink stored them, so they are read back
        here (the first two hours of the first batch); readings that also come again from the stream
        count once (keyed by station and time). A store flag of 3/4 on zero rain or calm wind is taken as
        the gateway's flat line (see `Reading.passed`). The day before is read too, for the districts'
        hourly temperatures: a high-temperature warning goes by the last 24 hours' maximum, and one in
        force at a night-time restart would otherwise be lifted for want of the afternoon.
        """
        from services.weather import repository

        self._recovered = True
        day = h0 - pd.Timedelta(hours=24)
        async with self.pool.connection() as conn:
            rows = await repository.weather_readings(conn, h0.to_pydatetime(), (h0 + pd.Timedelta(hours=2)).to_pydatetime())
            before = await repository.weather_readings(conn, day.to_pydatetime(), h0.to_pydatetime(), quantity="temp")
        temps: dict[tuple[str, pd.Timestamp], list[float]] = defaultdict(list)
        for sid, t, _, v, qc, d in before:
            district = d or (self.meta[sid][2] if sid in self.meta else None)
            if district and qc in (PASS, NOT_EVALUATED) and np.isfinite(v):
                temps[(district, pd.Timestamp(t).tz_convert("UTC").floor("h"))].append(float(v))
        for (district, hour), vs in temps.items():
            self.monitor.temp[district].setdefault(hour, float(np.mean(vs)))
        by_key: dict[tuple[str, pd.Timestamp], dict] = defaultdict(dict)
        district: dict[str, str] = {}
        for sid, t, q, v, qc, d in rows:
            if sid not in self.meta:
                continue  # position unknown until the station reports on the stream
            zero_flat = qc in (SUSPECT, FAIL) and v == 0.0 and q in ("rain", "wind_speed")
            by_key[(sid, pd.Timestamp(t).tz_convert("UTC"))][q] = (float(v), int(qc), ("flat_line",) if zero_flat else ())
            district[sid] = d or self.meta[sid][2]
        out = [Reading(sid, t, district[sid], self.meta[sid][0], self.meta[sid][1], vals)
               for (sid, t), vals in sorted(by_key.items())]
        if out:
            logger.info("open hours recovered from the database", extra={"fields": {"from": h0.isoformat(),
                                                                                      "readings": len(out)}})
        self.counts["recovered_readings"] += len(out)
        return out

    def expected_rain(self) -> dict[str, list[float]]:
        """Per district, the mean of its stations' newest rain nowcasts per horizon (mm per hour)."""
        per: dict[str, list[list[float]]] = defaultdict(list)
        for c in self.latest_casts:
            if c.forecast.variable == "rain" and c.forecast.horizons_h == list(range(1, len(c.forecast.values) + 1)):
                per[self.meta[c.forecast.station_id][2]].append(c.forecast.values)
        return {d: [float(x) for x in np.mean(v, axis=0)] for d, v in per.items()}

    def expected_temp(self) -> dict[str, list[float]]:
        """Per district, the mean of its stations' newest temperature nowcasts per horizon (°C)."""
        per: dict[str, list[list[float]]] = defaultdict(list)
        for c in self.latest_casts:
            if c.forecast.variable == "temp":
                per[self.meta[c.forecast.station_id][2]].append(c.forecast.values)
        return {d: [float(x) for x in np.mean(v, axis=0)] for d, v in per.items()}

    async def close_hour(self, h: pd.Timestamp) -> list[Output]:
        """QC, sensor-fault alerts and nowcasts of closed hour h (signals and bulletins follow in `handle`)."""
        self._aggregate(h)
        raw = self.grid()
        gate = self._gateway_flags.pop(h, {})
        qc = await asyncio.to_thread(_qc_newest, raw)
        self.flags[h] = {}
        tests: dict[tuple[str, str], list[str]] = {}
        for var, fl in qc.flags.items():
            for j, sid in enumerate(raw.station_ids):
                f = int(fl[0, j])
                names = [n for n, tf in qc.tests[var].items() if int(tf[0, j]) in (SUSPECT, FAIL)]
                g = gate.get((sid, var))
                if g is not None:  # most of the hour's readings failed at the gateway, or all were the same
                    f = max(f, g[0]) if f != MISSING else g[0]
                    names += g[1]
                self.flags[h].setdefault(sid, {})[var] = f
                tests[(sid, var)] = names
        out = self._fault_alerts(h, raw, tests)
        passed = self.grid(passed_only=True)
        await self._maybe_refit(h, passed)
        out += await self._nowcasts(h, passed)
        return out

    # ---- hourly values and QC -------------------------------------------------------------------
    def _aggregate(self, h: pd.Timestamp) -> None:
        row: dict[str, dict[str, float]] = {}
        gate: dict[tuple[str, str], tuple[int, list[str]]] = {}
        for sid, by_t in self.pending.pop(h, {}).items():
            vals: dict[str, list[float]] = defaultdict(list)
            bad: dict[str, list[tuple[int, tuple[str, ...]]]] = defaultdict(list)
            n: Counter = Counter()
            for r in by_t.values():
                for q in r.values:
                    n[q] += 1
                    if r.passed(q):
                        vals[q].append(r.values[q][0])
                    elif r.values[q][1] in (SUSPECT, FAIL):
                        bad[q].append((r.values[q][1], r.values[q][2]))
            row[sid] = {q: float(np.sum(v) if q == "rain" else np.mean(v)) for q, v in vals.items()}
            for q, b in bad.items():
                if 2 * len(b) >= n[q]:
                    gate[(sid, q)] = (max(f for f, _ in b), sorted({f"gateway:{t}" for _, ts in b for t in ts}))
            for q in FAULT_QUANTITIES:
                every = [r.values[q][0] for r in by_t.values() if q in r.values]
                flat = len(every) >= 4 and max(every) - min(every) < 1e-6 and not (q == "wind_speed" and every[0] == 0)
                self.flat_run[(sid, q)] = self.flat_run[(sid, q)] + 1 if flat else 0
                if flat:
                    # a whole hour unchanged is suspect, two in a row fail, whatever the gateway said
                    f = FAIL if self.flat_run[(sid, q)] >= 2 else SUSPECT
                    g = gate.get((sid, q), (PASS, []))
                    gate[(sid, q)] = (max(g[0], f), sorted({*g[1], "flat_line_hour"}))
        self.raw[h] = row
        self._gateway_flags[h] = gate
        cutoff = h - pd.Timedelta(hours=self.opt.buffer_h)
        for old in [k for k in self.raw if k <= cutoff]:
            del self.raw[old]
            self.flags.pop(old, None)

    def grid(self, passed_only: bool = False) -> StationGrid:
        """The buffer as a regular hourly grid; `passed_only`: values not flagged 1/2 are NaN."""
        hours = sorted(self.raw)
        times = pd.date_range(hours[0], hours[-1], freq="h")
        sids = sorted(self.meta)
        col = {s: j for j, s in enumerate(sids)}
        t_idx = {t: i for i, t in enumerate(times)}
        vals = {v: np.full((len(times), len(sids)), np.nan) for v in UNITS}
        for t, row in self.raw.items():
            fl = self.flags.get(t, {})
            for sid, qv in row.items():
                for q, v in qv.items():
                    if q not in vals:
                        continue
                    if passed_only and fl.get(sid, {}).get(q, NOT_EVALUATED) not in (PASS, NOT_EVALUATED):
                        continue
                    vals[q][t_idx[t], col[sid]] = v
        lat = np.array([self.meta[s][0] for s in sids])
        lon = np.array([self.meta[s][1] for s in sids])
        return StationGrid(times, sids, lat, lon, vals)

    def _fault_alerts(self, h: pd.Timestamp, raw: StationGrid, tests: dict[tuple[str, str], list[str]]) -> list[Output]:
        out: list[Output] = []
        at = h + pd.Timedelta(hours=1)
        for sid, per_q in self.flags[h].items():
            for q, f in per_q.items():
                if q not in FAULT_QUANTITIES:
                    continue
                key = (sid, q)
                fault = self.faults.get(key)
                if f == FAIL:
                    if fault is None:
                        self.faults[key] = _Fault(h)
                        out.append(alert_output(self._fault_alert(sid, q, h, at, "raise", tests.get(key, []), raw),
                                                source=SOURCE))
                        self.counts["sensor_faults_raised"] += 1
                    else:
                        fault.clean_h = 0
                elif fault is not None and f in (PASS, NOT_EVALUATED):
                    fault.clean_h += 1
                    if fault.clean_h >= self.opt.fault_clear_h:
                        out.append(alert_output(self._fault_alert(sid, q, fault.start, at, "clear", [], raw),
                                                source=SOURCE))
                        del self.faults[key]
        return out

    def _fault_alert(self, sid: str, q: str, start: pd.Timestamp, at: pd.Timestamp, action: str,
                     tests: list[str], raw: StationGrid) -> Alert:
        lat, lon, district = self.meta[sid]
        zh_q, en_q = FAULT_QUANTITIES[q]
        dedup = f"weather:sensor_fault:{sid}:{q}"
        j = raw.station_ids.index(sid)
        value = raw.values[q][-1, j]
        with np.errstate(all="ignore"):
            others = np.delete(raw.values[q][-1], j)
            buddies = float(np.nanmedian(others)) if np.isfinite(others).any() else None
        if action == "clear":
            zh = f"气象站{sid}{zh_q}传感器恢复正常，质控已通过。"
            en = f"Weather station {sid}: {en_q} sensor is reading normally again (QC passed)."
            msg_zh, msg_en = zh, en
        else:
            if any("flat_line" in t for t in tests):
                why_zh, why_en = "读数长时间不变（疑似卡滞）", "readings have not changed for a long time (stuck sensor)"
            elif any(t in ("buddy", "spike", "rate_of_change") for t in tests):
                why_zh, why_en = "读数与周边站点明显不符（疑似跳变）", "readings far from the neighbouring stations (spike)"
            else:
                why_zh, why_en = "读数超出合理范围", "readings outside the plausible range"
            zh = f"气象站{sid}{zh_q}传感器故障：{why_zh}。"
            en = f"Weather station {sid}: {en_q} sensor fault — {why_en}."
            msg_zh = zh + " 数据已标记为失败、保留但不用于预报，请安排现场检修。"
            msg_en = en + " The values are flagged as failed, kept, and not used by the nowcasts; please send a technician."
        return Alert(
            alert_id=stable_id(dedup, start.isoformat()) if action == "raise"
            else stable_id(dedup, start.isoformat(), "clear", at.isoformat()),
            domain="weather", kind="sensor_fault", severity="minor", status="raised" if action == "raise" else "cleared",
            title_zh=zh, title_en=en, message_zh=msg_zh, message_en=msg_en, location=GeoPoint(lat=lat, lon=lon),
            district=district, dedup_key=dedup, raised_at=at.to_pydatetime(),
            evidence={"sensor_id": sid, "quantity": q, "observed_at": (start if action == "raise" else at).isoformat(),
                      "qc_flag": FAIL if action == "raise" else PASS, "tests": sorted(set(tests)),
                      "value": None if not np.isfinite(value) else round(float(value), 2),
                      "buddies_median": None if buddies is None else round(buddies, 2)})

    # ---- nowcasts --------------------------------------------------------------------------------
    async def _maybe_refit(self, h: pd.Timestamp, passed: StationGrid) -> None:
        if self._fit_task is not None and self._fit_task.done():
            self._fit_task.result()
            self._fit_task = None
        due = self.fitted_at is None or h - self.fitted_at >= pd.Timedelta(hours=self.opt.refit_every_h)
        if not due or passed.n_times < self.opt.min_train_h or self._fit_task is not None:
            return
        self.fitted_at = h
        variables = [v for v in self.opt.variables if np.isfinite(passed.values[v]).any()]

        async def fit() -> None:
            models = await asyncio.to_thread(_fit_all, passed, variables, h, self.opt.horizons)
            self.models.update(models)
            logger.info("nowcasters refitted", extra={"fields": {"until": h.isoformat(), "hours": passed.n_times}})

        if self.opt.refit_in_background:
            self._fit_task = asyncio.create_task(fit(), name="weather-refit")
        else:
            await fit()

    async def _nowcasts(self, h: pd.Timestamp, passed: StationGrid) -> list[Output]:
        issued = h + pd.Timedelta(hours=1)
        if self._cache_stations != tuple(passed.station_ids):  # the cache's rows are per station list
            self._cache_stations, self._cache = tuple(passed.station_ids), {}
        casts = await asyncio.to_thread(_nowcast_all, passed, dict(self.models), self.opt, issued, self._cache)
        self.latest_casts = casts
        if self.pool is not None and casts:
            from services.weather import repository

            async with self.pool.connection() as conn:
                await repository.write_nowcasts(conn, [(c.forecast, c.models) for c in casts])
        out = []
        for c in casts:
            self.nowcast_skill[(c.forecast.station_id, c.forecast.variable)] = {
                "issued_at": issued.isoformat(), "chosen": dict(zip(c.forecast.horizons_h, c.models, strict=True)),
                "skill_rmse": c.skill_rmse}
            out.append(output(NOWCAST_TOPIC, c.forecast.station_id, c.forecast, source=SOURCE,
                              occurred_at=issued.to_pydatetime(),
                              event_id=stable_id("weather:nowcast", c.forecast.station_id, c.forecast.variable,
                                                 issued.isoformat())))
        self.counts["nowcasts"] += len(out)
        return out

    # ---- bulletins -------------------------------------------------------------------------------
    async def _bulletins(self, h: pd.Timestamp, passed: StationGrid) -> list[Output]:
        from services.weather.domain.bulletin import build_bulletin

        issued = h + pd.Timedelta(hours=1)
        casts = self.latest_casts
        names = {d.district_id: (d.name_zh, d.name_en) for d in self.city.districts}
        active = self.monitor.board.active()
        out = []
        for d in sorted({m[2] for m in self.meta.values()} - {"unknown"}):
            cols = [j for j, sid in enumerate(passed.station_ids) if self.meta[sid][2] == d]
            temp = passed.values["temp"][-24:, cols]
            if not cols or not np.isfinite(temp[-1]).any():
                continue
            with np.errstate(all="ignore"), _quiet():
                observed = pd.DataFrame({"time": passed.times[-24:] + pd.Timedelta(hours=1),
                                         "temp": np.nanmean(temp, axis=1)}).dropna()
            mine = [c for c in casts if self.meta.get(c.forecast.station_id, (0, 0, ""))[2] == d]
            tc = [c for c in mine if c.forecast.variable == "temp"]
            if not tc or observed.empty:
                continue
            fc = _district_temp(tc)
            rain = [sum(c.forecast.values) for c in mine if c.forecast.variable == "rain"]
            wind = [max(c.forecast.values) for c in mine if c.forecast.variable == "wind_speed"]
            wind_obs = passed.values["wind_speed"][-1, cols]
            wind_max = float(np.nanmax([*wind, *wind_obs[np.isfinite(wind_obs)], 0.0]))
            sigs = sorted((s, lv) for (s, area), lv in active.items() if area == d and s in SIGNAL_ZH)
            name_zh, name_en = names.get(d, (d, d))
            b = await asyncio.to_thread(build_bulletin, d, name_zh, name_en, issued, observed, fc,
                                        float(np.mean(rain)) if rain else 0.0, wind_max, sigs)
            bid = stable_id("weather:bulletin", d, issued.isoformat())
            png_b64 = base64.b64encode(b.png).decode()
            signals = [f"{s}:{lv}" for s, lv in sigs]
            if self.pool is not None:
                from services.weather import repository

                async with self.pool.connection() as conn:
                    await repository.write_bulletin(conn, bulletin_id=bid, district=d, issued_at=issued.to_pydatetime(),
                                                    text_zh=b.text_zh, text_en=b.text_en, signals=signals,
                                                    chart_png_b64=png_b64, html=b.html)
            msg = Bulletin(bulletin_id=bid, district=d, issued_at=issued.to_pydatetime(), text_zh=b.text_zh,
                           text_en=b.text_en, signals=signals, chart_png_path=f"/bulletins/{bid}/chart.png",
                           html_path=f"/bulletins/{bid}")
            out.append(output(BULLETIN_TOPIC, d, msg, source=SOURCE, occurred_at=issued.to_pydatetime(), event_id=bid))
        self.counts["bulletins"] += len(out)
        return out

    def active_faults(self) -> list[dict[str, Any]]:
        return [{"sensor_id": sid, "quantity": q, "since": f.start.isoformat()} for (sid, q), f in self.faults.items()]


def _qc_newest(raw: StationGrid):
    from services.weather.domain.qc import qc_newest_hour

    return qc_newest_hour(raw)


def _fit_all(passed: StationGrid, variables: list[str], until: pd.Timestamp, horizons: list[int]) -> dict[str, Any]:
    from services.weather.domain.nowcast import fit_nowcaster

    return {v: fit_nowcaster(passed, v, until, nowcast_config(horizons)) for v in variables}


@dataclass
class _Cast:
    forecast: StationForecast
    models: list[str]  # the model chosen per horizon
    skill_rmse: dict[str, dict[int, float]]


def _nowcast_all(passed: StationGrid, models: dict[str, Any], opt: StreamOptions, issued: pd.Timestamp,
                 cache: dict | None = None) -> list[_Cast]:
    """Every variable's nowcast at every station from the grid's last hour (QC-passed values only)."""
    from services.weather.domain.nowcast import Nowcaster, nowcast

    cfg = nowcast_config(opt.horizons)
    last = passed.n_times - 1
    out: list[_Cast] = []
    for var in opt.variables:
        if var not in passed.values or not np.isfinite(passed.values[var][-1]).any():
            continue
        # before the first fit (or for a variable that had no data then): persistence and diurnal only
        model = models.get(var) or Nowcaster(var, cfg, {}, {}, None, issued)
        res = nowcast(model, passed, issue_rows=np.array([last]), cache=cache)
        hs = sorted(res.forecast)
        for j, sid in enumerate(passed.station_ids):
            vals = [float(res.forecast[k][last, j]) for k in hs]
            if not all(np.isfinite(vals)):
                continue
            lo = [float(res.p10[k][last, j]) for k in hs]
            hi = [float(res.p90[k][last, j]) for k in hs]
            has_iv = all(np.isfinite(lo)) and all(np.isfinite(hi))
            chosen = [res.models[int(res.chosen[k][last, j])] if res.chosen[k][last, j] >= 0 else "none" for k in hs]
            label = chosen[0] if len(set(chosen)) == 1 else "|".join(chosen)
            skill = {m: {k: round(float(np.sqrt(res.skill_mse[m][k][last, j])), 3) for k in hs
                         if np.isfinite(res.skill_mse[m][k][last, j])} for m in res.models}
            f = StationForecast(station_id=sid, variable=var, unit=UNITS[var], issued_at=issued.to_pydatetime(),
                                model=label, horizons_h=hs, values=[round(v, 3) for v in vals],
                                p10=[round(v, 3) for v in lo] if has_iv else None,
                                p90=[round(v, 3) for v in hi] if has_iv else None)
            out.append(_Cast(f, chosen, skill))
    return out


def _district_temp(casts: list[_Cast]) -> pd.DataFrame:
    """District mean of the stations' temperature nowcasts per horizon, with the most chosen model."""
    rows = []
    hs = casts[0].forecast.horizons_h
    for i, k in enumerate(hs):
        p10 = [c.forecast.p10[i] for c in casts if c.forecast.p10]
        p90 = [c.forecast.p90[i] for c in casts if c.forecast.p90]
        rows.append({"horizon_h": k, "value": float(np.mean([c.forecast.values[i] for c in casts])),
                     "p10": float(np.mean(p10)) if p10 else float("nan"),
                     "p90": float(np.mean(p90)) if p90 else float("nan"),
                     "model": Counter(c.models[i] for c in casts).most_common(1)[0][0]})
    return pd.DataFrame(rows)


class _quiet:
    """Silence numpy's 'Mean of empty slice' for hours when no station of a district reports."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
