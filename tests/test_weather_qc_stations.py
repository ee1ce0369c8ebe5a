"""Weather QC of stations that hold one value (a sentinel, calm) and of stations at height, batch and domain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.weather.domain.grid import to_grid
from services.weather.domain.qc import FAIL, PASS, SUSPECT, qc_grid, qc_newest_hour
from services.weather.domain.simulate import station_layout, synthetic_observations

CITYOPS = str(Path(sys.executable).with_name("cityops"))
BAD = (SUSPECT, FAIL)


def _obs(n: int = 4, days: int = 10, seed: int = 31) -> pd.DataFrame:
    lat, lon = station_layout(n, seed, (116.2, 39.8, 116.5, 40.0))
    times = pd.date_range("2025-03-01", periods=24 * days, freq="h", tz="UTC")
    return synthetic_observations(lat, lon, [f"st{i}" for i in range(n)], times, seed)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CITYOPS, "weather", *args], capture_output=True, text=True, timeout=300)


def _csv(df: pd.DataFrame, path: Path) -> Path:
    df.assign(time=df["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
    return path


def _sentinel(df: pd.DataFrame) -> pd.DataFrame:
    """Three of four barometers report the logger's -9999 'no value' throughout."""
    return df.assign(pres=np.where(df["station_id"] == "st0", df["pres"], -9999.0))


def _calm(df: pd.DataFrame) -> pd.DataFrame:
    """Three of four anemometers read 0 throughout (calm, or stalled)."""
    return df.assign(wind_speed=np.where(df["station_id"] == "st0", df["wind_speed"], 0.0))


