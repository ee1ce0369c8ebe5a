"""Air-quality domain models on generated data."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from services.air_quality.domain import aqi, calibration, episodes, grid, heatmap, kriging, plume, tasks
from services.air_quality.domain.attribution import attribute_observations, merge_rankings
from services.air_quality.domain.spatial import SpatialEstimator, build_network, estimate_at
from shared.city import default_city

# --- AQI against HJ 633-2012 Table 1 -----------------------------------------------------------

@pytest.mark.parametrize(
    "pollutant, period, conc, expected",
    [
        ("pm25", "24h", 35, 50), ("pm25", "24h", 75, 100), ("pm25", "24h", 115, 150), ("pm25", "24h", 150, 200),
        ("pm25", "24h", 250, 300), ("pm25", "24h", 350, 400), ("pm25", "24h", 500, 500),
        ("pm25", "24h", 55, 75), ("pm25", "24h", 0, 0),
        ("pm10", "24h", 50, 50), ("pm10", "24h", 150, 100), ("pm10", "24h", 420, 300), ("pm10", "24h", 600, 500),
        ("so2", "24h", 50, 50), ("so2", "24h", 475, 150), ("so2", "24h", 2620, 500),
        ("so2", "1h", 150, 50), ("so2", "1h", 650, 150), ("so2", "1h", 800, 200),
        ("no2", "24h", 80, 100), ("no2", "24h", 565, 300), ("no2", "1h", 200, 100), ("no2", "1h", 1200, 200),
        ("no2", "1h", 3840, 500),
        ("co", "24h", 4, 100), ("co", "24h", 36, 300), ("co", "1h", 10, 100), ("co", "1h", 150, 500),
        ("o3", "1h", 160, 50), ("o3", "1h", 200, 100), ("o3", "1h", 800, 300), ("o3", "1h", 1200, 500),
        ("o3", "24h", 100, 50), ("o3", "24h", 160, 100), ("o3", "24h", 265, 200),
        # between breakpoints: linear, rounded up (35→75 maps to 50→100: 36 µg/m³ -> 51.25 -> 52)
        ("pm25", "24h", 36, 52), ("no2", "1h", 150, 75),
    ],
)
def test_iaqi_breakpoints(pollutant, period, conc, expected):
    assert aqi.iaqi(pollutant, conc, period=period)[0] == expected


@pytest.mark.parametrize(
    "value, level, zh, en",
    [(50, "I", "优", "Excellent"), (51, "II", "良", "Good"), (100, "II", "良", "Good"),
     (150, "III", "轻度污染", "Lightly polluted"), (200, "IV", "中度污染", "Moderately polluted"),
     (300, "V", "重度污染", "Heavily polluted"), (301, "VI", "严重污染", "Severely polluted")],
)
def test_aqi_category(value, level, zh, en):
    assert aqi.category(value)[:3] == (level, zh, en)


def test_aqi_primary_pollutant_and_units():
    # 120 µg/m³: 150 + 50·5/35 = 157.1, rounded up
    r = aqi.aqi({"pm25": 120, "pm10": 100, "no2": 50, "co": 1500.0}, co_unit="ug/m3")
    assert r.aqi == 158 and r.primary == ("pm25",) and r.category_en == "Moderately polluted"
    assert r.iaqi["co"] == 15  # 1.5 mg/m³ on the 1-h table (0–5 -> 0–50)
    assert aqi.aqi({"pm25": 20, "no2": 30}).primary == ()  # no primary pollutant when AQI ≤ 50


def test_alert_hysteresis_does_not_flap():
    al = aqi.AqiAlert(on=150, off=130)
    seq = [140, 151, 149, 152, 148, 135, 129, 151]
    events = [al.update("st1", v) for v in seq]
    assert events == [None, "raised", None, None, None, None, "cleared", "raised"]


# --- kriging -----------------------------------------------------------------------------------

def test_kriging_recovers_known_smooth_field():
    rng = np.random.default_rng(1)
    xs, ys = rng.uniform(0, 20_000, 150), rng.uniform(0, 20_000, 150)

    def field(x, y):
        return 50 + 20 * np.sin(x / 6000) + 15 * np.cos(y / 5000)

    vs = field(xs, ys) + rng.normal(0, 0.5, len(xs))
    xt, yt = rng.uniform(2000, 18_000, 200), rng.uniform(2000, 18_000, 200)
    est, sd = kriging.ordinary_kriging(xs, ys, vs, xt, yt)
    err = est - field(xt, yt)
    base = kriging.idw(xs, ys, vs, xt, yt) - field(xt, yt)
    assert np.sqrt(np.mean(err**2)) < 1.5
    assert np.sqrt(np.mean(err**2)) < np.sqrt(np.mean(base**2))
    # the exponential model is conservative for a smooth field, but the sigma must grow away from data
    assert np.all(sd > 0) and np.mean(np.abs(err)) < np.mean(sd) < 10
    _, sd_far = kriging.ordinary_kriging(xs, ys, vs, np.array([60_000.0]), np.array([60_000.0]))
    assert sd_far[0] > sd.max()


# --- spatial estimation -------------------------------------------------------------------------

def _network_obs(seed: int = 0, n_st: int = 8, hours: int = 240) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A regional signal with an urban excess that is larger downwind of the city centre."""
    rng = np.random.default_rng(seed)
    lat0, lon0 = 30.25, 120.15
    lat = lat0 + rng.uniform(-0.12, 0.12, n_st)
    lon = lon0 + rng.uniform(-0.14, 0.14, n_st)
    times = pd.date_range("2026-01-01", periods=hours, freq="h", tz="UTC")
    regional = 60 + 30 * np.sin(np.arange(hours) / 20) + np.cumsum(rng.normal(0, 2, hours))
    wd = (200 + np.cumsum(rng.normal(0, 10, hours))) % 360
    ws = np.clip(3 + np.cumsum(rng.normal(0, 0.2, hours)), 0.5, 8)
    rows = []
    for s in range(n_st):
        r_km = np.hypot((lat[s] - lat0) * 111, (lon[s] - lon0) * 96)
        val = np.maximum(regional + 40 * np.exp(-r_km / 8) + rng.normal(0, 3, hours), 1)
        rows.append(pd.DataFrame({"time": times, "station_id": f"s{s}", "lat": lat[s], "lon": lon[s], "pm25": val,
                                  "wind_dir": wd, "wind_speed": ws, "temp": 5.0, "dewp": 0.0, "pres": 1015.0,
                                  "rain": 0.0}))
    obs = pd.concat(rows, ignore_index=True)
    return obs, pd.DataFrame({"target_id": [f"s{s}" for s in range(n_st)], "lat": lat, "lon": lon})


