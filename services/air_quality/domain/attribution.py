"""Source attribution over an observation table: the glue between long data and plume.py."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.air_quality.domain.plume import Attribution, attribute_exceedances
from shared.city import to_local_xy_m


def network_wind(obs: pd.DataFrame, times: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Vector-mean wind over stations per hour: (direction it comes from in degrees, speed m/s)."""
    rad = np.radians(obs["wind_dir"].astype(float))
    ws = obs["wind_speed"].astype(float)
    t = pd.DataFrame({"time": obs["time"], "u": np.sin(rad) * ws, "v": np.cos(rad) * ws, "ws": ws})
    m = t.groupby("time")[["u", "v", "ws"]].mean().reindex(times).interpolate(limit_direction="both")
    wd = np.degrees(np.arctan2(m["u"], m["v"])) % 360
    return wd.to_numpy(), m["ws"].fillna(1.0).to_numpy()


# a batch analyst has the hours after an exceedance too: fit ±48 h around it with one strength per
# source over the window (block length 3-48 h scored alike on bench/air's episodes)
BATCH_FIT = {"window_h": 48, "hours_after": 48, "block_h": 48}
# stacks closer than this form one cluster (an industrial park), of which the first-ranked source is chosen
CLUSTER_M = 1000.0


def merge_rankings(first: list[Attribution], rest: list[Attribution]) -> list[Attribution]:
    """Per (time, station): `first`'s rank-1 source and its contribution, with `rest`'s other sources and
    theirs, ranked by contribution (CONTRACTS.md §3: rank 1 = largest)."""
    from dataclasses import replace

    top = {(a.time, a.station_id): a for a in first if a.rank == 1}
    by_key: dict[tuple, list[Attribution]] = {}
    for a in sorted(rest, key=lambda a: a.rank):
        by_key.setdefault((a.time, a.station_id), []).append(a)
    out: list[Attribution] = []
    for key in sorted(set(top) | set(by_key)):
        head = [top[key]] if key in top else []
        tail = [a for a in by_key.get(key, []) if not head or a.source_id != head[0].source_id]
        ranked = sorted(head + tail, key=lambda a: -a.contribution)  # stable: ties keep the fits' order
        out += [replace(a, rank=r) for r, a in enumerate(ranked, start=1)]
    return out


def attribute_observations(obs: pd.DataFrame, sources: pd.DataFrame, pollutant: str, threshold: float,
                           progress=None, only: list[tuple[pd.Timestamp, str]] | None = None,
                           *, look_ahead: bool = False, cluster_m: float = CLUSTER_M) -> list[Attribution]:
    """Attribute every station-hour of `obs` above `threshold` to `sources` (source_id, lat, lon[, height_m]).

    `only` limits it to those (time, station_id); an optional `weight` column weighs a receptor's rows
    in the fit (low-cost sensors: less than reference stations). `look_ahead` (batch) fits each
    exceedance with the hours after it too (BATCH_FIT); the live service sees only the past.

    Two fits: one where every source may take strength, and one where each cluster of sources
    within `cluster_m` (the stacks of a park) is first reduced to its best-fitting member
    (`plume.pick_cluster_members`). The reduced fit gives the contribution of its first source,
    whose park's strength the full fit too often spreads over neighbouring stacks; the full fit
    gives the others' (siblings included); all are ranked by contribution.
    `cluster_m` = 0 gives the full fit alone.
    """
    fit = dict(BATCH_FIT) if look_ahead else {}
    full = _attribute(obs, sources, pollutant, threshold, progress, only, fit)
    if cluster_m <= 0:
        return full
    second = None if progress is None else (
        lambda it, **kw: progress(it, **(kw | {"desc": "attribute, one stack per park"})))
    one_per_park = _attribute(obs, sources, pollutant, threshold, second, only, fit | {"cluster_m": cluster_m})
    return merge_rankings(one_per_park, full)


def _attribute(obs: pd.DataFrame, sources: pd.DataFrame, pollutant: str, threshold: float, progress,
               only: list[tuple[pd.Timestamp, str]] | None, fit: dict) -> list[Attribution]:
    times = pd.DatetimeIndex(np.sort(obs["time"].unique()))
    st = obs.groupby("station_id", sort=True)[["lat", "lon"]].median()
    lat0 = float(np.mean(np.r_[st["lat"], sources["lat"]]))
    lon0 = float(np.mean(np.r_[st["lon"], sources["lon"]]))
    sx, sy = to_local_xy_m(st["lat"].to_numpy(), st["lon"].to_numpy(), lat0, lon0)
    qx, qy = to_local_xy_m(sources["lat"].to_numpy(float), sources["lon"].to_numpy(float), lat0, lon0)
    wide = obs.pivot_table(index="time", columns="station_id", values=pollutant, aggfunc="mean", dropna=False)
    values = wide.reindex(index=times, columns=st.index).to_numpy(float)
    wind = obs.dropna(subset=["wind_dir", "wind_speed"])
    wd, ws = network_wind(wind if len(wind) else obs, times)
    local_hour = ((times.hour + times.minute / 60 + lon0 / 15.0) % 24).to_numpy()
    targets = None
    if only is not None:
        targets = np.zeros(values.shape, dtype=bool)
        col = {sid: j for j, sid in enumerate(st.index)}
        for t, sid in only:
            i = times.get_indexer([t])[0]
            if i >= 0 and sid in col:
                targets[i, col[sid]] = True
    weights = obs.groupby("station_id")["weight"].median().reindex(st.index).fillna(1.0).to_numpy() \
        if "weight" in obs else None
    return attribute_exceedances(times, list(st.index), sx, sy, values, wd, ws, local_hour,
                                 sources.reset_index(drop=True), qx, qy, threshold, progress=progress,
                                 targets=targets, weights=weights, **fit)


def attribute_table(obs: pd.DataFrame, sources: pd.DataFrame, pollutant: str, threshold: float) -> pd.DataFrame:
    """The rows of CONTRACTS.md §3 (plus confidence)."""
    from shared.batch_io import progress

    res = attribute_observations(obs, sources, pollutant, threshold, progress=progress, look_ahead=True)
    cols = ["time", "station_id", "source_id", "contribution", "rank", "confidence"]
    if not res:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame([r.__dict__ for r in res])[cols]
