"""`cityops air estimate|forecast|attribute` through the real console script (CONTRACTS.md §1–3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.air_quality.domain.episodes import simulate_episode

CITYOPS = str(Path(sys.executable).parent / "cityops")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CITYOPS, "air", *args], capture_output=True, text=True, timeout=300)


def make_obs(n_st: int = 5, hours: int = 72, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2026-01-01", periods=hours, freq="h", tz="UTC")
    rows = []
    base = 50 + 25 * np.sin(np.arange(hours) / 9)
    for s in range(n_st):
        rows.append(pd.DataFrame({
            "time": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "station_id": f"st{s}",
            "lat": 30.2 + 0.03 * s, "lon": 120.1 + 0.02 * (s % 3),
            "pm25": np.round(base * (1 + 0.1 * s) + rng.normal(0, 3, hours), 1),
            "wind_dir": (180 + 10 * np.arange(hours)) % 360, "wind_speed": 2.5, "temp": 8.0,
        }))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("air")
    obs = make_obs()
    obs.to_csv(d / "obs.csv", index=False)
    obs.to_csv(d / "obs.csv.gz", index=False)
    pd.DataFrame({"target_id": ["t1", "t2"], "lat": [30.215, 30.3], "lon": [120.11, 120.13]}).to_csv(
        d / "targets.csv", index=False)
    ep = simulate_episode(3, hours=24)
    ep.obs.assign(time=ep.obs.time.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")).to_csv(d / "episode.csv", index=False)
    ep.sources.to_csv(d / "sources.csv", index=False)
    return d


def test_estimate_contract(files):
    out = files / "est.csv"
    r = run("estimate", "--observations", str(files / "obs.csv.gz"), "--targets", str(files / "targets.csv"),
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["time", "target_id", "pm25", "pm25_std"]
    assert len(df) == 72 * 2 and df["pm25"].notna().all() and (df["pm25_std"] > 0).all()
    assert df["time"].iloc[0] == "2026-01-01T00:00:00+00:00"
    # between st0 (≈ base) and st4 (≈ 1.4·base): the estimate sits inside the stations' range
    obs = make_obs()
    lo, hi = obs.groupby("time")["pm25"].min().to_numpy(), obs.groupby("time")["pm25"].max().to_numpy()
    t1 = df[df.target_id == "t1"]["pm25"].to_numpy()
    assert np.mean((t1 >= lo - 5) & (t1 <= hi + 5)) > 0.95


def test_forecast_contract_and_no_future_leak(files):
    out = files / "fc.csv"
    r = run("forecast", "--observations", str(files / "obs.csv"), "--horizons", "1,6", "--train-until",
            "2026-01-02T23:00:00", "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["issue_time", "station_id", "horizon_h", "pm25"]
    # issue times strictly after train-until: 24 hours × 5 stations × 2 horizons
    assert len(df) == 24 * 5 * 2 and df["issue_time"].min() == "2026-01-03T00:00:00+00:00"
    assert df["pm25"].notna().all() and (df["pm25"] >= 0).all()


def test_attribute_contract(files):
    out = files / "attr.csv"
    r = run("attribute", "--observations", str(files / "episode.csv"), "--sources", str(files / "sources.csv"),
            "--out", str(out), "--threshold", "60")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["time", "station_id", "source_id", "contribution", "rank"]
    assert len(df) > 0 and (df["contribution"] > 0).all()
    obs = pd.read_csv(files / "episode.csv")
    exceed = obs[obs.pm25 > 60][["time", "station_id"]]
    assert set(map(tuple, df[["time", "station_id"]].drop_duplicates().to_numpy())) <= set(map(tuple, exceed.to_numpy()))
    for _, g in df.groupby(["time", "station_id"]):
        assert list(g["rank"]) == list(range(1, len(g) + 1))
        assert np.all(np.diff(g["contribution"].to_numpy()) <= 1e-9)


def _bad_file(d: Path, name: str, df: pd.DataFrame) -> str:
    p = d / name
    df.to_csv(p, index=False)
    return str(p)


@pytest.mark.parametrize("case", ["missing_file", "missing_column", "bad_number", "bad_time", "empty", "bad_kind",
                                  "no_wind", "bad_horizons"])
def test_bad_input_exits_2_with_one_line(files, case):
    obs = make_obs(hours=30)
    d = files
    targets, sources = str(d / "targets.csv"), str(d / "sources.csv")
    cmd = "estimate"
    if case == "missing_file":
        path, expect = str(d / "nope.csv"), "file not found"
    elif case == "missing_column":
        path, expect = _bad_file(d, "nocol.csv", obs.drop(columns="lat")), "column 'lat'"
    elif case == "bad_number":
        bad = obs.astype({"pm25": object})
        bad.loc[7, "pm25"] = "abc"
        path, expect = _bad_file(d, "badnum.csv", bad), "row 9, column 'pm25'"
    elif case == "bad_time":
        bad = obs.copy()
        bad.loc[3, "time"] = "yesterday"
        path, expect = _bad_file(d, "badtime.csv", bad), "row 5, column 'time'"
    elif case == "empty":
        path, expect = _bad_file(d, "empty.csv", obs.iloc[:0]), "no data rows"
    elif case == "bad_kind":
        cmd, path = "attribute", str(d / "episode.csv")
        src = pd.read_csv(sources)
        src.loc[2, "kind"] = "volcano"
        sources, expect = _bad_file(d, "badsrc.csv", src), "row 4, column 'kind'"
    elif case == "no_wind":
        cmd, path, expect = "attribute", _bad_file(d, "nowind.csv", obs.drop(columns="wind_dir")), "column 'wind_dir'"
    else:
        cmd, path, expect = "forecast", str(d / "obs.csv"), "--horizons"
    if cmd == "estimate":
        args = ["estimate", "--observations", path, "--targets", targets, "--out", str(d / "o.csv")]
    elif cmd == "attribute":
        args = ["attribute", "--observations", path, "--sources", sources, "--out", str(d / "o.csv")]
    else:
        args = ["forecast", "--observations", path, "--horizons", "1,x", "--train-until", "2026-01-02",
                "--out", str(d / "o.csv")]
    r = run(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expect in lines[0], lines[0]


def test_a_station_without_the_pollutant_is_answered_not_a_crash(tmp_path):
    """A station whose PM2.5 is empty all along (a failed analyser, other columns still reported) must not
    crash either command: pandas' copy-on-write hands out read-only arrays, and filling that station's
    column in place raised 'assignment destination is read-only'."""
    obs = make_obs()
    obs.loc[obs.station_id == "st2", "pm25"] = np.nan
    obs.to_csv(tmp_path / "obs.csv", index=False)
    pd.DataFrame({"target_id": ["t1"], "lat": [30.215], "lon": [120.11]}).to_csv(tmp_path / "t.csv", index=False)
    r = run("estimate", "--observations", str(tmp_path / "obs.csv"), "--targets", str(tmp_path / "t.csv"),
            "--out", str(tmp_path / "est.csv"))
    assert r.returncode == 0, r.stderr
    est = pd.read_csv(tmp_path / "est.csv")
    assert len(est) == 72 and est["pm25"].notna().all()
    r = run("forecast", "--observations", str(tmp_path / "obs.csv"), "--horizons", "1", "--train-until",
            "2026-01-02T23:00:00", "--out", str(tmp_path / "fc.csv"))
    assert r.returncode == 0, r.stderr
    fc = pd.read_csv(tmp_path / "fc.csv")
    # every station keeps its rows; one that never reported PM2.5 has nothing to forecast from: empty cells
    assert set(fc["station_id"]) == {f"st{s}" for s in range(5)}
    assert fc[fc.station_id != "st2"]["pm25"].notna().all() and fc[fc.station_id == "st2"]["pm25"].isna().all()
