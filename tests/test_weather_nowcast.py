"""Nowcasts on generated data: better than persistence on a diurnal cycle, causal, calibrated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.weather.domain.grid import to_grid
from services.weather.domain.nowcast import (
    NowcastConfig,
    _fit_sarimax,
    fit_nowcaster,
    nowcast,
    sarimax_forecasts,
)
from services.weather.domain.simulate import station_layout, synthetic_observations

FAST = {"n_estimators": 80, "max_depth": 4, "learning_rate": 0.1, "tree_method": "hist", "n_jobs": 2}


def _grid(seed: int, n: int = 8, days: int = 40):
    lat, lon = station_layout(n, seed, (120.0, 30.1, 120.3, 30.4))
    times = pd.date_range("2025-04-01", periods=24 * days, freq="h", tz="UTC")
    return to_grid(synthetic_observations(lat, lon, [f"ws{i:02d}" for i in range(n)], times, seed))


@pytest.fixture(scope="module")
def fitted():
    g = _grid(11)
    T = g.times[24 * 28]
    cfg = NowcastConfig(horizons=[1, 3, 6], holdout_h=240, interval_window_h=240, sarimax_fit_h=300, xgb_params=FAST)
    m = fit_nowcaster(g, "temp", T, cfg)
    return g, T, m, nowcast(m, g)


def _rmse(f, x, h, rows):
    truth = np.full_like(x, np.nan)
    truth[:-h] = x[h:]
    ok = np.isfinite(truth[rows]) & np.isfinite(f[rows])
    return float(np.sqrt(np.mean((f[rows][ok] - truth[rows][ok]) ** 2)))


@pytest.mark.parametrize("h", [3, 6])
def test_diurnal_cycle_forecast_beats_persistence(fitted, h):
    g, T, m, r = fitted
    rows = np.asarray(g.times > T)
    x = g.values["temp"]
    pers = _rmse(r.candidates["persistence"][h], x, h, rows)
    assert _rmse(r.candidates["diurnal"][h], x, h, rows) < 0.9 * pers
    assert _rmse(r.candidates["xgboost"][h], x, h, rows) < 0.8 * pers
    assert _rmse(r.forecast[h], x, h, rows) < 0.8 * pers


@pytest.mark.parametrize("h", [1, 3, 6])
def test_intervals_cover_about_80_percent(fitted, h):
    g, T, m, r = fitted
    rows = np.asarray(g.times > T)
    x = g.values["temp"]
    truth = np.full_like(x, np.nan)
    truth[:-h] = x[h:]
    ok = np.isfinite(truth[rows]) & np.isfinite(r.p10[h][rows])
    inside = (truth[rows][ok] >= r.p10[h][rows][ok]) & (truth[rows][ok] <= r.p90[h][rows][ok])
    assert 0.6 <= inside.mean() <= 0.95
    assert np.all(r.p10[h][rows][ok] <= r.p90[h][rows][ok])


@pytest.fixture(scope="module")
def fitted_short_holdout():
    """As the stream fits: 48 held-out hours, errors over the last 14 days."""
    g = _grid(11)
    T = g.times[24 * 28]
    cfg = NowcastConfig(horizons=[1, 3], holdout_h=48, interval_window_h=336, sarimax_fit_h=300, xgb_params=FAST)
    m = fit_nowcaster(g, "temp", T, cfg)
    return g, T, m, nowcast(m, g)


@pytest.mark.parametrize("h", [1, 3])
def test_intervals_cover_from_the_first_day_not_only_on_average(fitted_short_holdout, h):
    """The trees' in-sample forecasts (before the held-out part of training) entered the error window: right after
    the training end the intervals were built mostly from in-sample errors, too narrow (here 0.63 / 0.60 of the
    first two days inside p10-p90, where 0.8 is promised). Now only out-of-sample errors count."""
    g, T, m, r = fitted_short_holdout
    assert m.fit_until[h] < T
    rows = np.asarray((g.times > T) & (g.times <= T + pd.Timedelta(days=2)))
    x = g.values["temp"]
    truth = np.full_like(x, np.nan)
    truth[:-h] = x[h:]
    ok = np.isfinite(truth[rows]) & np.isfinite(r.p10[h][rows])
    inside = (truth[rows][ok] >= r.p10[h][rows][ok]) & (truth[rows][ok] <= r.p90[h][rows][ok])
    assert ok.sum() > 300 and inside.mean() >= 0.72, inside.mean()
    # and the in-sample rows are no xgboost candidate at all
    assert np.isnan(r.candidates["xgboost"][h][np.asarray(g.times <= m.fit_until[h])]).all()


def test_selection_picks_a_skilful_model_and_is_visible(fitted):
    g, T, m, r = fitted
    rows = np.asarray(g.times > T)
    chosen = r.chosen[6][rows]
    assert np.all(chosen >= 0)
    names = np.array(r.models)[chosen]
    assert np.mean(names == "persistence") < 0.2
    frame = r.to_frame(rows)
    assert set(frame["model"]) <= set(r.models)


def test_forecast_uses_no_data_after_issue_time(fitted):
    g, T, m, r = fitted
    t = 24 * 33
    vals = {k: v.copy() for k, v in g.values.items()}
    for v in vals.values():
        v[t + 1:] = v[t + 1:] * 1.5 + 7.0
    from services.weather.domain.grid import StationGrid

    r2 = nowcast(m, StationGrid(g.times, g.station_ids, g.lat, g.lon, vals))
    for h in (1, 3, 6):
        np.testing.assert_allclose(r2.forecast[h][: t + 1], r.forecast[h][: t + 1], equal_nan=True)
        np.testing.assert_allclose(r2.p90[h][: t + 1], r.p90[h][: t + 1], equal_nan=True)


def test_steady_state_sarimax_matches_statsmodels():
    import warnings

    from statsmodels.tsa.statespace.sarimax import SARIMAX

    g = _grid(12, n=2, days=30)
    y = g.values["temp"][:, 0]
    ss = _fit_sarimax(y[:400])
    fc = sarimax_forecasts(ss, y[:, None], [1, 6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = SARIMAX(y[:400], order=(2, 1, 1), seasonal_order=(1, 0, 1, 24)).fit(disp=False, maxiter=40)
        ref = res.apply(y[:600]).forecast(6)  # forecast from the last hour of 600
    np.testing.assert_allclose(fc[6][599, 0], ref[-1], atol=0.01)
    np.testing.assert_allclose(fc[1][599, 0], ref[0], atol=0.01)


def test_wind_direction_forecasts_stay_on_the_compass():
    g = _grid(13, n=6, days=30)
    cfg = NowcastConfig(horizons=[1, 3], holdout_h=120, interval_window_h=120, xgb_params=FAST)
    m = fit_nowcaster(g, "wind_dir", g.times[24 * 24], cfg)
    r = nowcast(m, g)
    for h in (1, 3):
        f = r.forecast[h][np.isfinite(r.forecast[h])]
        assert f.size and np.all((f >= 0) & (f < 360))
