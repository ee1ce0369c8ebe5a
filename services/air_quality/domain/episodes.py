"""Simulated plume episodes with known sources: for tests, the benchmark and the city simulator.

Sources: dozens of candidates, with clusters of stacks inside industrial parks, roads,
construction and dust sites. Two or three are active at a time, each on its own on/off
schedule; wind direction wanders and speed (hence stability) changes; stations read the
plumes through their own wind-vane error, plus regional background and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.air_quality.domain.plume import naive_ranking, plume_kernel, stability_class
from shared.city import km_to_deg_lat, km_to_deg_lon, to_local_xy_m

KINDS = ("industrial", "traffic", "construction", "dust")


@dataclass
class PlumeEpisode:
    obs: pd.DataFrame  # time, station_id, lat, lon, pm25, wind_dir, wind_speed
    sources: pd.DataFrame  # source_id, lat, lon, kind, height_m
    contributions: np.ndarray  # T × stations × sources, µg/m³ (truth)
    background: np.ndarray  # T
    station_ids: list[str]


def make_sources(rng: np.random.Generator, lat0: float, lon0: float, size_km: float, n_parks: int = 4,
                 stacks_per_park: int = 5, n_other: int = 20) -> pd.DataFrame:
    rows = []
    half = size_km / 2
    for p in range(n_parks):
        cx, cy = rng.uniform(-half * 0.8, half * 0.8, 2)
        for k in range(stacks_per_park):
            x, y = cx + rng.normal(0, 0.35), cy + rng.normal(0, 0.35)
            rows.append((f"park{p + 1}-stack{k + 1}", x, y, "industrial", float(rng.uniform(20, 80))))
    for i in range(n_other):
        kind = KINDS[1 + i % 3]
        x, y = rng.uniform(-half, half, 2)
        rows.append((f"{kind}-{i + 1}", x, y, kind, float(rng.uniform(0, 8))))
    df = pd.DataFrame(rows, columns=["source_id", "x_km", "y_km", "kind", "height_m"])
    df["lat"] = lat0 + df["y_km"] * km_to_deg_lat(1.0)
    df["lon"] = lon0 + df["x_km"] * km_to_deg_lon(1.0, lat0)
    return df[["source_id", "lat", "lon", "kind", "height_m"]]


def simulate_episode(seed: int, *, hours: int = 48, n_stations: int = 12, size_km: float = 24.0,
                     lat0: float = 30.25, lon0: float = 120.15, n_active: int = 3,
                     start: str = "2026-01-10T00:00:00Z", sources: pd.DataFrame | None = None,
                     stations: pd.DataFrame | None = None, vane_error_deg: float = 8.0,
                     noise_rel: float = 0.08) -> PlumeEpisode:
    """One multi-day episode: hourly stations, wandering wind, 2–3 sources with on/off schedules."""
    rng = np.random.default_rng(seed)
    if sources is None:
        sources = make_sources(rng, lat0, lon0, size_km)
    if stations is None:
        half = size_km / 2
        xy = rng.uniform(-half, half, (n_stations, 2))
        stations = pd.DataFrame({
            "station_id": [f"st{i + 1:02d}" for i in range(n_stations)],
            "lat": lat0 + xy[:, 1] * km_to_deg_lat(1.0),
            "lon": lon0 + xy[:, 0] * km_to_deg_lon(1.0, lat0),
        })
    times = pd.date_range(start, periods=hours, freq="h")
    wd = (rng.uniform(0, 360) + np.cumsum(rng.normal(0, 12, hours))) % 360
    ws = np.clip(2.5 + np.cumsum(rng.normal(0, 0.35, hours)), 0.8, 7.0)
    local_hour = (times.hour + lon0 / 15.0) % 24
    cls = stability_class(ws, local_hour)
    sx, sy = to_local_xy_m(stations["lat"].to_numpy(), stations["lon"].to_numpy(), lat0, lon0)
    qx, qy = to_local_xy_m(sources["lat"].to_numpy(), sources["lon"].to_numpy(), lat0, lon0)
    qh = sources["height_m"].to_numpy(float)
    n_src, n_st = len(sources), len(stations)
    active = rng.choice(n_src, size=n_active, replace=False)
    rate = np.zeros((hours, n_src))
    for j in active:
        # on/off blocks of 4–14 h
        t = int(rng.integers(0, 6))
        on = bool(rng.random() < 0.7)
        strength = rng.uniform(40, 160) * (3.0 if sources["kind"].iloc[j] == "industrial" else 1.0)
        while t < hours:
            length = int(rng.integers(4, 15))
            if on:
                rate[t:t + length, j] = strength * rng.uniform(0.7, 1.3)
            t += length
            on = not on
    contrib = np.zeros((hours, n_st, n_src))
    for t in range(hours):
        js = np.flatnonzero(rate[t] > 0)
        if len(js) == 0:
            continue
        for s in range(n_st):
            # each station's own vane/meander error: the plume it sees is not the network mean wind
            wd_s = wd[t] + rng.normal(0, vane_error_deg)
            k = plume_kernel(qx[js], qy[js], qh[js], sx[s:s + 1], sy[s:s + 1], wd_s, ws[t], cls[t], spread_deg=5.0)
            contrib[t, s, js] = k[0] * rate[t, js]
    background = np.clip(35 + np.cumsum(rng.normal(0, 1.5, hours)), 10, 80)
    clean = background[:, None] + contrib.sum(axis=2)
    noisy = clean * (1 + rng.normal(0, noise_rel, clean.shape)) + rng.normal(0, 2.0, clean.shape)
    rows = pd.DataFrame({
        "time": np.repeat(times, n_st),
        "station_id": np.tile(stations["station_id"].to_numpy(), hours),
        "lat": np.tile(stations["lat"].to_numpy(), hours),
        "lon": np.tile(stations["lon"].to_numpy(), hours),
        "pm25": np.maximum(noisy, 0.0).reshape(-1),
        "wind_dir": np.repeat((wd + rng.normal(0, 5, hours)) % 360, n_st),
        "wind_speed": np.repeat(ws, n_st),
    })
    return PlumeEpisode(rows, sources.reset_index(drop=True), contrib, background,
                        list(stations["station_id"]))


def score_attribution(ep: PlumeEpisode, ranked: dict[tuple[pd.Timestamp, str], list[str]],
                      est_contrib: dict[tuple[pd.Timestamp, str], float] | None = None,
                      threshold: float = 75.0, min_share: float = 0.3) -> dict[str, float | int]:
    """Top-1/top-3 hit rates over exceedances the plumes caused (plume share ≥ min_share of the value)."""
    times = pd.DatetimeIndex(np.sort(ep.obs["time"].unique()))
    vals = ep.obs.pivot(index="time", columns="station_id", values="pm25").reindex(
        index=times, columns=ep.station_ids).to_numpy()
    hit1 = hit3 = hit_park = n = 0
    errs = []
    for t in range(len(times)):
        for s, sid in enumerate(ep.station_ids):
            c = ep.contributions[t, s]
            if vals[t, s] <= threshold or c.sum() < min_share * vals[t, s]:
                continue
            n += 1
            true_top = str(ep.sources["source_id"].iloc[int(np.argmax(c))])
            r = ranked.get((times[t], sid), [])
            hit1 += int(r[:1] == [true_top])
            hit3 += int(true_top in r[:3])
            # an inspector sent to the right industrial park finds the stack: score that too
            hit_park += int(bool(r) and (r[0] == true_top or (true_top.startswith("park")
                                                              and r[0].split("-")[0] == true_top.split("-")[0])))
            if est_contrib is not None:
                errs.append(abs(est_contrib.get((times[t], sid), 0.0) - float(c.max())) / max(float(c.max()), 1e-9))
    return {"n": n, "top1": hit1 / n if n else float("nan"), "top3": hit3 / n if n else float("nan"),
            "top1_park": hit_park / n if n else float("nan"),
            "rel_err_contribution": float(np.median(errs)) if errs else float("nan")}


def naive_ranked(ep: PlumeEpisode) -> dict[tuple[pd.Timestamp, str], list[str]]:
    """The baseline's ranking of every station-hour: upwind alignment and distance under the network wind."""
    from services.air_quality.domain.attribution import network_wind

    times = pd.DatetimeIndex(np.sort(ep.obs["time"].unique()))
    wd, _ = network_wind(ep.obs, times)
    st = ep.obs.groupby("station_id")[["lat", "lon"]].median().loc[ep.station_ids]
    lat0, lon0 = float(st["lat"].mean()), float(st["lon"].mean())
    sx, sy = to_local_xy_m(st["lat"].to_numpy(), st["lon"].to_numpy(), lat0, lon0)
    qx, qy = to_local_xy_m(ep.sources["lat"].to_numpy(), ep.sources["lon"].to_numpy(), lat0, lon0)
    out = {}
    for t in range(len(times)):
        rk = naive_ranking(qx, qy, sx, sy, wd[t])
        for s, sid in enumerate(ep.station_ids):
            out[(times[t], sid)] = list(ep.sources["source_id"].iloc[rk[s]])
    return out
