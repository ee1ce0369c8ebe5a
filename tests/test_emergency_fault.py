"""Equipment fault early warning: detectors on generated pump data, and batch command 7."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.emergency.domain.fault import (
    OnlineFaultMonitor,
    alerts_from,
    fit_detector,
    persistence,
    slow_channels,
)
from services.emergency.domain.machines import pump_series

CITYOPS = str(Path(sys.executable).with_name("cityops"))
TRAIN = 1440  # one day of one-minute samples: the whole daily load cycle


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("model", ["mset", "hybrid", "pca"])
def test_developing_bearing_fault_is_detected_and_named(seed: int, model: str) -> None:
    data = pump_series(TRAIN + 800, np.random.default_rng(seed), fault_start=TRAIN + 400)
    det = fit_detector(data.iloc[:TRAIN], model=model)
    scores = det.score(data.iloc[TRAIN:])
    flags = scores.is_anomaly
    assert flags[:400].mean() < 0.15, "too many false alarms before the fault"
    onset = np.flatnonzero(flags[400:])
    assert onset.size and onset[0] < 120, "fault not flagged within two hours of its onset"
    assert flags[600:].mean() > 0.95
    last = alerts_from(scores)[-1]
    assert last.channels[0] in {"vibration_rms_mms", "bearing_temp_c"}


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("model", ["mset", "hybrid"])
def test_normal_operation_rarely_alarms(seed: int, model: str) -> None:
    data = pump_series(TRAIN + 600, np.random.default_rng(seed))
    scores = fit_detector(data.iloc[:TRAIN], model=model).score(data.iloc[TRAIN:])
    assert scores.is_anomaly.mean() < 0.1


def test_hybrid_accepts_a_load_beyond_training_when_channels_still_agree() -> None:
    # trained at 60-80 % load, run at 95 %: flow, current and vibration rise together
    rng = np.random.default_rng(5)
    n = 1500
    load = np.r_[0.7 + 0.1 * np.sin(np.arange(1000) / 50.0), np.full(n - 1000, 0.95)]
    frame = pd.DataFrame({"flow": 800 * load + rng.normal(0, 4, n), "current": 120 * load + rng.normal(0, 0.8, n),
                          "vibration": 2 + 0.8 * load + rng.normal(0, 0.02, n)})
    hybrid = fit_detector(frame.iloc[:1000], model="hybrid").score(frame.iloc[1000:])
    mset = fit_detector(frame.iloc[:1000], model="mset").score(frame.iloc[1000:])
    assert hybrid.is_anomaly.mean() < 0.1 < 0.9 < mset.is_anomaly.mean()
    broken = frame.iloc[1000:].copy()
    broken["vibration"] += 0.3  # same load, more vibration: a fault either way
    assert fit_detector(frame.iloc[:1000], model="hybrid").score(broken).is_anomaly[20:].mean() > 0.9


def test_a_single_channel_drifting_is_detected_and_it_is_the_one_named() -> None:
    rng = np.random.default_rng(7)
    n = 1500
    drive = np.sin(np.arange(n) / 40.0) + rng.normal(0, 0.05, n)
    x = np.c_[drive + rng.normal(0, 0.1, n), 2 * drive + rng.normal(0, 0.1, n), -drive + rng.normal(0, 0.1, n),
              rng.normal(0, 1, n)]
    x[1000:, 2] += np.linspace(0, 2.0, n - 1000)  # channel c breaks away from the shared driver
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    scores = fit_detector(frame.iloc[:800]).score(frame.iloc[800:])
    assert scores.is_anomaly[:200].mean() < 0.1
    assert scores.is_anomaly[500:].mean() > 0.9
    assert scores.deviating_channels(650)[0] == "c"


@pytest.mark.parametrize("model", ["mset", "hybrid", "pca"])
def test_streaming_one_sample_at_a_time_equals_the_batch_scores(model: str) -> None:
    data = pump_series(TRAIN + 200, np.random.default_rng(8), fault_start=TRAIN + 60)
    det = fit_detector(data.iloc[:TRAIN], model=model)
    batch = det.score(data.iloc[TRAIN:])
    mon = OnlineFaultMonitor(det)
    online = [mon.update(r) for r in data.iloc[TRAIN:].to_dict("records")]
    np.testing.assert_allclose([o[0] for o in online], batch.score, rtol=1e-6, atol=1e-9)
    assert [o[1] for o in online] == batch.is_anomaly.tolist()
    assert sum(o[3] for o in online) == len(alerts_from(batch))


@pytest.mark.parametrize("model", ["mset", "hybrid", "pca"])
def test_one_channel_is_a_control_chart(model: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 600)
    x[500:] += 4
    frame = pd.DataFrame({"level": x, "stuck": 1.0})  # a constant channel is left out, not divided by zero
    scores = fit_detector(frame.iloc[:400], model=model).score(frame.iloc[400:])
    assert scores.is_anomaly[:100].mean() < 0.1 and scores.is_anomaly[110:].mean() > 0.9


def test_persistence_needs_k_of_n() -> None:
    above = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    assert persistence(above, 1, 1).tolist() == above.tolist()
    assert persistence(above, 3, 5).tolist() == [0, 0, 0, 0, 1, 0, 1, 1, 1, 1]


def test_lone_drifting_channel_is_left_out_but_tied_ones_stay() -> None:
    rng = np.random.default_rng(1)
    n = 400
    load = np.cumsum(rng.normal(0, 0.1, n))
    x = np.c_[load + rng.normal(0, 0.05, n), 3 * load + rng.normal(0, 0.05, n),
              np.cumsum(rng.normal(0, 0.1, n)), rng.normal(0, 1, n)]
    assert slow_channels(x).tolist() == [False, False, True, False]


# -- batch command 7 ------------------------------------------------------------------


def _series_csv(tmp_path: Path, n_train: int = TRAIN, n_test: int = 600, fault_at: int | None = 300) -> tuple[Path, str]:
    data = pump_series(n_train + n_test, np.random.default_rng(11),
                       fault_start=None if fault_at is None else n_train + fault_at)
    times = pd.date_range("2026-05-01T00:00:00Z", periods=len(data), freq="1min")
    data.insert(0, "time", times.strftime("%Y-%m-%dT%H:%M:%SZ"))
    data["anomaly"] = 0  # label columns are ignored, even when they would give the answer away
    path = tmp_path / "pump.csv"
    data.to_csv(path, index=False)
    return path, times[n_train - 1].isoformat()


def _run_all(runs: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run several `cityops emergency detect` at once: each start pays the pandas import."""
    procs = {k: subprocess.Popen([CITYOPS, "emergency", "detect", *a], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, a in runs.items()}
    out = {}
    for k, p in procs.items():
        so, se = p.communicate(timeout=180)
        out[k] = subprocess.CompletedProcess(p.args, p.returncode, so, se)
    return out


def test_detect_writes_one_row_per_row_after_train_until_and_only_fits_on_training_rows(tmp_path: Path) -> None:
    series, t = _series_csv(tmp_path)
    df = pd.read_csv(series)
    # shuffled rows must not matter; changing rows after T must not change earlier scores
    shuffled = df.sample(frac=1.0, random_state=0)
    shuffled.loc[shuffled.index[shuffled.index >= TRAIN + 500], "flow_m3h"] *= 3
    p = tmp_path / "shuffled.csv"
    shuffled.to_csv(p, index=False)
    runs = {
        "mset": ["--series", str(series), "--train-until", t, "--out", str(tmp_path / "mset.csv")],
        "pca": ["--series", str(series), "--train-until", t, "--out", str(tmp_path / "pca.csv"), "--model", "pca"],
    }
    res = _run_all(runs)
    # the shuffled run in-process: the console script itself is covered by the two above
    from shared.cli import main

    rc = main(["emergency", "detect", "--series", str(p), "--train-until", t,
               "--out", str(tmp_path / "shuffled_out.csv")])
    res["shuffled"] = subprocess.CompletedProcess([], rc, "", "")
    for name in ("mset", "pca"):
        assert res[name].returncode == 0, res[name].stderr
        got = pd.read_csv(tmp_path / f"{name}.csv")
        assert list(got.columns) == ["time", "score", "is_anomaly"]
        assert len(got) == 600
        assert pd.to_datetime(got["time"]).min() > pd.Timestamp(t)
        assert set(got["is_anomaly"].unique()) <= {0, 1}
        assert got["is_anomaly"].iloc[:300].mean() < 0.15, name
        assert got["is_anomaly"].iloc[450:].mean() > 0.9, name
        assert got["score"].iloc[450:].median() > 1.0 > got["score"].iloc[:300].median()
    assert res["shuffled"].returncode == 0, res["shuffled"].stderr
    a, b = pd.read_csv(tmp_path / "mset.csv"), pd.read_csv(tmp_path / "shuffled_out.csv")
    assert a["time"].tolist() == b["time"].tolist()
    np.testing.assert_allclose(a["score"].iloc[:500], b["score"].iloc[:500], rtol=1e-9)
    assert b["is_anomaly"].iloc[510:].all()


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    series, t = _series_csv(tmp_path, n_train=60, n_test=20, fault_at=None)
    df = pd.read_csv(series)
    no_time = tmp_path / "no_time.csv"
    df.drop(columns="time").to_csv(no_time, index=False)
    bad_value = tmp_path / "bad_value.csv"
    d2 = df.copy()
    d2["motor_current_a"] = d2["motor_current_a"].astype(str)
    d2.loc[7, "motor_current_a"] = "12,5A"
    d2.to_csv(bad_value, index=False)
    bad_time = tmp_path / "bad_time.csv"
    d3 = df.copy()
    d3.loc[3, "time"] = "yesterday"
    d3.to_csv(bad_time, index=False)
    empty = tmp_path / "empty.csv"
    df.iloc[:0].to_csv(empty, index=False)
    out = str(tmp_path / "out.csv")
    return {
        "missing file": (["--series", str(tmp_path / "nope.csv"), "--train-until", t, "--out", out], "nope.csv"),
        "missing column": (["--series", str(no_time), "--train-until", t, "--out", out], "'time'"),
        "unparsable value": (["--series", str(bad_value), "--train-until", t, "--out", out], "row 9"),
        "unparsable time": (["--series", str(bad_time), "--train-until", t, "--out", out], "row 5"),
        "empty data": (["--series", str(empty), "--train-until", t, "--out", out], "no data rows"),
        "bad train-until": (["--series", str(series), "--train-until", "soon", "--out", out], "--train-until"),
        "nothing before train-until": (["--series", str(series), "--train-until", "2000-01-01", "--out", out],
                                       "no rows at or before"),
    }


SUBPROCESS_CASES = ("missing file", "missing column", "unparsable value", "empty data")


def test_bad_input_exits_2_with_one_line_naming_the_fault(tmp_path: Path) -> None:
    """Through the installed console script, as an analyst runs it."""
    cases = _bad_cases(tmp_path)
    res = _run_all({k: cases[k][0] for k in SUBPROCESS_CASES})
    for case in SUBPROCESS_CASES:
        r, expected = res[case], cases[case][1]
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (case, r.stderr)
        assert len(lines) == 1 and "Traceback" not in r.stderr, (case, r.stderr)
        assert expected in lines[0], (case, lines[0])
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("case", ["unparsable time", "bad train-until", "nothing before train-until"])
def test_more_bad_input_in_process(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The same CLI entry point in-process (each console-script start costs seconds of imports)."""
    from shared.cli import main

    args, expected = _bad_cases(tmp_path)[case]
    assert main(["emergency", "detect", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "out.csv").exists()
