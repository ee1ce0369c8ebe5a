"""`cityops weather nowcast` uses nothing observed after its issue time, and asks for each horizon once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from services.weather.domain.grid import grid_index, to_grid
from services.weather.domain.simulate import station_layout, synthetic_observations

CITYOPS = str(Path(sys.executable).with_name("cityops"))
ISSUE = pd.Timestamp("2025-05-07T05:00Z")


def _obs(n: int = 4, days: int = 8, seed: int = 12) -> pd.DataFrame:
    lat, lon = station_layout(n, seed, (120.0, 30.1, 120.3, 30.4))
    times = pd.date_range("2025-05-01", periods=24 * days, freq="h", tz="UTC")
    return synthetic_observations(lat, lon, [f"ws{i}" for i in range(n)], times, seed)


def _nowcast(df: pd.DataFrame, path: Path, horizons: str) -> pd.DataFrame:
    df.assign(time=pd.to_datetime(df["time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
    out = path.with_suffix(".out.csv")
    r = subprocess.run([CITYOPS, "weather", "nowcast", "--observations", str(path), "--variable", "temp",
                        "--horizons", horizons, "--train-until", "2025-05-06T23:00:00", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return pd.read_csv(out)


def test_a_reading_at_half_past_is_not_used_by_the_forecast_issued_on_the_hour_before_it(tmp_path):
    """Times were floored to the hour: the grid row labelled 05:00 held the 05:30 reading, and the forecast issued
    at 05:00 used what was observed half an hour later. A reading now counts from the hour after it (05:30 -> 06:00,
    as the stream issues hour h at h + 1); two files that differ only in the 05:30 value forecast 05:00 alike."""
    obs = _obs()
    late = obs[(obs["time"] == ISSUE) & (obs["station_id"] == "ws0")].assign(time=ISSUE + pd.Timedelta(minutes=30))
    a = pd.concat([obs, late.assign(temp=late["temp"] + 1.5)], ignore_index=True)
    b = pd.concat([obs, late.assign(temp=late["temp"] - 1.5)], ignore_index=True)
    fa = _nowcast(a, tmp_path / "a.csv", "1,3,3")
    fb = _nowcast(b, tmp_path / "b.csv", "1,3")
    at = pd.to_datetime(fa["issue_time"], utc=True) <= ISSUE
    # issued 00:00 .. 05:00 of the 7th, 4 stations, horizons 1 and 3 (asked for once each: no row twice)
    assert at.sum() == 6 * 4 * 2 and len(fa) == len(fb)
    assert not fa.duplicated(["issue_time", "station_id", "horizon_h"]).any()
    pd.testing.assert_frame_equal(fa[at], fb[at])
    # the reading is used from 06:00 on
    six = pd.to_datetime(fa["issue_time"], utc=True) == ISSUE + pd.Timedelta(hours=1)
    assert (fa.loc[six & (fa["station_id"] == "ws0"), "temp"].to_numpy()
            != fb.loc[six & (fb["station_id"] == "ws0"), "temp"].to_numpy()).any()


def test_readings_on_the_hour_keep_their_hour():
    obs = _obs(n=3, days=2)
    grid = to_grid(obs)
    assert list(grid.times) == sorted(obs["time"].unique())
    ti, si = grid_index(grid, obs)
    assert np.array_equal(grid.times[ti], pd.DatetimeIndex(obs["time"]))
    assert np.allclose(grid.values["temp"][ti, si], obs["temp"].to_numpy())