def test_estimate_answers_every_hour_and_target_and_stays_near_idw():
    obs, st = _network_obs(1)
    held = "s5"
    train = obs[obs.station_id != held]
    # a few missing values and a missing hour at one station must not leave holes
    train.loc[train.index[:5], "pm25"] = np.nan
    out = estimate_at(train, st[st.target_id.isin([held, "s0"])], "pm25", SpatialEstimator(n_estimators=60))
    assert len(out) == 2 * obs["time"].nunique()
    assert out["pm25"].notna().all() and (out["pm25_std"] >= 0).all()
    truth = obs[obs.station_id == held]["pm25"].to_numpy()
    est = out[out.target_id == held]["pm25"].to_numpy()
    tx, ty = build_network(train, "pm25").xy(st.lat.to_numpy()[5:6], st.lon.to_numpy()[5:6])
    net = build_network(train, "pm25")
    base = kriging.idw(net.x_m, net.y_m, np.zeros(len(net.x_m)), tx, ty)  # shape check only
    assert base.shape == (1,)
    idw_est = np.array([kriging.idw(net.x_m, net.y_m, row, tx, ty)[0] for row in net.values])
    # on this radially symmetric field IDW is near-optimal: the learned correction must not wreck it
    assert np.sqrt(np.mean((est - truth) ** 2)) < 1.2 * np.sqrt(np.mean((idw_est - truth) ** 2))
    # a target standing on a reporting station returns its report
    s0 = out[out.target_id == "s0"]["pm25"].to_numpy()[10:]
    assert np.allclose(s0, obs[obs.station_id == "s0"]["pm25"].to_numpy()[10:])


