"""Quality control on generated station weather: injected faults are flagged, clean data mostly passes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.weather.domain.grid import to_grid
from services.weather.domain.qc import FAIL, MISSING, PASS, SUSPECT, passed_values, qc_grid
from services.weather.domain.simulate import station_layout, synthetic_observations

BAD = (SUSPECT, FAIL)


def _grid(seed: int = 1, n: int = 8, days: int = 12):
    lat, lon = station_layout(n, seed, (120.0, 30.1, 120.3, 30.4))
    times = pd.date_range("2025-06-01", periods=24 * days, freq="h", tz="UTC")
    obs = synthetic_observations(lat, lon, [f"ws{i:02d}" for i in range(n)], times, seed)
    return to_grid(obs)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_clean_data_is_rarely_flagged(seed):
    g = _grid(seed)
    r = qc_grid(g)
    for v in ("temp", "dewp", "pres", "wind_speed"):
        rate = np.mean(np.isin(r.flags[v], BAD))
        assert rate < 0.01, (v, rate)
        assert np.all(np.isin(r.flags[v], (PASS, SUSPECT, FAIL)))


@pytest.mark.parametrize("var,delta", [("temp", 15.0), ("dewp", 18.0), ("pres", 25.0), ("wind_speed", 25.0)])
def test_spike_is_flagged_and_the_step_back_is_not(var, delta):
    g = _grid(4)
    t, s = 200, 3
    g.values[var][t, s] += delta
    r = qc_grid(g)
    assert r.flags[var][t, s] in BAD
    assert r.flags[var][t + 1, s] == PASS
    assert r.flags[var][t - 1, s] == PASS


def test_stuck_sensor_is_flagged():
    g = _grid(5)
    s, t0, n = 2, 150, 14
    g.values["temp"][t0:t0 + n, s] = g.values["temp"][t0, s]
    r = qc_grid(g)
    # the flat-line test suspects the run from 6 h; while the neighbours still agree with the stuck
    # value that suspicion is overruled, from 12 h (flat-line fail) the value fails whatever they say
    assert np.all(r.flags["temp"][t0 + 12:t0 + n, s] == FAIL), r.flags["temp"][t0:t0 + n, s]
    assert np.all(np.isin(r.flags["temp"][t0 + 7:t0 + n, s], BAD)), r.flags["temp"][t0:t0 + n, s]
    assert np.all(r.tests["temp"]["flat_line"][t0 + 12:t0 + n, s] == FAIL)


def test_the_first_value_after_a_gap_is_not_a_flat_line():
    """ioos_qc's flat-line test skips missing hours, so a value alone in its window (the first after a 13-h gap, a
    new station's first reading) had a range of 0 and failed as a stuck sensor; it needs a second value to compare."""
    g = _grid(6)
    s, t0 = 4, 120
    for v in ("temp", "pres", "wind_speed"):
        g.values[v][t0 - 13:t0, s] = np.nan
    r = qc_grid(g)
    for v in ("temp", "pres", "wind_speed"):
        assert r.tests[v]["flat_line"][t0, s] == PASS, v
        assert r.flags[v][t0, s] == PASS, (v, r.flags[v][t0 - 1:t0 + 2, s])
    # and a real stuck run after the gap is still caught
    g.values["temp"][t0:t0 + 14, s] = g.values["temp"][t0, s]
    assert np.all(qc_grid(g).tests["temp"]["flat_line"][t0 + 12:t0 + 14, s] == FAIL)


@pytest.mark.parametrize("offset", [6.0, -6.0])
def test_offset_station_is_caught_by_buddies(offset):
    g = _grid(6, n=10)
    s, t0 = 4, 240
    g.values["temp"][t0:t0 + 6, s] += offset
    r = qc_grid(g)
    assert np.all(np.isin(r.tests["temp"]["buddy"][t0:t0 + 6, s], BAD))
    others = np.delete(r.tests["temp"]["buddy"][t0:t0 + 6], s, axis=1)
    assert np.mean(np.isin(others, BAD)) < 0.05


def test_gross_range_and_missing():
    g = _grid(7)
    g.values["temp"][100, 1] = 150.0
    g.values["pres"][110, 2] = 101.3  # kPa reported as hPa
    g.values["temp"][120, 0] = np.nan
    r = qc_grid(g)
    assert r.flags["temp"][100, 1] == FAIL
    assert r.flags["pres"][110, 2] == FAIL
    assert r.flags["temp"][120, 0] == MISSING
    p = passed_values(g, r)
    assert np.isnan(p.values["temp"][100, 1]) and np.isfinite(p.values["temp"][99, 1])


def test_causal_qc_does_not_look_ahead():
    g = _grid(8)
    r1 = qc_grid(g, causal=True)
    g.values["temp"][201:, :] += 20.0
    r2 = qc_grid(g, causal=True)
    assert np.array_equal(r1.flags["temp"][:201], r2.flags["temp"][:201])
