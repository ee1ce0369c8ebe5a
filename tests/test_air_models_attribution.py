"""The joint plume fit must beat geometry alone on simulated episodes with known sources."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.air_quality.domain import episodes, plume
from services.air_quality.domain.attribution import attribute_observations, network_wind
from shared.city import to_local_xy_m


def _naive(ep: episodes.PlumeEpisode) -> dict:
    times = pd.DatetimeIndex(np.sort(ep.obs["time"].unique()))
    wd, _ = network_wind(ep.obs, times)
    st = ep.obs.groupby("station_id")[["lat", "lon"]].median().loc[ep.station_ids]
    sx, sy = to_local_xy_m(st["lat"].to_numpy(), st["lon"].to_numpy(), 30.25, 120.15)
    qx, qy = to_local_xy_m(ep.sources["lat"].to_numpy(), ep.sources["lon"].to_numpy(), 30.25, 120.15)
    out = {}
    for t in range(len(times)):
        rk = plume.naive_ranking(qx, qy, sx, sy, wd[t])
        for s, sid in enumerate(ep.station_ids):
            out[(times[t], sid)] = list(ep.sources["source_id"].iloc[rk[s]])
    return out


def test_joint_fit_beats_upwind_ranking_on_two_episodes():
    n = hit = naive_hit = 0
    for seed in (1003, 1007):
        ep = episodes.simulate_episode(seed, hours=48)
        ranked: dict = {}
        for r in attribute_observations(ep.obs, ep.sources, "pm25", 75.0):
            ranked.setdefault((r.time, r.station_id), []).append(r.source_id)
        sc = episodes.score_attribution(ep, ranked)
        nb = episodes.score_attribution(ep, _naive(ep))
        n += sc["n"]
        hit += sc["top1"] * sc["n"]
        naive_hit += nb["top1"] * nb["n"]
    assert n >= 40, "the episodes must contain plume-caused exceedances to score"
    assert hit / n >= 0.3 and hit >= 1.5 * naive_hit, (hit / n, naive_hit / n)

