"""Observations on a regular hourly grid: one (time × station) array per variable."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

VARIABLES = ("temp", "pres", "dewp", "rain", "wind_dir", "wind_speed")


@dataclass
class StationGrid:
    """Hourly values of every variable at every station; NaN where nothing was observed."""

    times: pd.DatetimeIndex  # tz-aware UTC, hourly, regular
    station_ids: list[str]
    lat: np.ndarray
    lon: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)  # var -> (n_times, n_stations)

    @property
    def n_times(self) -> int:
        return len(self.times)

    @property
    def n_stations(self) -> int:
        return len(self.station_ids)


def to_grid(obs: pd.DataFrame, variables: list[str] | None = None) -> StationGrid:
    """Long observations (time, station_id, lat, lon, variables…) -> StationGrid.

    Times are put on the hour they are first known at (ceiled: 05:30 is row 06:00, 05:00 stays 05:00), so a row, and
    a nowcast issued at it, holds nothing observed later (the stream likewise issues hour h at h + 1); duplicate
    (hour, station) rows keep, per variable, the last value given (a row with the temperature and another with the
    pressure of the same hour make one complete hour).
    """
    variables = [v for v in (variables or VARIABLES) if v in obs.columns]
    df = obs.copy()
    df["time"] = pd.to_datetime(df["time"], utc=True).dt.ceil("h")
    if df.duplicated(["time", "station_id"]).any():
        df = df.groupby(["time", "station_id"], sort=False, as_index=False).last()  # last non-missing per column
    stations = df.groupby("station_id", sort=True)[["lat", "lon"]].first()
    times = pd.date_range(df["time"].min(), df["time"].max(), freq="h")
    t_idx = times.get_indexer(df["time"])
    s_idx = stations.index.get_indexer(df["station_id"])
    values = {}
    for v in variables:
        arr = np.full((len(times), len(stations)), np.nan)
        arr[t_idx, s_idx] = df[v].to_numpy(dtype=float)
        values[v] = arr
    return StationGrid(times, list(stations.index), stations["lat"].to_numpy(float),
                       stations["lon"].to_numpy(float), values)


def grid_index(grid: StationGrid, obs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row/column of each observation row in the grid (to map results back to the input rows)."""
    t = pd.to_datetime(obs["time"], utc=True).dt.ceil("h")
    return grid.times.get_indexer(t), pd.Index(grid.station_ids).get_indexer(obs["station_id"])


def distance_matrix_km(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Great-circle distances between stations, km."""
    p = np.radians(lat)[:, None], np.radians(lat)[None, :]
    dl = np.radians(lon)[:, None] - np.radians(lon)[None, :]
    a = np.sin((p[1] - p[0]) / 2) ** 2 + np.cos(p[0]) * np.cos(p[1]) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
