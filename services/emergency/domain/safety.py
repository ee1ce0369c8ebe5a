"""Worker safety (人员安全作业监控) and site security rules on wearable readings.

Pure rules with a little per-worker memory (where the worker last moved, which alarms
are open), so the same :class:`SafetyMonitor` serves the streaming service, one message
at a time, and a replay of history. Each alarm is raised once when it starts or gets
worse, not on every reading, and raised again only after it has cleared.

Severity grades: 1 预警 warning, 2 报警 alarm, 3 紧急 critical. Inside a hazard zone every
alarm is raised one grade (capped at critical): the same reading means more there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import pandas as pd

from services.emergency.domain.zones import Zone, zones_at
from shared.city import haversine_m


class Severity(IntEnum):
    WARNING = 1  # 预警
    ALARM = 2  # 报警
    CRITICAL = 3  # 紧急

    @property
    def label_zh(self) -> str:
        return {1: "预警", 2: "报警", 3: "紧急"}[int(self)]


@dataclass(frozen=True)
class GasLimits:
    """Four-gas monitor alarm set points (common factory defaults; sites override them)."""

    h2s_ppm: tuple[float, float, float] = (10.0, 15.0, 50.0)  # low, high, critical
    co_ppm: tuple[float, float, float] = (35.0, 200.0, 500.0)
    lel_pct: tuple[float, float, float] = (10.0, 20.0, 50.0)
    o2_low_pct: tuple[float, float, float] = (19.5, 18.0, 16.0)  # oxygen deficiency: lower is worse
    o2_high_pct: float = 23.5  # enrichment: fire risk
    heart_rate_bpm: tuple[float, float] = (150.0, 180.0)  # warning, alarm (high)
    heart_rate_low_bpm: tuple[float, float] = (45.0, 35.0)  # warning, alarm (low)
    immobile_s: float = 90.0  # no movement this long -> man-down
    moved_m: float = 2.0  # less than this counts as not moving (GNSS jitter)


@dataclass(frozen=True)
class WearableReading:
    """One message of a worker's wearable. Absent values are NaN; flags are events."""

    time: pd.Timestamp
    worker_id: str
    lat: float = math.nan
    lon: float = math.nan
    h2s_ppm: float = math.nan
    co_ppm: float = math.nan
    o2_pct: float = math.nan
    lel_pct: float = math.nan
    heart_rate_bpm: float = math.nan
    fall: bool = False
    sos: bool = False


@dataclass(frozen=True)
class SafetyAlert:
    time: pd.Timestamp
    worker_id: str
    kind: str  # gas_h2s, gas_co, gas_lel, o2_low, o2_high, heart_rate, fall, man_down, sos, restricted_entry
    severity: Severity
    value: float
    lat: float
    lon: float
    zone_ids: tuple[str, ...]
    message_zh: str
    message_en: str


ALERT_NAMES = {
    "gas_h2s": ("硫化氢浓度超限", "H2S above limit", "ppm"),
    "gas_co": ("一氧化碳浓度超限", "CO above limit", "ppm"),
    "gas_lel": ("可燃气体超限", "Combustible gas above limit", "%LEL"),
    "o2_low": ("氧气不足", "Oxygen deficiency", "%"),
    "o2_high": ("氧气过量", "Oxygen enrichment", "%"),
    "heart_rate": ("心率异常", "Abnormal heart rate", "bpm"),
    "fall": ("人员跌倒", "Worker fall", ""),
    "man_down": ("人员倒地不动", "Man down (no movement)", "s"),
    "sos": ("一键求救", "SOS button pressed", ""),
    "restricted_entry": ("非许可时段进入限制区域", "Restricted zone entered outside permitted hours", ""),
}


def _grade_high(v: float, limits: tuple[float, ...]) -> int:
    return 0 if math.isnan(v) else sum(v >= x for x in limits)


def _grade_low(v: float, limits: tuple[float, ...]) -> int:
    return 0 if math.isnan(v) else sum(v <= x for x in limits)