@pytest.mark.parametrize(("case", "variable"), [("sentinel", "pres"), ("calm", "wind_speed")])
def test_neighbours_holding_one_value_neither_crash_qc_nor_nowcast(tmp_path, case, variable):
    """The buddy check's regression on the neighbours had nothing to regress on when they all held one value
    (trace 0, no ridge): `weather qc` and `weather nowcast` died with a LinAlgError traceback, exit 1. Now such a
    block is left to the median check, and the -9999 sentinels, failed by the gross range, stay out of the buddy
    check altogether instead of accusing the one barometer that still reads right."""
    df = (_sentinel if case == "sentinel" else _calm)(_obs())
    src = _csv(df, tmp_path / "obs.csv")
    r = _run("qc", "--observations", str(src), "--out", str(tmp_path / "qc.csv"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    q = pd.read_csv(tmp_path / "qc.csv")
    good = q[q["station_id"] == "st0"]
    assert (good[f"{variable}_qc"] == PASS).mean() > 0.95, good[f"{variable}_qc"].value_counts()
    if case == "sentinel":
        assert (q.loc[q["station_id"] != "st0", "pres_qc"] == FAIL).all()
    r = _run("nowcast", "--observations", str(src), "--variable", variable, "--horizons", "1",
             "--train-until", "2025-03-08T23:00:00", "--out", str(tmp_path / "nc.csv"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    nc = pd.read_csv(tmp_path / "nc.csv")
    assert nc.loc[nc["station_id"] == "st0", variable].notna().all() and len(nc) > 0


@pytest.mark.parametrize("case", ["sentinel", "calm"])
def test_neighbours_holding_one_value_in_the_domain_and_the_stream_qc(case):
    """The same solve runs in the stream's hourly QC (`qc_newest_hour`): a crash there would loop the service."""
    grid = to_grid((_sentinel if case == "sentinel" else _calm)(_obs()))
    var = "pres" if case == "sentinel" else "wind_speed"
    res = qc_grid(grid)
    assert (res.flags[var][:, 0] == PASS).mean() > 0.95
    causal = qc_grid(grid, causal=True)
    assert (causal.flags[var][:, 0] == PASS).mean() > 0.95
    newest = qc_newest_hour(grid)
    assert newest.flags[var][0, 0] == PASS


def _at_height(df: pd.DataFrame, heights_m: dict[str, float]) -> pd.DataFrame:
    h = df["station_id"].map(heights_m).to_numpy(float)
    return df.assign(pres=df["pres"] * np.exp(-h / 8400.0))


def test_stations_at_height_pass_and_are_nowcast(tmp_path):
    """Fixed sea-level limits (fail below 850 hPa, suspect below 960) held every station above ~450 m suspect and
    failed every one above ~1500 m: the pressure nowcast came out empty with exit 0, and the stream raised a sensor
    fault that never cleared. Station pressure is now judged against plausible station-level limits and the
    station's own median."""
    heights = {"st0": 1600.0, "st1": 1750.0, "st2": 1900.0, "st3": 600.0}  # ~830, ~815, ~800 and ~940 hPa
    df = _at_height(_obs(), heights)
    src = _csv(df, tmp_path / "obs.csv")
    r = _run("qc", "--observations", str(src), "--out", str(tmp_path / "qc.csv"))
    assert r.returncode == 0, r.stderr
    q = pd.read_csv(tmp_path / "qc.csv")
    assert (q["pres_qc"] == PASS).mean() > 0.97, q.groupby("station_id")["pres_qc"].value_counts()
    r = _run("nowcast", "--observations", str(src), "--variable", "pres", "--horizons", "1",
             "--train-until", "2025-03-08T23:00:00", "--out", str(tmp_path / "nc.csv"))
    assert r.returncode == 0, r.stderr
    nc = pd.read_csv(tmp_path / "nc.csv")
    assert len(nc) == 48 * 4 and nc["pres"].notna().all()
    # the stream's hourly QC: nothing fails, so no sensor fault is raised
    newest = qc_newest_hour(to_grid(df))
    assert not np.isin(newest.flags["pres"], BAD).any(), newest.tests["pres"]


def test_pressure_still_fails_a_wrong_unit_and_suspects_a_jump_from_the_station_level():
    """What the fixed limits caught stays caught: kPa logged as hPa fails; a reading 80 hPa off the station's own
    level is suspect at any height."""
    grid = to_grid(_at_height(_obs(n=6), {f"st{i}": 1500.0 + 50 * i for i in range(6)}))
    p = grid.values["pres"]
    p[100, 1] = p[100, 1] / 10.0
    p[150, 2] = p[150, 2] - 80.0
    p[200, 3] = p[200, 3] + 80.0
    for res in (qc_grid(grid), qc_grid(grid, causal=True)):
        assert res.tests["pres"]["gross_range"][100, 1] == FAIL
        assert res.tests["pres"]["gross_range"][150, 2] == SUSPECT and res.flags["pres"][150, 2] in BAD
        assert res.tests["pres"]["gross_range"][200, 3] == SUSPECT
        assert (np.delete(res.tests["pres"]["gross_range"], [100, 150, 200], axis=0) == PASS).all()
    assert qc_newest_hour(to_grid(_at_height(_obs(n=6), {f"st{i}": 0.0 for i in range(6)}))).flags["pres"].max() == PASS


def test_a_sentinel_outage_at_two_stations_does_not_accuse_the_two_that_read_right():
    """Ten hours of -9999 at two of four barometers (a logger outage) made the buddies' median -9999 for the other
    two, which then failed the buddy check, in the batch and in the stream's hourly QC, while reading right. The
    gross range's failures are now kept out of the buddy check."""
    from services.weather.domain.grid import StationGrid

    grid = to_grid(_obs())
    grid.values["pres"][150:160, 1:3] = -9999.0
    res = qc_grid(grid)
    assert (res.flags["pres"][150:160, 1:3] == FAIL).all()
    assert (res.flags["pres"][150:160, [0, 3]] == PASS).all(), res.flags["pres"][150:160]
    upto = StationGrid(grid.times[:156], grid.station_ids, grid.lat, grid.lon,
                       {k: v[:156] for k, v in grid.values.items()})
    assert qc_newest_hour(upto).flags["pres"].tolist() == [[PASS, FAIL, FAIL, PASS]]
