"""Gas release: downwind evacuation area from a Gaussian plume (疏散范围).

Steady-state Gaussian plume with ground reflection and Briggs (rural) dispersion
coefficients for Pasquill-Gifford stability classes. The evacuation area is the
ground-level footprint where the concentration reaches the threshold, joined with a
circle around the source (people next to a release leave whatever the wind does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry import Point, Polygon
from shapely.ops import unary_union

from shared.city import EARTH_RADIUS_M

# Briggs (1973) rural: sigma_y = a x (1 + b x)^-0.5, sigma_z = c x (1 + d x)^e
_BRIGGS = {
    "A": (0.22, 0.0001, 0.20, 0.0, 0.0),
    "B": (0.16, 0.0001, 0.12, 0.0, 0.0),
    "C": (0.11, 0.0001, 0.08, 0.0002, -0.5),
    "D": (0.08, 0.0001, 0.06, 0.0015, -0.5),
    "E": (0.06, 0.0001, 0.03, 0.0003, -1.0),
    "F": (0.04, 0.0001, 0.016, 0.0003, -1.0),
}


def sigmas(x_m: np.ndarray, stability: str) -> tuple[np.ndarray, np.ndarray]:
    a, b, c, d, e = _BRIGGS[stability]
    x = np.asarray(x_m, dtype=float)
    return a * x / np.sqrt(1 + b * x), c * x * (1 + d * x) ** e


def stability_class(wind_speed_ms: float, daytime: bool = True) -> str:
    """A rough Pasquill class from wind speed alone (moderate sun by day, cloudy night)."""
    if daytime:
        return "B" if wind_speed_ms < 2 else "C" if wind_speed_ms < 5 else "D"
    return "F" if wind_speed_ms < 2 else "E" if wind_speed_ms < 3 else "D"


def centreline_mg_m3(x_m: np.ndarray, rate_g_s: float, wind_speed_ms: float, stability: str,
                     release_height_m: float = 0.0) -> np.ndarray:
    """Ground-level concentration on the plume axis at downwind distances `x_m` (mg/m³)."""
    sy, sz = sigmas(x_m, stability)
    u = max(wind_speed_ms, 0.5)  # calm: the model breaks down; 0.5 m/s keeps it conservative
    return 1000.0 * rate_g_s / (math.pi * u * sy * sz) * np.exp(-(release_height_m**2) / (2 * sz**2))


@dataclass(frozen=True)
class EvacuationArea:
    polygon: Polygon  # lon/lat
    downwind_m: float  # how far the threshold footprint reaches
    max_halfwidth_m: float
    threshold_mg_m3: float
    stability: str
    wind_from_deg: float
    wind_speed_ms: float


def evacuation_polygon(
    lat: float,
    lon: float,
    rate_g_s: float,
    wind_from_deg: float,
    wind_speed_ms: float,
    threshold_mg_m3: float,
    *,
    stability: str | None = None,
    release_height_m: float = 0.0,
    min_radius_m: float = 150.0,
    max_range_m: float = 20_000.0,
) -> EvacuationArea:
    """Area to evacuate around and downwind of a release at (lat, lon).

    `wind_from_deg` is where the wind blows FROM (meteorological convention), so the plume
    heads towards `wind_from_deg + 180`. `threshold_mg_m3` is the level people must not
    breathe (e.g. an AEGL-2 or IDLH value for the gas).
    """
    if rate_g_s <= 0 or threshold_mg_m3 <= 0:
        raise ValueError("release rate and threshold must be positive")
    stab = stability or stability_class(wind_speed_ms)
    x = np.geomspace(1.0, max_range_m, 600)
    c0 = centreline_mg_m3(x, rate_g_s, wind_speed_ms, stab, release_height_m)
    sy, _ = sigmas(x, stab)
    ok = c0 > threshold_mg_m3
    half = np.where(ok, sy * np.sqrt(2 * np.log(np.where(ok, c0 / threshold_mg_m3, 1.0))), 0.0)
    pts_xy: list[tuple[float, float]] = []
    if ok.any():
        last = int(np.flatnonzero(ok)[-1])
        xs, hs = x[: last + 1], half[: last + 1]
        x_end = float(x[min(last + 1, len(x) - 1)])
        pts_xy = [(0.0, 0.0), *zip(xs, hs, strict=True), (x_end, 0.0), *zip(xs[::-1], -hs[::-1], strict=True)]
        downwind = x_end
    else:
        downwind = 0.0
    # rotate: plume axis points to the bearing the wind blows TOWARDS (clockwise from north)
    theta = math.radians((wind_from_deg + 180.0) % 360.0)
    east, north = math.sin(theta), math.cos(theta)

    def to_lonlat(px: float, py: float) -> tuple[float, float]:
        # py is to the right of the axis when looking downwind
        e_m = px * east + py * north
        n_m = px * north - py * east
        dlat = math.degrees(n_m / EARTH_RADIUS_M)
        dlon = math.degrees(e_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
        return lon + dlon, lat + dlat

    circle_m = Point(0, 0).buffer(min_radius_m, 32)
    shapes = [circle_m]
    if len(pts_xy) >= 4:
        shapes.append(Polygon(pts_xy).buffer(0))
    local = unary_union(shapes)
    if local.geom_type != "Polygon":
        local = local.convex_hull
    poly = Polygon([to_lonlat(px, py) for px, py in local.exterior.coords])
    return EvacuationArea(poly, downwind, float(half.max()) if ok.any() else 0.0, threshold_mg_m3, stab,
                          wind_from_deg, wind_speed_ms)
