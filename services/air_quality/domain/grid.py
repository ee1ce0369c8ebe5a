"""Gridded estimates for the service (以算代测 on a grid): regression kriging from sensors.

The trend is a ridge regression on covariates of each place (land use of its district,
distance to registered sources and where it lies downwind of them); the residuals are
ordinarily kriged with a variogram fitted to this update's residuals. The 1-sigma is the
kriging standard deviation plus the sensor's own error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.air_quality.domain.kriging import fit_variogram, ok_weights
from shared.city import City, km_to_deg_lat, km_to_deg_lon, to_local_xy_m

LAND_USES = ("urban", "suburban", "industrial", "rural")


@dataclass(frozen=True)
class Grid:
    lat: np.ndarray  # cell centres, flattened (n_cells)
    lon: np.ndarray
    shape: tuple[int, int]  # rows (north→south), cols (west→east)
    cell_km: float


def make_grid(city: City, cell_km: float = 1.0) -> Grid:
    """Cells of `cell_km` over the city's bounding box (row 0 is the northern row)."""
    x0, y0, x1, y1 = city.bbox
    dlat = km_to_deg_lat(cell_km)
    dlon = km_to_deg_lon(cell_km, city.centre_lat)
    lats = np.arange(y1 - dlat / 2, y0, -dlat)
    lons = np.arange(x0 + dlon / 2, x1, dlon)
    la, lo = np.meshgrid(lats, lons, indexing="ij")
    return Grid(la.ravel(), lo.ravel(), la.shape, cell_km)


def place_covariates(city: City, lat, lon, sources: pd.DataFrame | None, wind_from_deg: float | None) -> np.ndarray:
    """Covariates of places: land-use one-hot, log distance to nearest source, downwind source exposure."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    cols = []
    uses = np.array([(city.district(d).land_use if d else "rural")
                     for d in (city.district_of(a, b) for a, b in zip(lat, lon, strict=True))])
    for u in LAND_USES[1:]:
        cols.append((uses == u).astype(float))
    if sources is not None and len(sources):
        x, y = to_local_xy_m(lat, lon, city.centre_lat, city.centre_lon)
        sx, sy = to_local_xy_m(sources["lat"].to_numpy(float), sources["lon"].to_numpy(float),
                               city.centre_lat, city.centre_lon)
        dx, dy = x[:, None] - sx[None, :], y[:, None] - sy[None, :]
        d = np.maximum(np.hypot(dx, dy), 100.0)
        cols.append(np.log(d.min(axis=1)))
        if wind_from_deg is not None and np.isfinite(wind_from_deg):
            th = np.radians(wind_from_deg)
            down = -dx * np.sin(th) - dy * np.cos(th)
            cross = dx * np.cos(th) - dy * np.sin(th)
            expo = np.where(down > 0, np.exp(-0.5 * (cross / (0.15 * np.maximum(down, 1) + 50)) ** 2)
                            / np.maximum(down, 200) * 1000, 0.0)
            cols.append(expo.sum(axis=1))
    return np.column_stack(cols) if cols else np.zeros((len(lat), 0))


@dataclass
class GridEstimate:
    value: np.ndarray  # n_cells
    std: np.ndarray


def estimate_grid(city: City, grid: Grid, sensor_lat, sensor_lon, sensor_value, *,
                  sensor_sd: np.ndarray | float = 0.0, sources: pd.DataFrame | None = None,
                  wind_from_deg: float | None = None, ridge: float = 1.0) -> GridEstimate:
    """Regression kriging of one update (one pollutant) from sensors to every grid cell."""
    v = np.asarray(sensor_value, float)
    ok = np.isfinite(v)
    slat, slon, v = np.asarray(sensor_lat, float)[ok], np.asarray(sensor_lon, float)[ok], v[ok]
    sd = np.broadcast_to(np.asarray(sensor_sd, float), ok.shape)[ok]
    if len(v) == 0:
        raise ValueError("no sensor values to map")
    xs, ys = to_local_xy_m(slat, slon, city.centre_lat, city.centre_lon)
    xt, yt = to_local_xy_m(grid.lat, grid.lon, city.centre_lat, city.centre_lon)
    zs = place_covariates(city, slat, slon, sources, wind_from_deg)
    zt = place_covariates(city, grid.lat, grid.lon, sources, wind_from_deg)
    mu, sc = zs.mean(axis=0), zs.std(axis=0) + 1e-9
    a = np.column_stack([np.ones(len(v)), (zs - mu) / sc])
    at = np.column_stack([np.ones(len(xt)), (zt - mu) / sc])
    reg = np.eye(a.shape[1]) * ridge
    reg[0, 0] = 0.0
    beta = np.linalg.solve(a.T @ a + reg, a.T @ v)
    resid = v - a @ beta
    vg = fit_variogram(xs, ys, resid)
    # the sensors' own error is extra nugget on the diagonal only
    lam, kvar = ok_weights(xs, ys, xt, yt, vg)
    value = at @ beta + lam @ resid
    std = np.sqrt(kvar + (lam**2) @ (sd**2))
    return GridEstimate(np.maximum(value, 0.0), std)
