"""Station forecasts on whole hours, from data known at the issue time only (`cityops air forecast` and the domain)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

CITYOPS = str(Path(sys.executable).parent / "cityops")
T0 = pd.Timestamp("2026-01-01T00:00Z")
MET = ["temp", "pres", "dewp", "rain", "wind_dir", "wind_speed"]


def _obs(n_st: int = 6, hours: int = 240, seed: int = 3) -> pd.DataFrame:
    """Hourly PM2.5 that follows the weather (a front's pressure rise and north wind clear the air hours later)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(T0, periods=hours, freq="h")
    k = np.arange(hours)
    pres = 1015 + 8 * np.sin(k / 17) + rng.normal(0, 0.5, hours)
    temp = 5 + 6 * np.sin(2 * np.pi * k / 24) + rng.normal(0, 0.5, hours)
    wind_dir = (200 + 160 * (np.sin(k / 13) > 0.3)) % 360
    wind_speed = 1.5 + 3 * (np.sin(k / 13) > 0.3) + rng.uniform(0, 1, hours)
    base = 60 + 40 * np.sin(k / 11) - 15 * (np.sin(k / 13) > 0.3) + 2.5 * (pres - 1015)
    rows = []
    for s in range(n_st):
        rows.append(pd.DataFrame({
            "time": times, "station_id": f"st{s}", "lat": 39.9 + 0.02 * s, "lon": 116.4 + 0.015 * (s % 3),
            "pm25": np.maximum(np.round(base * (1 + 0.08 * s) + rng.normal(0, 4, hours), 1), 1.0),
            "temp": temp, "pres": pres, "dewp": temp - 8, "rain": 0.0, "wind_dir": wind_dir, "wind_speed": wind_speed,
        }))
    return pd.concat(rows, ignore_index=True)


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.assign(time=pd.to_datetime(df["time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
    return path


def test_a_reading_off_the_hour_or_a_station_at_half_past_keeps_every_station_in_the_batch_forecast(tmp_path):
    """The hourly axis ran from the file's first time: one early reading at 23:10 put it on :10, every reading on
    the hour fell off it, and the command wrote empty forecasts with exit 0; a station reporting at :30 lost all its
    data. Now each reading goes to the hour it is first known at (10:30 -> 11:00) and every station is forecast."""
    obs = _obs()
    half = obs["station_id"] == "st5"
    obs.loc[half, "time"] = obs.loc[half, "time"] - pd.Timedelta(minutes=30)  # st5 reports at :30
    stray = obs.iloc[[0]].assign(time=T0 - pd.Timedelta(minutes=50))  # one reading at 23:10 the evening before
    src = _write(pd.concat([stray, obs], ignore_index=True), tmp_path / "obs.csv")
    out = tmp_path / "fc.csv"
    train_until = T0 + pd.Timedelta(hours=191)
    r = subprocess.run([CITYOPS, "air", "forecast", "--observations", str(src), "--horizons", "1,6,6", "--train-until",
                        train_until.isoformat(), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fc = pd.read_csv(out)
    issue = pd.to_datetime(fc["issue_time"], utc=True)
    assert (issue == issue.dt.floor("h")).all() and issue.min() == train_until + pd.Timedelta(hours=1)
    # 48 issue hours x 6 stations x horizons 1 and 6 (asked for once each): nothing empty, nothing twice
    assert len(fc) == 48 * 6 * 2 and not fc.duplicated(["issue_time", "station_id", "horizon_h"]).any()
    assert set(fc["station_id"]) == {f"st{s}" for s in range(6)} and fc["pm25"].notna().all(), \
        fc[fc["pm25"].isna()].groupby("station_id").size()


def test_the_network_puts_each_reading_on_the_hour_it_is_first_known_at():
    """Domain and stream service alike (`AirService._network` builds on the same `hourly_network`)."""
    from services.air_quality.domain.forecast import hourly_network
    from services.air_quality.handlers import AirService

    obs = _obs(n_st=3, hours=48)
    half = obs["station_id"] == "st2"
    obs.loc[half, "time"] = obs.loc[half, "time"] + pd.Timedelta(minutes=30)  # 00:30, 01:30, ...
    first_half_past = obs.loc[half, "pm25"].iloc[0]
    stray = obs.iloc[[5]].assign(time=obs["time"].iloc[5] + pd.Timedelta(minutes=10), pm25=999.0)
    obs = pd.concat([obs, stray], ignore_index=True)
    for net in (hourly_network(obs, "pm25"), AirService._network(obs)):  # noqa: SLF001
        assert (net.times == net.times.floor("h")).all() and len(net.times) == 49
        v = pd.DataFrame(net.values, index=net.times, columns=net.station_ids)
        assert v["st0"].notna().sum() == 48 and v["st1"].notna().sum() == 48 and v["st2"].notna().sum() == 48
        # st2's 00:30 reading is first usable at 01:00, never at 00:00
        assert np.isnan(v["st2"].iloc[0]) and v["st2"].iloc[1] == first_half_past
        # the 05:10 reading shares the 06:00 hour with the 06:00 one: averaged
        t6 = obs["time"].iloc[5] + pd.Timedelta(hours=1)
        assert v.loc[t6, "st0"] == (999.0 + obs.loc[6, "pm25"]) / 2


def test_weather_after_the_issue_time_does_not_change_a_forecast():
    """Gaps in the weather were interpolated from both sides: a forecast issued at 09:00, in a gap from 05:00 to
    10:00, used the pressure and wind of 11:00. Gaps are now carried forward from the last hour reported."""
    from services.air_quality.domain.forecast import forecast_stations

    obs = _obs()
    train_until = T0 + pd.Timedelta(hours=191)
    day = T0 + pd.Timedelta(hours=200)  # 08:00 on the ninth day
    gap = (obs["time"] >= day + pd.Timedelta(hours=5)) & (obs["time"] <= day + pd.Timedelta(hours=10))
    a = obs.copy()
    a.loc[gap, MET] = np.nan
    b = a.copy()
    later = b["time"] == day + pd.Timedelta(hours=11)
    b.loc[later, "pres"] += 25.0
    b.loc[later, "temp"] += 15.0
    b.loc[later, "wind_dir"] = 0.0
    b.loc[later, "wind_speed"] = 9.0
    fa = forecast_stations(a, [1, 6], train_until)
    fb = forecast_stations(b, [1, 6], train_until)
    before = fa["issue_time"] < day + pd.Timedelta(hours=11)
    assert before.sum() > 0 and fa.loc[before, "pm25"].notna().all()
    diff = (fa.loc[before, "pm25"] - fb.loc[before, "pm25"]).abs()
    assert diff.max() == 0.0, fa.loc[before].assign(diff=diff)[diff > 0].head()
    # the changed hour itself is seen from 11:00 on
    assert (fa.loc[~before, "pm25"] != fb.loc[~before, "pm25"]).any()
