"""QC of the newest hour, as the streaming service runs it: same flags as the batch tests, a spike failed
by the buddy check, a stuck sensor failed from its unchanged readings, models fed only passed values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from services.weather.domain.grid import to_grid
from services.weather.domain.qc import (
    DEFAULT_QC_CONFIG,
    FAIL,
    PASS,
    newest_series_tests,
    qc_newest_hour,
    qc_series_tests,
)
from services.weather.domain.simulate import station_layout, synthetic_observations

TIMES = pd.date_range("2026-07-01", periods=96, freq="h", tz="UTC")


def _grid(seed: int = 1, n: int = 12):
    lat, lon = station_layout(n, seed, (120.0, 30.1, 120.3, 30.4))
    return to_grid(synthetic_observations(lat, lon, [f"s{i:02d}" for i in range(n)], TIMES, seed))


@pytest.mark.parametrize("var", ["temp", "pres", "wind_speed", "dewp"])
def test_newest_hour_tests_flag_like_the_batch_tests(var):
    a = _grid().values[var].copy()
    a[50:65, 3] = a[50, 3]  # stuck
    a[70, 5] += 15  # step
    a[30:50, 9] = 0.0  # calm / zero
    a[np.random.default_rng(0).uniform(size=a.shape) < 0.05] = np.nan
    ts = np.asarray(TIMES.as_unit("s").asi8, float)
    flagged = 0
    for t in range(24, len(TIMES)):
        new = newest_series_tests(a[: t + 1], DEFAULT_QC_CONFIG[var])
        for s in range(a.shape[1]):
            old = qc_series_tests(a[t - 23: t + 1, s], ts[t - 23: t + 1], DEFAULT_QC_CONFIG[var], causal=True)
            assert {k: int(f[-1]) for k, f in old.items()} == {k: int(f[s]) for k, f in new.items()}, (t, s)
            flagged += any(int(f[s]) in (3, 4) for f in new.values())
    assert flagged > 0  # the injected faults were seen at all


def test_spike_in_the_newest_hour_fails_the_buddy_check_and_a_clean_hour_passes():
    g = _grid()
    clean = qc_newest_hour(g)
    assert set(np.unique(clean.flags["temp"])) == {PASS}
    g.values["temp"][-1, 4] += 12.0
    res = qc_newest_hour(g)
    assert res.flags["temp"][0, 4] == FAIL and res.tests["temp"]["buddy"][0, 4] == FAIL
    assert (np.delete(res.flags["temp"][0], 4) == PASS).all()


async def test_stuck_sensor_raises_one_fault_cleared_once_it_reads_again_and_is_kept_out_of_nowcasts():
    from services.weather.handlers import StreamOptions, WeatherService

    lat, lon = station_layout(8, 3, (120.0, 30.1, 120.3, 30.4))
    ids = [f"s{i}" for i in range(8)]
    times = pd.date_range("2026-07-01", periods=20 * 6, freq="10min", tz="UTC")
    obs = synthetic_observations(lat, lon, ids, times, 3)
    stuck = (obs["station_id"] == "s2") & (obs["time"] >= times[6 * 8]) & (obs["time"] < times[6 * 12])
    obs.loc[stuck, "temp"] = obs.loc[stuck, "temp"].iloc[0]
    svc = WeatherService(StreamOptions(variables=["temp"], refit_in_background=False), None, roster=ids)
    alerts = []
    for t, g in obs.groupby("time"):
        events = [{"payload": {"sensor_id": r.station_id, "district": "dx", "lat": r.lat, "lon": r.lon,
                               "observed_at": t.isoformat(), "values": {"temp": {"value": r.temp, "unit": "degC", "qc": 1}}}}
                  for r in g.itertuples()]
        alerts += [json.loads(o.value)["payload"] for o in await svc.handle(events) if o.topic == "cityops.alerts.v1"]
    faults = [a for a in alerts if a["kind"] == "sensor_fault"]
    assert [(a["status"], a["evidence"]["sensor_id"], a["evidence"]["quantity"]) for a in faults] == [
        ("raised", "s2", "temp"), ("cleared", "s2", "temp")]
    assert faults[0]["raised_at"].startswith("2026-07-01T10:00")  # the second unchanged hour (09:00) closed
    assert "flat_line_hour" in faults[0]["evidence"]["tests"] and faults[0]["title_en"] and faults[0]["title_zh"]
    assert faults[0]["dedup_key"] == faults[1]["dedup_key"] == "weather:sensor_fault:s2:temp"
    passed = svc.grid(passed_only=True)
    col = passed.station_ids.index("s2")
    hours = passed.times.get_indexer(pd.date_range("2026-07-01T08:00Z", periods=4, freq="h"))
    assert np.isnan(passed.values["temp"][hours, col]).all()  # kept in the buffer, not given to the models
    raw = svc.grid()
    assert np.isfinite(raw.values["temp"][hours, col]).all()


def test_nowcast_with_the_stream_cache_gives_the_same_forecasts_hour_after_hour():
    from services.weather.domain.grid import StationGrid
    from services.weather.domain.nowcast import NowcastConfig, fit_nowcaster, nowcast

    g = _grid(seed=2, n=6)
    cfg = NowcastConfig(horizons=[1, 3], interval_window_h=24, min_interval_h=6, holdout_h=12,
                        candidates=("persistence", "diurnal", "xgboost"),
                        xgb_params={"n_estimators": 20, "max_depth": 3, "n_jobs": 1})
    model = fit_nowcaster(g, "temp", g.times[60], cfg)
    assert model.xgb
    cache: dict = {}
    for end in range(70, 96):  # the stream: the grid grows by an hour, the newest row is issued
        sub = StationGrid(g.times[:end], g.station_ids, g.lat, g.lon, {k: v[:end] for k, v in g.values.items()})
        fresh = nowcast(model, sub, issue_rows=np.array([end - 1]))
        cached = nowcast(model, sub, issue_rows=np.array([end - 1]), cache=cache)
        for h in (1, 3):
            np.testing.assert_allclose(cached.forecast[h][-1], fresh.forecast[h][-1])
            np.testing.assert_allclose(cached.p10[h][-1], fresh.p10[h][-1])
            assert (cached.chosen[h][-1] == fresh.chosen[h][-1]).all()
    assert len(cache[("temp", "xgboost", 1)]) > 24
