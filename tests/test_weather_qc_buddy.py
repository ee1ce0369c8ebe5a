"""Regression buddy check: a station is judged against what its neighbours predict for it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.weather.domain.grid import to_grid
from services.weather.domain.qc import DEFAULT_QC_CONFIG, FAIL, PASS, SUSPECT, buddy_check, qc_grid
from services.weather.domain.simulate import station_layout, synthetic_observations

BAD = (SUSPECT, FAIL)


def _grid(seed: int, n: int = 10, days: int = 14):
    lat, lon = station_layout(n, seed, (116.0, 39.7, 116.6, 40.2))
    times = pd.date_range("2025-03-01", periods=24 * days, freq="h", tz="UTC")
    return to_grid(synthetic_observations(lat, lon, [f"bj{i:02d}" for i in range(n)], times, seed))


def test_station_with_its_own_linear_relation_passes_and_a_shift_in_it_is_caught():
    g = _grid(11)
    x = g.values["temp"]
    s = 3
    x[:, s] = 0.8 * x[:, s] + 4.0  # a sheltered site: damped cycle, warmer - its usual relation, not an error
    flags = buddy_check(x, g.lat, g.lon, DEFAULT_QC_CONFIG["temp"]["buddy"])
    assert np.mean(np.isin(flags[200:, s], BAD)) < 0.02
    x[260:272, s] += 5.0  # now the relation shifts (e.g. swapped or offset)
    flags = buddy_check(x, g.lat, g.lon, DEFAULT_QC_CONFIG["temp"]["buddy"])
    assert np.mean(np.isin(flags[260:272, s], BAD)) >= 0.9


def test_one_bad_station_does_not_accuse_its_neighbours():
    g = _grid(12)
    g.values["pres"][250:262, 5] = g.values["pres"][250:262, 5] / 10.0  # kPa logged as hPa
    r = qc_grid(g)
    assert np.all(r.flags["pres"][250:262, 5] == FAIL)
    others = np.delete(r.tests["pres"]["buddy"][250:262], 5, axis=1)
    assert np.mean(np.isin(others, BAD)) < 0.02, others


def test_wind_unit_mistake_is_caught_and_calm_is_not():
    g = _grid(13)
    w = g.values["wind_speed"]
    s = 2
    w[280:292, s] = w[280:292, s] * 3.6  # km/h reported as m/s
    r = qc_grid(g)
    wrong = np.abs(w[280:292, s] / 3.6 * 2.6) >= 2.0  # cells the mistake changed materially
    assert wrong.sum() >= 3
    assert np.mean(np.isin(r.flags["wind_speed"][280:292, s][wrong], BAD)) >= 0.8
    assert np.mean(np.isin(r.flags["wind_speed"][:, [0, 1, 3, 4]], BAD)) < 0.01
    assert np.all(np.isin(r.flags["wind_speed"][:, s][:280], (PASS, SUSPECT, FAIL)))


def test_a_small_deviation_held_for_hours_is_caught_and_a_single_hour_of_it_is_not():
    """Pressure: a station swapped with one a few hPa away is below the single-hour threshold, but held for
    hours it is an error; one hour of the same deviation (coarse logging) is not. In a stream (causal) the
    run is flagged from its fourth hour, when it has lasted long enough to tell."""
    g = _grid(14)
    p = g.values["pres"]
    s = 4
    cfg = DEFAULT_QC_CONFIG["pres"]["buddy"]
    base = buddy_check(p, g.lat, g.lon, cfg)
    resid_sd = 1.4826 * np.nanmedian(np.abs(p[:, s] - np.nanmedian(p, axis=1) - np.nanmedian(p[:, s] - np.nanmedian(p, axis=1))))
    shift = 3.5 * max(resid_sd, cfg["floor"])  # beyond 3 robust sigmas, below the single-hour 4.5
    held, single = p.copy(), p.copy()
    held[260:272, s] += shift
    single[300, s] += shift
    one = buddy_check(single, g.lat, g.lon, cfg)
    assert one[300, s] == base[300, s] == PASS
    batch = buddy_check(held, g.lat, g.lon, cfg)
    assert np.mean(np.isin(batch[260:272, s], BAD)) >= 0.9
    stream = buddy_check(held, g.lat, g.lon, {**cfg, "causal": True})
    assert np.mean(np.isin(stream[263:272, s], BAD)) >= 0.9
    without = buddy_check(held, g.lat, g.lon, {k: v for k, v in cfg.items() if k != "sustained"})
    assert np.mean(np.isin(without[260:272, s], BAD)) < 0.5  # the single-hour test alone misses it
