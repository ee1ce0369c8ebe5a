"""Warning signals with hysteresis, bulletins, the scenario generator, and the whole chain on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.weather.domain.signals import SignalBoard, rainstorm_level, signal_metrics
from services.weather.domain.simulate import generate, hourly_from_readings
from shared.city import default_city


@pytest.mark.parametrize("wind,expect", [(10.0, None), (10.8, "blue"), (17.2, "yellow"), (25.0, "orange"), (33.0, "red")])
def test_gale_levels_at_thresholds(wind, expect):
    b = SignalBoard()
    ch = b.update(pd.Timestamp("2026-01-01T00:00Z"), {"gale": {"d01": wind}})
    assert b.active().get(("gale", "d01")) == expect
    assert len(ch) == (0 if expect is None else 1)


def test_hysteresis_holds_then_lifts():
    b = SignalBoard()
    t = pd.Timestamp("2026-01-01T00:00Z")
    seq = [18.0, 16.0, 14.5, 13.0, 13.0, 9.0, 8.0, 8.0]
    log = []
    for i, w in enumerate(seq):
        for c in b.update(t + pd.Timedelta(hours=i), {"gale": {"d01": w}}):
            log.append((i, c.action, c.level))
    # yellow raised at once; 16 and 14.5 are inside 80 % of 17.2 -> held; 13 twice -> downgrade to blue;
    # 9 is above 0.8 * 10.8 -> held; 8 twice -> lifted
    assert log == [(0, "raise", "yellow"), (4, "downgrade", "blue"), (7, "lift", None)]


@pytest.mark.parametrize("temp,expect", [(34.9, None), (35.0, "yellow"), (37.5, "orange"), (40.1, "red")])
def test_high_temperature(temp, expect):
    b = SignalBoard()
    b.update(pd.Timestamp("2026-07-01T06:00Z"), {"high_temperature": {"d02": temp}})
    assert b.active().get(("high_temperature", "d02")) == expect


def test_cold_wave_needs_a_low_minimum():
    b = SignalBoard()
    t = pd.Timestamp("2026-01-01T00:00Z")
    b.update(t, {"cold_wave": {"a": 11.0}}, {"cold_wave": {"a": {"min_temp_c": 6.0}}})
    assert not b.active()
    b.update(t, {"cold_wave": {"a": 11.0}}, {"cold_wave": {"a": {"min_temp_c": 2.0}}})
    assert b.active()[("cold_wave", "a")] == "yellow"


@pytest.mark.parametrize("a3,a6,a12,expect", [(10, 20, 49, None), (10, 20, 50, "blue"), (20, 50, 60, "yellow"),
                                              (50, 60, 70, "orange"), (100, 110, 120, "red")])
def test_rainstorm_levels(a3, a6, a12, expect):
    assert rainstorm_level(a3, a6, a12) == expect
    hours = np.zeros((24, 1))
    # reproduce the accumulations as hourly rain ending now
    hours[-12:-6] = (a12 - a6) / 6
    hours[-6:-3] = (a6 - a3) / 3
    hours[-3:] = a3 / 3
    m, _ = signal_metrics(hours, None, np.full((24, 1), 20.0), None, None, np.zeros((24, 1)), None)
    b = SignalBoard()
    b.update(pd.Timestamp("2026-07-01T00:00Z"), {"rainstorm": {"x": float(m["rainstorm"][0])}})
    assert b.active().get(("rainstorm", "x")) == expect


def test_nowcast_rain_raises_the_signal_before_it_falls():
    past = np.zeros((24, 1))
    past[-1] = 20.0
    fut = np.array([[25.0], [30.0], [10.0]])
    m, _ = signal_metrics(past, fut, np.full((24, 1), 20.0), None, None, np.zeros((24, 1)), None)
    assert rainstorm_level(75, 75, 85) == "orange" and m["rainstorm"][0] > 1.0002


def test_bulletin_has_both_languages_chart_and_html():
    from services.weather.domain.bulletin import build_bulletin

    t = pd.Timestamp("2026-07-02T06:00Z")
    obs = pd.DataFrame({"time": pd.date_range(t - pd.Timedelta(hours=23), t, freq="h"), "temp": np.linspace(22, 30, 24)})
    fc = pd.DataFrame({"horizon_h": [1, 3, 6], "value": [30.5, 31.2, 29.0], "p10": [29.8, 30.0, 27.5],
                       "p90": [31.1, 32.4, 30.6], "model": ["xgboost"] * 3})
    b = build_bulletin("d05", "中心区", "Central", t, obs, fc, 62.0, 14.0, [("rainstorm", "orange")])
    assert "中心区" in b.text_zh and "暴雨橙色预警" in b.text_zh and "29.0" in b.text_zh
    assert "Central" in b.text_en and "Rainstorm ORANGE" in b.text_en and "62.0 mm" in b.text_en
    assert b.png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<html" in b.html and "data:image/png;base64," in b.html and "暴雨橙色预警" in b.html


@pytest.fixture(scope="module")
def scenario():
    return generate(default_city(), pd.Timestamp("2026-07-01T00:00Z"), 48, seed=3)


def test_generate_is_deterministic_and_fits_the_registry(scenario):
    scenario.check()
    again = generate(default_city(), pd.Timestamp("2026-07-01T00:00Z"), 48, seed=3)
    pd.testing.assert_frame_equal(scenario.readings, again.readings)
    other = generate(default_city(), pd.Timestamp("2026-07-01T00:00Z"), 48, seed=4)
    assert not scenario.readings["value"].equals(other.readings["value"])
    assert len(scenario.readings) < 150_000
    assert 15 <= len(scenario.sensors) <= 25 and {s.gateway_id for s in scenario.sensors} >= {"gw-weather-1", "gw-weather-2"}
    city = default_city()
    x0, y0, x1, y1 = city.bbox
    assert all(x0 <= s.lon <= x1 and y0 <= s.lat <= y1 and s.district and not s.personal for s in scenario.sensors)
    kinds = {t["scenario"] for t in scenario.truth}
    assert kinds == {"rainstorm", "stuck_sensor", "spike"}
    cut = pd.Timestamp("2026-07-01T00:00Z") + pd.Timedelta(hours=0.4 * 48)
    assert all(pd.Timestamp(t["start"]) >= cut for t in scenario.truth)
    storm = next(t for t in scenario.truth if t["scenario"] == "rainstorm")
    assert pd.Timestamp(storm["peak"]) == pd.Timestamp("2026-07-02T14:24Z").floor("10min")


def test_chain_flags_faults_nowcasts_and_raises_the_rainstorm_before_the_peak(scenario):
    from services.weather.domain.grid import to_grid
    from services.weather.domain.nowcast import NowcastConfig, fit_nowcaster, nowcast
    from services.weather.domain.qc import passed_values, qc_grid

    hourly = hourly_from_readings(scenario.readings, scenario.config["stations"])
    grid = to_grid(hourly)
    q = qc_grid(grid)
    spike = next(t for t in scenario.truth if t["scenario"] == "spike")
    s = grid.station_ids.index(spike["sensor_id"])
    t = grid.times.get_loc(pd.Timestamp(spike["start"]).floor("h"))
    assert q.flags["temp"][t, s] in (3, 4)
    passed = passed_values(grid, qc_grid(grid, causal=True))
    cfg = NowcastConfig(horizons=[1, 2, 3], candidates=("persistence", "diurnal", "xgboost"), holdout_h=6,
                        interval_window_h=12,
                        xgb_params={"n_estimators": 40, "max_depth": 3, "tree_method": "hist", "n_jobs": 2})
    train_until = grid.times[int(0.4 * len(grid.times))]
    rain_model = fit_nowcaster(passed, "rain", train_until, cfg)
    rain_fc = nowcast(rain_model, passed)
    storm = next(x for x in scenario.truth if x["scenario"] == "rainstorm")
    peak = pd.Timestamp(storm["peak"])
    districts = np.array([scenario.config["stations"][sid]["district"] for sid in grid.station_ids])
    board = SignalBoard()
    raised = []
    for i in range(24, len(grid.times)):
        fut = np.vstack([rain_fc.forecast[h][i] for h in cfg.horizons])
        m, extra = signal_metrics(grid.values["rain"][i - 23:i + 1], fut, passed.values["temp"][i - 23:i + 1],
                                  None, None, passed.values["wind_speed"][i - 23:i + 1], None)
        per_d = {sig: {d: float(np.nanmax(v[districts == d])) for d in np.unique(districts)} for sig, v in m.items()
                 if sig == "rainstorm"}
        for c in board.update(grid.times[i], per_d):
            raised.append(c)
    # hourly rows are stamped at the start of their hour; the hour is complete one hour later
    first_orange = [c for c in raised if c.signal == "rainstorm" and c.area == storm["district"]
                    and c.level in ("orange", "red")]
    assert first_orange and first_orange[0].time + pd.Timedelta(hours=1) <= peak
    zh, en = first_orange[0].text()
    assert "暴雨" in zh and "Rainstorm" in en
