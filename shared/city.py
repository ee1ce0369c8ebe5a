"""The city's geography: districts, bounds and distances, shared by every service.

The default city is synthetic (a 3 × 3 grid of districts around a centre point) so that
tests and the demo run anywhere; a real deployment loads its districts from a YAML file
with the same fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

EARTH_RADIUS_M = 6_371_000.0


@dataclass(frozen=True)
class District:
    district_id: str
    name_zh: str
    name_en: str
    # lon_min, lat_min, lon_max, lat_max
    bbox: tuple[float, float, float, float]
    land_use: str = "urban"  # urban | suburban | industrial | rural
    low_lying: bool = False

    def contains(self, lat: float, lon: float) -> bool:
        x0, y0, x1, y1 = self.bbox
        return x0 <= lon < x1 and y0 <= lat < y1

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (y0 + y1) / 2, (x0 + x1) / 2


@dataclass(frozen=True)
class City:
    name: str
    centre_lat: float
    centre_lon: float
    districts: tuple[District, ...] = field(default_factory=tuple)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        xs0, ys0, xs1, ys1 = zip(*(d.bbox for d in self.districts), strict=True)
        return min(xs0), min(ys0), max(xs1), max(ys1)

    def district_of(self, lat: float, lon: float) -> str | None:
        for d in self.districts:
            if d.contains(lat, lon):
                return d.district_id
        return None

    def centre_of(self, district_id: str | None) -> tuple[float, float] | None:
        """(lat, lon) of a district's centre; None for no district or one this city does not have."""
        d = next((d for d in self.districts if d.district_id == district_id), None) if district_id else None
        return d.centre if d is not None else None

    def district(self, district_id: str) -> District:
        for d in self.districts:
            if d.district_id == district_id:
                return d
        raise KeyError(f"unknown district {district_id!r}")


_DEFAULT_NAMES = [
    ("d01", "北城区", "North Town", "urban", False),
    ("d02", "东湖区", "East Lake", "suburban", True),
    ("d03", "高新区", "Hi-Tech Park", "industrial", False),
    ("d04", "西关区", "West Gate", "urban", False),
    ("d05", "中心区", "Central", "urban", True),
    ("d06", "港口区", "Harbour", "industrial", True),
    ("d07", "南山区", "South Hills", "rural", False),
    ("d08", "河滨区", "Riverside", "suburban", True),
    ("d09", "开发区", "Development Zone", "industrial", False),
]


def default_city(centre_lat: float = 30.25, centre_lon: float = 120.15, size_km: float = 24.0) -> City:
    """A 3 × 3 grid of districts, `size_km` across, around the centre."""
    dlat = km_to_deg_lat(size_km) / 3
    dlon = km_to_deg_lon(size_km, centre_lat) / 3
    lat0 = centre_lat - 1.5 * dlat
    lon0 = centre_lon - 1.5 * dlon
    districts = []
    for i, (did, zh, en, use, low) in enumerate(_DEFAULT_NAMES):
        row, col = divmod(i, 3)
        # row 0 is the northern band
        y1 = lat0 + (3 - row) * dlat
        y0 = y1 - dlat
        x0 = lon0 + col * dlon
        districts.append(District(did, zh, en, (x0, y0, x0 + dlon, y1), use, low))
    return City("CityOps Demo City 示范市", centre_lat, centre_lon, tuple(districts))


def load_city(path: str | Path) -> City:
    """Load a city from YAML: name, centre_lat, centre_lon, districts[{district_id, name_zh, name_en, bbox, …}]."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    districts = tuple(
        District(
            d["district_id"], d["name_zh"], d["name_en"], tuple(d["bbox"]),
            d.get("land_use", "urban"), bool(d.get("low_lying", False)),
        )
        for d in data["districts"]
    )
    return City(data["name"], float(data["centre_lat"]), float(data["centre_lon"]), districts)


def km_to_deg_lat(km: float) -> float:
    return km * 1000.0 / (EARTH_RADIUS_M * math.pi / 180.0)


def km_to_deg_lon(km: float, lat: float) -> float:
    return km_to_deg_lat(km) / max(math.cos(math.radians(lat)), 1e-6)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def to_local_xy_m(lat, lon, lat0: float, lon0: float):
    """Equirectangular projection to metres east/north of (lat0, lon0); works on numpy arrays."""
    import numpy as np

    x = np.radians(np.asarray(lon, dtype=float) - lon0) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
    y = np.radians(np.asarray(lat, dtype=float) - lat0) * EARTH_RADIUS_M
    return x, y