def test_estimator_without_history_falls_back_to_idw_with_one_station():
    obs, st = _network_obs(n_st=2)
    net = build_network(obs[obs.station_id == "s0"], "pm25")
    est = SpatialEstimator(n_estimators=20).fit(net)
    val, sd = est.predict(net, 1000.0, 1000.0)
    assert np.allclose(val, obs[obs.station_id == "s0"]["pm25"].to_numpy())
    # one station says nothing of the field's spread: the 1-sigma is a third of the value (at least 5 µg/m³),
    # not the 0.3 µg/m³ a log-space constant left behind
    assert np.all(sd >= 0.33 * val - 1e-9) and np.all(sd >= 5.0)


# --- grid, heat map, speed ------------------------------------------------------------------------

def test_grid_2500_cells_from_300_sensors_fast_and_accurate():
    city = default_city(size_km=50.0)
    g = grid.make_grid(city, cell_km=1.0)
    assert g.lat.size == 2500
    rng = np.random.default_rng(3)
    x0, y0, x1, y1 = city.bbox
    slat, slon = rng.uniform(y0, y1, 300), rng.uniform(x0, x1, 300)

    def field(lat, lon):
        return 40 + 30 * np.exp(-(((lat - city.centre_lat) * 111) ** 2 + ((lon - city.centre_lon) * 96) ** 2) / 100)

    v = field(slat, slon) + rng.normal(0, 2, 300)
    t0 = time.perf_counter()
    est = grid.estimate_grid(city, g, slat, slon, v, sensor_sd=2.0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0
    err = est.value - field(g.lat, g.lon)
    assert np.sqrt(np.mean(err**2)) < 3.0
    png = heatmap.heatmap_png(g, est.value, sensors=(slat, slon))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


# --- calibration ----------------------------------------------------------------------------------

def test_calibration_removes_humidity_bias_and_flags_drift():
    rng = np.random.default_rng(4)
    n = 1500
    ref = np.clip(40 + 30 * np.sin(np.arange(n) / 30) + rng.normal(0, 5, n), 2, None)
    rh = np.clip(60 + 30 * np.sin(np.arange(n) / 11), 10, 99)
    temp = 10 + 8 * np.sin(np.arange(n) / 24)
    growth = 1 + 0.25 * (rh / 100) ** 2 / (1 - rh / 100 + 0.05)
    raw = ref * growth * 1.3 + rng.normal(0, 2, n)
    cal = calibration.fit_calibration(raw[:1000], rh[:1000], temp[:1000], ref[:1000])
    after = cal.apply(raw[1000:], rh[1000:], temp[1000:])
    assert np.sqrt(np.mean((after - ref[1000:]) ** 2)) < 0.4 * np.sqrt(np.mean((raw[1000:] - ref[1000:]) ** 2))
    drifted = raw[1000:] * np.linspace(1.0, 1.6, 500)
    flags = calibration.drift_flags(cal.apply(drifted, rh[1000:], temp[1000:]), ref[1000:], cal.resid_sd)
    clean = calibration.drift_flags(after, ref[1000:], cal.resid_sd)
    assert flags[-50:].all() and clean.mean() < 0.1


def _peer_log_ratios(seed: int, drift: dict[int, float], plume: dict[int, tuple[int, int]], n: int = 20,
                     rows: int = 72) -> pd.DataFrame:
    """log(raw/ref) of `n` sensors over `rows` 10-min steps: a shared humidity swing, noise, a linear drift
    reaching `drift[i]` (factor) at the end, and plume bumps (×2.5 between two rows) at others."""
    rng = np.random.default_rng(seed)
    common = 0.2 * np.sin(np.arange(rows) / 9)[:, None]
    x = common + rng.normal(0, 0.04, (rows, n))
    for i, f in drift.items():
        x[:, i] += np.log(np.linspace(1.0, f, rows))
    for i, (a, b) in plume.items():
        x[a:b, i] += np.log(2.5)
    return pd.DataFrame(x, index=pd.date_range("2026-01-10", periods=rows, freq="10min"),
                        columns=[f"lc{i:02d}" for i in range(n)])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_peer_drift_flags_a_lasting_gain_change_not_a_passing_plume(seed):
    table = _peer_log_ratios(seed, drift={3: 1.8, 11: 0.55}, plume={5: (60, 72), 7: (30, 50)})
    v = calibration.peer_drift(table, blocks=2, block_rows=12, z_drift=5.0, z_hold=3.0)
    assert set(v.index[v["flagged"].astype(bool)]) == {"lc03", "lc11"}
    assert v.loc["lc03", "log_factor"] > 0.3 and v.loc["lc11", "log_factor"] < -0.3


def test_peer_drift_needs_peers_and_enough_rows():
    table = _peer_log_ratios(0, drift={1: 2.0}, plume={})
    assert calibration.peer_drift(table.iloc[:, :2]).empty
    assert calibration.peer_drift(table.iloc[:10]).empty


# --- plume and attribution ------------------------------------------------------------------------

def test_plume_is_downwind_only_and_decays():
    k = plume.plume_kernel([0.0], [0.0], [10.0], [0, 0, 0], [-500, -2000, 500], wind_from_deg=0.0, wind_speed=3.0,
                           cls="D")
    # wind from the north: receptors to the south see the plume, the one to the north does not
    assert k[0, 0] > k[1, 0] > 0 and k[2, 0] == 0


def test_single_source_plume_recovered():
    rng = np.random.default_rng(5)
    src = pd.DataFrame({"source_id": [f"src{i}" for i in range(12)], "lat": 30.25 + rng.uniform(-0.08, 0.08, 12),
                        "lon": 120.15 + rng.uniform(-0.09, 0.09, 12), "kind": "industrial", "height_m": 30.0})
    ep = episodes.simulate_episode(7, hours=36, n_active=1, sources=src, vane_error_deg=3.0, noise_rel=0.03)
    active = int(np.argmax(ep.contributions.sum(axis=(0, 1))))
    res = attribute_observations(ep.obs, ep.sources, "pm25", threshold=float(np.percentile(ep.obs.pm25, 80)))
    top = pd.Series([r.source_id for r in res if r.rank == 1]).value_counts()
    assert top.index[0] == src["source_id"].iloc[active]


def test_attribution_of_chosen_station_hours_with_weighted_receptors():
    ep = episodes.simulate_episode(3, hours=24, n_active=2)
    thr = float(np.percentile(ep.obs.pm25, 90))
    full = attribute_observations(ep.obs, ep.sources, "pm25", threshold=thr)
    t, sid = full[0].time, full[0].station_id
    one = attribute_observations(ep.obs, ep.sources, "pm25", threshold=thr, only=[(t, sid)])
    assert one and {(r.time, r.station_id) for r in one} == {(t, sid)}
    assert [r.source_id for r in one] == [r.source_id for r in full if (r.time, r.station_id) == (t, sid)]
    # extra receptors without wind (low-cost sensors), weighted down, do not break the fit
    extra = ep.obs.assign(station_id="lc-" + ep.obs["station_id"], lat=ep.obs["lat"] + 0.004,
                          wind_dir=np.nan, wind_speed=np.nan, weight=0.5)
    both = attribute_observations(pd.concat([ep.obs.assign(weight=1.0), extra]), ep.sources, "pm25",
                                  threshold=thr, only=[(t, sid)])
    assert both and both[0].station_id == sid and np.isfinite(both[0].contribution)


def test_inspection_task_is_bilingual():
    t = tasks.inspection_task(source_id="park1-stack2", kind="industrial", lat=30.2, lon=120.1, pollutant="pm25",
                              station_id="st03", observed=120, threshold=75, contribution=60, confidence=0.7,
                              time_iso="2026-01-10T08:00:00+00:00", wind_from_deg=270, wind_speed=3.2)
    assert "现场核查" in t.title_zh and "park1-stack2" in t.body_zh and "工业源" in t.body_zh
    assert "Field inspection" in t.title_en and "60 µg/m³" in t.body_en and "50%" in t.body_en
    assert t.priority == "high"
    assert "1 公里" not in t.body_zh and "within 1 km" not in t.body_en  # no neighbours, no such line


def test_inspection_task_names_the_other_stacks_of_the_park_to_check():
    """The bench names the park far more often than the stack: the task lists the park's other stacks."""
    t = tasks.inspection_task(source_id="park1-stack2", kind="industrial", lat=30.2, lon=120.1, pollutant="pm25",
                              station_id="st03", observed=120, threshold=75, contribution=60, confidence=0.7,
                              time_iso="2026-01-10T08:00:00+00:00", wind_from_deg=270, wind_speed=3.2,
                              same_park=("park1-stack4", "park1-stack1"))
    assert "park1-stack4、park1-stack1" in t.body_zh and "若 park1-stack2 排放正常" in t.body_zh
    assert "within 1 km of it" in t.body_en and "park1-stack4, park1-stack1" in t.body_en
    assert "if park1-stack2 is clean" in t.body_en


def test_merge_rankings_takes_the_first_source_from_one_fit_and_the_rest_from_the_other():
    t = pd.Timestamp("2026-01-10T08:00:00Z")

    def a(sid, src, rank, c):
        return plume.Attribution(t, sid, src, c, rank, 0.5)

    one_per_park = [a("st01", "park1-stack3", 1, 40.0), a("st01", "road-2", 2, 5.0), a("st02", "park2-stack1", 1, 3.0)]
    full = [a("st01", "park1-stack1", 1, 20.0), a("st01", "park1-stack3", 2, 15.0), a("st01", "road-2", 3, 6.0),
            a("st02", "road-2", 1, 9.0), a("st02", "park2-stack1", 2, 1.0)]
    merged = merge_rankings(one_per_park, full)
    assert [(r.station_id, r.source_id, r.rank, r.contribution) for r in merged] == [
        ("st01", "park1-stack3", 1, 40.0), ("st01", "park1-stack1", 2, 20.0), ("st01", "road-2", 3, 6.0),
        # rank 1 = largest contribution (CONTRACTS.md §3), whichever fit it came from
        ("st02", "road-2", 1, 9.0), ("st02", "park2-stack1", 2, 3.0)]


def _regime_obs(days: int, rise_from_day: int, seed: int = 3) -> pd.DataFrame:
    """Four stations whose level reverts to a seasonal mean that climbs, late in the series, above anything seen
    before (a first polluted winter): tomorrow's value is a straight-line function of today's and the mean."""
    rng = np.random.default_rng(seed)
    hours = days * 24
    times = pd.date_range("2026-01-01", periods=hours, freq="h", tz="UTC")
    mean = 40 + np.clip(np.arange(hours) - rise_from_day * 24, 0, None) * 0.08
    x = np.empty(hours)
    x[0] = mean[0]
    for t in range(1, hours):
        x[t] = mean[t] + 0.97 * (x[t - 1] - mean[t - 1]) + rng.normal(0, 4)
    rows = []
    for s in range(4):
        v = np.maximum(x * (1 + 0.1 * s) + rng.normal(0, 2, hours), 1)
        rows.append(pd.DataFrame({"time": times, "station_id": f"s{s}", "lat": 30.2 + 0.03 * s, "lon": 120.1 + 0.02 * s,
                                  "pm25": v, "wind_dir": 180.0, "wind_speed": 2.0, "temp": 5.0, "dewp": 0.0,
                                  "pres": 1015.0, "rain": 0.0}))
    return pd.concat(rows, ignore_index=True)


def test_forecast_blend_weight_is_chosen_on_the_training_datas_last_months():
    """The weight on xgboost against the ridge is chosen on the last 120 days before the fit's end. Where the level
    climbs beyond what the trees saw, the straight line wins there, is chosen, and forecasts a day ahead better
    than xgboost alone; with under 120 days of history xgboost is used alone."""
    from services.air_quality.domain.forecast import StationForecaster
    from services.air_quality.domain.spatial import build_network

    obs = _regime_obs(days=260, rise_from_day=150)
    net = build_network(obs, "pm25")
    until = net.times[0] + pd.Timedelta(days=220)
    fc = StationForecaster([24], n_jobs=1).fit(net, until)
    assert fc.blend[24] <= 0.5, fc.blend
    issue = np.asarray(net.times > until) & np.asarray(net.times <= net.times[-25])
    blended = fc.predict(net, issue)[24]
    fc.blend[24] = 1.0
    trees = fc.predict(net, issue)[24]
    truth = net.values[np.flatnonzero(issue) + 24]
    rmse = {k: float(np.sqrt(np.nanmean((p - truth) ** 2))) for k, p in (("blend", blended), ("xgboost", trees))}
    assert rmse["blend"] < 0.9 * rmse["xgboost"], rmse
    short = StationForecaster([24], n_jobs=1).fit(net, net.times[0] + pd.Timedelta(days=100))
    assert short.blend[24] == 1.0 and 24 not in short.linear
