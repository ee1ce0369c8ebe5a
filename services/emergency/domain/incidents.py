"""Cross-domain incidents: correlation rules on typed events, and the incident lifecycle.

The rules are pure functions: events from every domain in, :class:`Incident` objects
out. An incident's id is derived from what it is about (kind, place, hour it opened),
so feeding the same evidence twice gives the same incident — the streaming service
upserts on that id instead of opening duplicates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import pandas as pd
from shapely.geometry import Polygon, mapping

from services.emergency.domain.plume import EvacuationArea, evacuation_polygon
from services.emergency.domain.safety import SafetyAlert, Severity
from shared.city import City

# -- typed events from the other domains -----------------------------------------------


@dataclass(frozen=True)
class RainNowcast:
    """Weather nowcast for a district: expected rain rate `horizon_h` hours after `issued_at`."""

    issued_at: pd.Timestamp
    district: str
    rain_mm_h: float
    horizon_h: float = 1.0


@dataclass(frozen=True)
class DrainLevel:
    """A drain / culvert level reading with its rise rate (water domain)."""

    time: pd.Timestamp
    sensor_id: str
    district: str
    level_m: float
    rise_m_per_h: float


@dataclass(frozen=True)
class GasRelease:
    time: pd.Timestamp
    source_id: str
    lat: float
    lon: float
    gas: str
    rate_g_s: float
    threshold_mg_m3: float  # the concentration people must not breathe (e.g. IDLH)


@dataclass(frozen=True)
class Wind:
    time: pd.Timestamp
    wind_from_deg: float
    wind_speed_ms: float


@dataclass(frozen=True)
class EquipmentFault:
    time: pd.Timestamp
    machine_id: str
    station_id: str
    score: float
    channels: tuple[str, ...]


# -- incidents ---------------------------------------------------------------------------


class IncidentState(StrEnum):
    DETECTED = "detected"
    DISPATCHED = "dispatched"
    ACKNOWLEDGED = "acknowledged"
    ON_SITE = "on_site"
    RESOLVED = "resolved"
    REPORTED = "reported"


STATE_ZH = {"detected": "发现", "dispatched": "已派单", "acknowledged": "已接单", "on_site": "已到场",
            "resolved": "已处置", "reported": "已上报"}

# The normal path, plus early resolution (a false alarm, or a condition that cleared
# before a crew arrived) from any open state.
_NEXT = {
    IncidentState.DETECTED: {IncidentState.DISPATCHED, IncidentState.RESOLVED},
    IncidentState.DISPATCHED: {IncidentState.ACKNOWLEDGED, IncidentState.RESOLVED},
    IncidentState.ACKNOWLEDGED: {IncidentState.ON_SITE, IncidentState.RESOLVED},
    IncidentState.ON_SITE: {IncidentState.RESOLVED},
    IncidentState.RESOLVED: {IncidentState.REPORTED},
    IncidentState.REPORTED: set(),
}


class InvalidTransition(ValueError):
    pass


@dataclass(frozen=True)
class TimelineEntry:
    time: pd.Timestamp
    state: IncidentState
    actor: str
    note: str = ""


@dataclass(frozen=True)
class Incident:
    incident_id: str
    kind: str  # flood | gas_evacuation | pumping_station_fault | worker_safety
    severity: Severity
    opened_at: pd.Timestamp
    title_zh: str
    title_en: str
    districts: tuple[str, ...]
    lat: float
    lon: float
    evidence: tuple[dict[str, Any], ...]
    area: Polygon | None = None
    state: IncidentState = IncidentState.DETECTED
    timeline: tuple[TimelineEntry, ...] = field(default_factory=tuple)

    def area_geojson(self) -> dict[str, Any] | None:
        return None if self.area is None else dict(mapping(self.area))


def advance(incident: Incident, to: IncidentState | str, at: pd.Timestamp, actor: str, note: str = "") -> Incident:
    """The incident moved to state `to` at `at`; returns the new incident (the old one is unchanged)."""
    to = IncidentState(to)
    if to not in _NEXT[incident.state]:
        raise InvalidTransition(f"{incident.incident_id}: cannot go from {incident.state} to {to}")
    at = pd.Timestamp(at)
    last = incident.timeline[-1].time if incident.timeline else incident.opened_at
    if at < last:
        raise InvalidTransition(f"{incident.incident_id}: {to} at {at} is before the previous step at {last}")
    return replace(incident, state=to, timeline=(*incident.timeline, TimelineEntry(at, to, actor, note)))


def _incident_id(kind: str, key: str, at: pd.Timestamp) -> str:
    hour = pd.Timestamp(at).floor("h").isoformat()
    return f"inc-{kind[:5]}-" + hashlib.sha256(f"{kind}|{key}|{hour}".encode()).hexdigest()[:12]


def _open(kind: str, key: str, at: pd.Timestamp, severity: Severity, title_zh: str, title_en: str,
          districts: tuple[str, ...], lat: float, lon: float, evidence: list[dict[str, Any]],
          area: Polygon | None = None) -> Incident:
    at = pd.Timestamp(at)
    return Incident(_incident_id(kind, key, at), kind, severity, at, title_zh, title_en, districts, lat, lon,
                    tuple(evidence), area, IncidentState.DETECTED,
                    (TimelineEntry(at, IncidentState.DETECTED, "rules", title_en),))


# -- correlation rules ------------------------------------------------------------------


def flood_incidents(
    nowcasts: list[RainNowcast],
    drains: list[DrainLevel],
    city: City,
    *,
    rain_mm_h: float = 16.0,
    rise_m_per_h: float = 0.2,
    within: pd.Timedelta = pd.Timedelta(hours=2),
) -> list[Incident]:
    """Rainstorm nowcast + rising drain level + low-lying district -> one flood incident per district.

    16 mm/h is the usual short-duration rainstorm (暴雨) rate. The drain must be rising
    within `within` of the nowcast's issue time (either side: the drain may lead).
    """
    out = []
    low = {d.district_id: d for d in city.districts if d.low_lying}
    for did, district in low.items():
        storms = [n for n in nowcasts if n.district == did and n.rain_mm_h >= rain_mm_h]
        rising = [d for d in drains if d.district == did and d.rise_m_per_h >= rise_m_per_h]
        pairs = [(n, d) for n in storms for d in rising if abs(d.time - n.issued_at) <= within]
        if not pairs:
            continue
        n0, d0 = min(pairs, key=lambda p: max(p[0].issued_at, p[1].time))
        at = max(n0.issued_at, d0.time)
        evidence = [
            {"time": n0.issued_at.isoformat(), "source": "weather", "what": "rain nowcast",
             "value": f"{n0.rain_mm_h:.1f} mm/h in {n0.horizon_h:g} h"},
            *({"time": d.time.isoformat(), "source": "water", "what": f"drain {d.sensor_id} rising",
               "value": f"{d.level_m:.2f} m, +{d.rise_m_per_h:.2f} m/h"} for d in sorted({p[1] for p in pairs},
                                                                                          key=lambda d: d.time)[:5]),
        ]
        lat, lon = district.centre
        sev = Severity.CRITICAL if n0.rain_mm_h >= 2 * rain_mm_h else Severity.ALARM
        out.append(_open("flood", did, at, sev, f"{district.name_zh} 内涝风险：暴雨临近且排水管位上涨",
                         f"Flood risk in {district.name_en}: rainstorm nowcast and rising drain levels",
                         (did,), lat, lon, evidence))
    return out


def gas_evacuation_incident(release: GasRelease, wind: Wind, city: City) -> tuple[Incident, EvacuationArea]:
    """Gas release + wind -> evacuation incident with the downwind area and the districts it touches."""
    area = evacuation_polygon(release.lat, release.lon, release.rate_g_s, wind.wind_from_deg,
                              wind.wind_speed_ms, release.threshold_mg_m3)
    districts = tuple(d.district_id for d in city.districts
                      if area.polygon.intersects(Polygon.from_bounds(*d.bbox)))
    evidence = [
        {"time": release.time.isoformat(), "source": "emergency", "what": f"{release.gas} release at {release.source_id}",
         "value": f"{release.rate_g_s:g} g/s"},
        {"time": wind.time.isoformat(), "source": "weather", "what": "wind",
         "value": f"from {wind.wind_from_deg:.0f}°, {wind.wind_speed_ms:.1f} m/s"},
        {"time": release.time.isoformat(), "source": "model", "what": "evacuation area (Gaussian plume)",
         "value": f"{area.downwind_m:.0f} m downwind, class {area.stability}, ≥ {release.threshold_mg_m3:g} mg/m³"},
    ]
    inc = _open("gas_evacuation", release.source_id, release.time, Severity.CRITICAL,
                f"{release.gas} 气体泄漏：下风向 {area.downwind_m:.0f} 米范围疏散",
                f"{release.gas} release: evacuate {area.downwind_m:.0f} m downwind",
                districts, release.lat, release.lon, evidence, area.polygon)
    return inc, area


def pumping_station_incident(fault: EquipmentFault, stations: dict[str, dict[str, Any]], city: City) -> Incident:
    """A fault on a pumping station's machine -> incident for the districts the station supplies.

    `stations`: station_id -> {"lat", "lon", "supplies": [district ids], "name_zh", "name_en"}.
    """
    st = stations.get(fault.station_id)
    if st is None:
        raise KeyError(f"unknown pumping station {fault.station_id!r}")
    supplies = tuple(st.get("supplies", []))
    names_zh = "、".join(city.district(d).name_zh for d in supplies)
    names_en = ", ".join(city.district(d).name_en for d in supplies)
    evidence = [{"time": fault.time.isoformat(), "source": "emergency",
                 "what": f"fault warning on {fault.machine_id}",
                 "value": f"score {fault.score:.1f}; channels: {', '.join(fault.channels)}"}]
    return _open("pumping_station_fault", fault.station_id, fault.time, Severity.ALARM,
                 f"泵站 {st.get('name_zh', fault.station_id)} 设备故障预警，可能影响供水：{names_zh}",
                 f"Pumping station {st.get('name_en', fault.station_id)} fault warning; supply at risk: {names_en}",
                 supplies, float(st["lat"]), float(st["lon"]), evidence)


def worker_incident(alert: SafetyAlert, city: City) -> Incident | None:
    """A worker alarm at ALARM or above becomes an incident (the worker id should be pseudonymous)."""
    if alert.severity < Severity.ALARM:
        return None
    did = city.district_of(alert.lat, alert.lon)
    evidence = [{"time": alert.time.isoformat(), "source": "wearable", "what": alert.kind,
                 "value": alert.message_en}]
    return _open("worker_safety", f"{alert.worker_id}|{alert.kind}", alert.time, alert.severity,
                 alert.message_zh, alert.message_en, (did,) if did else (), alert.lat, alert.lon, evidence)