def reading_grades(r: WearableReading, limits: GasLimits = GasLimits()) -> dict[str, tuple[int, float]]:
    """Stateless part of the rules: grade (0 = fine) and value of each condition in one reading."""
    hr = r.heart_rate_bpm
    hr_grade = max(_grade_high(hr, limits.heart_rate_bpm), _grade_low(hr, limits.heart_rate_low_bpm))
    return {
        "gas_h2s": (_grade_high(r.h2s_ppm, limits.h2s_ppm), r.h2s_ppm),
        "gas_co": (_grade_high(r.co_ppm, limits.co_ppm), r.co_ppm),
        "gas_lel": (_grade_high(r.lel_pct, limits.lel_pct), r.lel_pct),
        "o2_low": (_grade_low(r.o2_pct, limits.o2_low_pct), r.o2_pct),
        "o2_high": (2 if (not math.isnan(r.o2_pct) and r.o2_pct >= limits.o2_high_pct) else 0, r.o2_pct),
        "heart_rate": (hr_grade, hr),
        "fall": (2 if r.fall else 0, 1.0),
        "sos": (3 if r.sos else 0, 1.0),
    }


@dataclass
class _WorkerState:
    still_since: pd.Timestamp | None = None
    still_lat: float = math.nan
    still_lon: float = math.nan
    fell_at: pd.Timestamp | None = None
    open: dict[str, int] = field(default_factory=dict)  # kind -> grade raised
    zones: frozenset[str] = frozenset()


class SafetyMonitor:
    """Stateful rule engine: feed readings in time order per worker, get alerts back."""

    def __init__(self, zones: list[Zone] | None = None, limits: GasLimits = GasLimits()):
        self.zones = list(zones or [])
        self.limits = limits
        self._state: dict[str, _WorkerState] = {}

    def update(self, r: WearableReading) -> list[SafetyAlert]:
        st = self._state.setdefault(r.worker_id, _WorkerState())
        grades = reading_grades(r, self.limits)
        has_pos = not (math.isnan(r.lat) or math.isnan(r.lon))
        inside = zones_at(self.zones, r.lat, r.lon) if has_pos else []
        hazard_ids = tuple(z.zone_id for z in inside if z.kind == "hazard")
        alerts: list[SafetyAlert] = []

        # man-down: no movement for `immobile_s`; sooner (half the time) after a fall
        if r.fall:
            st.fell_at = r.time
        if has_pos and st.still_since is not None and math.isnan(st.still_lat):
            st.still_lat, st.still_lon = r.lat, r.lon  # a resumed man-down: still from its first position on
        moved = has_pos and (st.still_since is None
                             or haversine_m(st.still_lat, st.still_lon, r.lat, r.lon) > self.limits.moved_m)
        if moved:
            st.still_since, st.still_lat, st.still_lon = r.time, r.lat, r.lon
            st.fell_at = r.time if r.fall else None
        still_s = (r.time - st.still_since).total_seconds() if st.still_since is not None else 0.0
        need = self.limits.immobile_s / 2 if st.fell_at is not None else self.limits.immobile_s
        grades["man_down"] = (3 if still_s >= need and st.fell_at is not None else 2 if still_s >= need else 0, still_s)

        for kind, (grade, value) in grades.items():
            if grade <= 0:
                # events (fall, sos) are one-shot; conditions clear when the reading is fine again
                st.open.pop(kind, None)
                continue
            if hazard_ids:
                grade = min(grade + 1, int(Severity.CRITICAL))
            if st.open.get(kind, 0) >= grade and kind not in ("fall", "sos"):
                continue
            st.open[kind] = grade
            alerts.append(self._alert(r, kind, Severity(grade), value, hazard_ids))

        # site security: entering a restricted zone outside its permitted hours
        restricted = {z.zone_id: z for z in inside if z.kind == "restricted"}
        for zid, z in restricted.items():
            if zid not in st.zones and not z.permitted_at(r.time):
                alerts.append(self._alert(r, "restricted_entry", Severity.ALARM, math.nan, (zid,)))
        st.zones = frozenset(restricted)
        return alerts

    def resume(self, worker_id: str, kind: str, grade: int, raised_at: pd.Timestamp) -> None:
        """After a restart: a condition raised at `raised_at` and still open is open again here, so the readings
        to come update or clear it. Without this a man-down (which takes `immobile_s` of stillness to judge) read
        as cleared on the first readings of a worker who had not moved."""
        st = self._state.setdefault(worker_id, _WorkerState())
        st.open[kind] = max(st.open.get(kind, 0), grade)
        if kind == "man_down" and st.still_since is None:
            st.still_since = raised_at - pd.Timedelta(seconds=self.limits.immobile_s)

    def open_conditions(self, worker_id: str) -> dict[str, int]:
        """The conditions (kind -> grade) open for a worker right now; a kind leaving this set has cleared."""
        st = self._state.get(worker_id)
        return dict(st.open) if st is not None else {}

    @staticmethod
    def _alert(r: WearableReading, kind: str, sev: Severity, value: float, zone_ids: tuple[str, ...]) -> SafetyAlert:
        zh, en, unit = ALERT_NAMES[kind]
        val = "" if math.isnan(value) or kind in ("fall", "sos") else f" {value:.4g}{(' ' + unit) if unit else ''}"
        where_zh = f"（区域 {', '.join(zone_ids)}）" if zone_ids else ""
        where_en = f" (zone {', '.join(zone_ids)})" if zone_ids else ""
        return SafetyAlert(
            r.time, r.worker_id, kind, sev, value, r.lat, r.lon, zone_ids,
            f"【{sev.label_zh}】人员 {r.worker_id}：{zh}{val}{where_zh}",
            f"[{sev.name}] worker {r.worker_id}: {en}{val}{where_en}",
        )


