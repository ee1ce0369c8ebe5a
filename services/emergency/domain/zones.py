"""Geofences: hazard zones (higher severity inside) and restricted zones (permitted hours)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time as dtime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pandas as pd
from shapely.geometry import Point, Polygon, mapping, shape

ZoneKind = Literal["hazard", "restricted"]


@dataclass(frozen=True)
class Zone:
    """A polygon in lon/lat. Restricted zones list the local hours when entry is permitted."""

    zone_id: str
    kind: ZoneKind
    polygon: Polygon
    name_zh: str = ""
    name_en: str = ""
    # [(start, end)] local times, e.g. [("07:00", "19:00")]; empty = never permitted
    permitted_hours: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    timezone: str = "Asia/Shanghai"

    def contains(self, lat: float, lon: float) -> bool:
        return bool(self.polygon.covers(Point(lon, lat)))

    def permitted_at(self, when: pd.Timestamp) -> bool:
        """Whether entry is permitted at `when` (tz-aware), judged in the zone's local time."""
        local = pd.Timestamp(when).tz_convert(ZoneInfo(self.timezone)).time()
        for start, end in self.permitted_hours:
            a, b = dtime.fromisoformat(start), dtime.fromisoformat(end)
            # a window may run over midnight, e.g. 22:00-06:00 for a night crew
            if (a <= local < b) if a <= b else (local >= a or local < b):
                return True
        return False

    def to_config(self) -> dict[str, Any]:
        return {
            "zone_id": self.zone_id, "kind": self.kind, "name_zh": self.name_zh, "name_en": self.name_en,
            "geometry": mapping(self.polygon), "permitted_hours": [list(w) for w in self.permitted_hours],
            "timezone": self.timezone,
        }

    @staticmethod
    def from_config(d: dict[str, Any]) -> Zone:
        geom = shape(d["geometry"])
        if not isinstance(geom, Polygon) or not geom.is_valid or geom.is_empty:
            raise ValueError(f"zone {d.get('zone_id')!r}: geometry must be a valid, non-empty polygon")
        if d["kind"] not in ("hazard", "restricted"):
            raise ValueError(f"zone {d.get('zone_id')!r}: kind must be 'hazard' or 'restricted'")
        hours = tuple((str(a), str(b)) for a, b in d.get("permitted_hours", []))
        for a, b in hours:
            dtime.fromisoformat(a), dtime.fromisoformat(b)
        return Zone(str(d["zone_id"]), d["kind"], geom, d.get("name_zh", ""), d.get("name_en", ""), hours,
                    d.get("timezone", "Asia/Shanghai"))


def zones_at(zones: list[Zone], lat: float, lon: float, kind: ZoneKind | None = None) -> list[Zone]:
    """The zones that contain the point, optionally of one kind."""
    return [z for z in zones if (kind is None or z.kind == kind) and z.contains(lat, lon)]
