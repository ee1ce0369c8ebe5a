"""Weather streaming: hourly district aggregates -> CMA warning signals (SignalBoard) as alerts.

Hours are SIMULATED time (observed_at). An hour is closed once every live station has reported a
later hour (`watermark`). Only qc 1/2 values are used. Nowcasts and bulletins are not wired yet.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime

import numpy as np
import pandas as pd

from schemas.alerts import Alert
from services.weather.domain.signals import SignalBoard, rainstorm_index
from shared.stream import Output, PoisonRecord, alert_output, stable_id

SOURCE = "weather-service"
SILENT_S = 60.0
SEVERITY = {"blue": "minor", "yellow": "minor", "orange": "major", "red": "critical"}


class SignalMonitor:
    def __init__(self, stations: list[str] | None = None):
        """stations: the roster (city config); hours wait for each of them until it is SILENT_S silent."""
        self.board = SignalBoard()
        self.roster = list(stations or [])
        self.started = time.monotonic()
        # (district, hour) -> {q: [values]}; station -> latest hour seen
        self.open: dict[tuple[str, pd.Timestamp], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.rain: dict[str, dict[pd.Timestamp, float]] = defaultdict(dict)
        self.station_hour: dict[str, pd.Timestamp] = {}
        self.station_seen: dict[str, float] = {}  # wall clock of the station's last record (silence only)
        self.episode: dict[tuple[str, str], pd.Timestamp] = {}
        self.loc: dict[str, tuple[float, float]] = {}

    async def handle(self, events: list[dict]) -> list[Output]:
        for env in events:
            try:
                p = env["payload"]
                t = pd.Timestamp(p["observed_at"]).tz_convert("UTC")
                district = p.get("district") or "unknown"
                vals = {q: float(v["value"]) for q, v in p["values"].items() if v.get("qc") in (1, 2)}
                self.loc.setdefault(district, (float(p["lat"]), float(p["lon"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise PoisonRecord(f"not a weather Observation ({exc}); fix the producer") from exc
            h = t.floor("h")
            bucket = self.open[(district, h)]
            for q, v in vals.items():
                bucket[q].append(v)
            bucket["_stations"].append(hash(p["sensor_id"]))
            sid = str(p.get("sensor_id"))
            self.station_hour[sid] = max(self.station_hour.get(sid, h), h)
            self.station_seen[sid] = time.monotonic()
        return self._close_hours()

    def watermark(self) -> pd.Timestamp | None:
        """Every live station has reported up to this hour (partitions progress unevenly in a backlog);
        a station with no record for SILENT_S wall seconds is treated as silent and not waited for."""
        now = time.monotonic()
        if any(sid not in self.station_hour and now - self.started <= SILENT_S for sid in self.roster):
            return None
        live = [h for sid, h in self.station_hour.items() if now - self.station_seen[sid] <= SILENT_S]
        return min(live) if live else None

    def _close_hours(self) -> list[Output]:
        out: list[Output] = []
        wm = self.watermark()
        done = sorted({h for (_, h) in self.open if wm is not None and h < wm})
        for h in done:
            metrics: dict[str, dict[str, float]] = {"rainstorm": {}, "gale": {}, "high_temperature": {}}
            evidence: dict[str, dict] = {}
            for (d, hh) in [k for k in self.open if k[1] == h]:
                b = self.open.pop((d, hh))
                # rain is mm per 10-min step: district hourly rain = all steps' rain / stations reporting
                n_st = max(len(set(b["_stations"])), 1)
                self.rain[d][h] = float(np.sum(b["rain"]) / n_st) if b.get("rain") else 0.0
                acc = {w: sum(v for k, v in self.rain[d].items() if h - pd.Timedelta(hours=w) < k <= h)
                       for w in (3, 6, 12)}
                metrics["rainstorm"][d] = rainstorm_index(acc[3], acc[6], acc[12])
                if b.get("wind"):
                    metrics["gale"][d] = float(np.mean(b["wind"]))
                if b.get("temp"):
                    metrics["high_temperature"][d] = float(np.mean(b["temp"]))
                evidence[d] = {"rain_3h_mm": round(acc[3], 1), "rain_6h_mm": round(acc[6], 1),
                               "rain_12h_mm": round(acc[12], 1)}
            for ch in self.board.update(h + pd.Timedelta(hours=1), metrics):
                out.append(alert_output(self._alert(ch, evidence.get(ch.area, {})), source=SOURCE))
        return out

    def _alert(self, ch, ev: dict) -> Alert:
        key = (ch.signal, ch.area)
        if ch.action == "raise":
            self.episode[key] = ch.time
        start = self.episode.get(key, ch.time)
        zh, en = ch.text()
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
            message_zh=zh + " 请按预警级别做好防御准备。", message_en=en + " Follow the response plan for this level.",
            location={"lat": lat, "lon": lon} if lat is not None else None, district=ch.area, dedup_key=dedup,
            raised_at=raised_at,
            evidence={"observed_at": raised_at.isoformat(), "metric": round(ch.metric, 4), "action": ch.action,
                      "previous": ch.previous, **ev})