_VALUE_FIELDS = ("lat", "lon", "h2s_ppm", "co_ppm", "o2_pct", "lel_pct", "heart_rate_bpm")


def reading_from_message(time: pd.Timestamp, worker_id: str, values: dict[str, float]) -> WearableReading:
    """One wearable message (quantity -> value, as the gateway publishes it) as a reading."""
    kw = {f: float(values[f]) for f in _VALUE_FIELDS if f in values and values[f] is not None}
    return WearableReading(pd.Timestamp(time), worker_id, **kw,
                           fall=bool(values.get("fall", 0) >= 0.5), sos=bool(values.get("sos", 0) >= 0.5))


def readings_from_long(readings: pd.DataFrame, worker_of: dict[str, str] | None = None) -> list[WearableReading]:
    """Long readings (time, sensor_id, quantity, value) of wearables -> readings, one per message."""
    wide = readings.pivot_table(index=["time", "sensor_id"], columns="quantity", values="value", aggfunc="last")
    out = []
    for (t, sid), row in zip(wide.index, wide.to_dict("records"), strict=True):
        vals = {k: v for k, v in row.items() if not pd.isna(v)}
        out.append(reading_from_message(t, (worker_of or {}).get(sid, sid), vals))
    return out


def readings_from_frame(wide: pd.DataFrame) -> list[WearableReading]:
    """Rows with `time, worker_id` and any of the reading fields -> readings in time order."""
    fields = ["lat", "lon", "h2s_ppm", "co_ppm", "o2_pct", "lel_pct", "heart_rate_bpm"]
    out = []
    for row in wide.sort_values("time", kind="stable").itertuples(index=False):
        d = row._asdict()
        out.append(WearableReading(
            pd.Timestamp(d["time"]), str(d["worker_id"]),
            *(float(d[f]) if f in d and d[f] is not None and not pd.isna(d[f]) else math.nan for f in fields),
            fall=bool(d.get("fall", 0) == 1), sos=bool(d.get("sos", 0) == 1),
        ))
    return out


def evaluate(readings: list[WearableReading], zones: list[Zone] | None = None,
             limits: GasLimits = GasLimits()) -> list[SafetyAlert]:
    """Replay readings (any order) through a fresh monitor; all alerts in time order."""
    mon = SafetyMonitor(zones, limits)
    out: list[SafetyAlert] = []
    for r in sorted(readings, key=lambda r: r.time):
        out.extend(mon.update(r))
    return out
