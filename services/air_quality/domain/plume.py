"""Gaussian plume forward model and source attribution (溯源).

Attribution fits non-negative source strengths to all stations over the recent hours at
once (inverse Gaussian plume, NNLS with a per-hour background), so a source has to explain
the pattern across stations and hours, not just lie upwind of one. Upwind
back-projection (how well each source lines up with the wind towards the station, and how
near it is) breaks ties and is the naive ranking it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Briggs (1973) open-country dispersion coefficients, x in metres: (ay, az, bz, pz)
_BRIGGS = {
    "A": (0.22, 0.20, 0.0, 0.0),
    "B": (0.16, 0.12, 0.0, 0.0),
    "C": (0.11, 0.08, 0.0002, -0.5),
    "D": (0.08, 0.06, 0.0015, -0.5),
    "E": (0.06, 0.03, 0.0003, -1.0),
    "F": (0.04, 0.016, 0.0003, -1.0),
}
RECEPTOR_HEIGHT_M = 3.0


def stability_class(wind_speed: np.ndarray, local_hour: np.ndarray) -> np.ndarray:
    """Pasquill class from wind speed and day/night (a cloud-free proxy for insolation)."""
    ws = np.asarray(wind_speed, dtype=float)
    day = (np.asarray(local_hour) >= 7) & (np.asarray(local_hour) < 18)
    out = np.where(day, np.where(ws < 2, "B", np.where(ws < 3, "C", np.where(ws < 5, "C", "D"))),
                   np.where(ws < 2, "F", np.where(ws < 3, "E", "D")))
    return out


def sigmas(x: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ay = np.vectorize(lambda c: _BRIGGS[c][0])(cls)
    az = np.vectorize(lambda c: _BRIGGS[c][1])(cls)
    bz = np.vectorize(lambda c: _BRIGGS[c][2])(cls)
    pz = np.vectorize(lambda c: _BRIGGS[c][3])(cls)
    sy = ay * x / np.sqrt(1 + 0.0001 * x)
    sz = az * x * np.where(bz > 0, (1 + bz * x) ** pz, 1.0)
    return sy, np.minimum(sz, 3000.0)


def plume_kernel(src_x, src_y, src_h, rec_x, rec_y, wind_from_deg, wind_speed, cls,
                 spread_deg: float = 0.0) -> np.ndarray:
    """Concentration (µg/m³) per 1 g/s of each source at each receptor: shape (receptors, sources).

    Scalars for the wind (one hour). `spread_deg` > 0 averages the plume over wind directions
    within ± that angle, which stands in for the meander of an hour and for vane error.
    """
    src_x, src_y, src_h = (np.asarray(a, dtype=float) for a in (src_x, src_y, src_h))
    rec_x, rec_y = np.asarray(rec_x, dtype=float), np.asarray(rec_y, dtype=float)
    u = max(float(wind_speed), 0.5)
    dirs = [wind_from_deg] if spread_deg <= 0 else wind_from_deg + np.linspace(-spread_deg, spread_deg, 7)
    dx = rec_x[:, None] - src_x[None, :]
    dy = rec_y[:, None] - src_y[None, :]
    total = np.zeros(dx.shape)
    for wd in dirs:
        th = np.radians(wd)
        # the wind blows towards (−sin, −cos) of the direction it comes from
        down = -dx * np.sin(th) - dy * np.cos(th)
        cross = dx * np.cos(th) - dy * np.sin(th)
        xd = np.maximum(down, 1.0)
        sy, sz = sigmas(xd, np.full(xd.shape, cls))
        h = src_h[None, :]
        z = RECEPTOR_HEIGHT_M
        c = (1e6 / (2 * np.pi * u * sy * sz) * np.exp(-0.5 * (cross / sy) ** 2)
             * (np.exp(-0.5 * ((z - h) / sz) ** 2) + np.exp(-0.5 * ((z + h) / sz) ** 2)))
        total += np.where(down > 1.0, c, 0.0)
    return total / len(dirs)


def upwind_score(src_x, src_y, rec_x, rec_y, wind_from_deg) -> np.ndarray:
    """Back-projection: alignment with the upwind direction over distance (receptors × sources)."""
    dx = np.asarray(src_x)[None, :] - np.asarray(rec_x)[:, None]
    dy = np.asarray(src_y)[None, :] - np.asarray(rec_y)[:, None]
    bearing = np.arctan2(dx, dy)
    cos = np.cos(bearing - np.radians(wind_from_deg))
    d = np.maximum(np.hypot(dx, dy), 50.0)
    return np.maximum(cos, 0.0) ** 4 / d


@dataclass(frozen=True)
class Attribution:
    time: pd.Timestamp
    station_id: str
    source_id: str
    contribution: float  # same unit as the pollutant
    rank: int
    confidence: float  # share of the station's excess over background this source explains


def source_clusters(src_x: np.ndarray, src_y: np.ndarray, radius_m: float) -> list[np.ndarray]:
    """Groups of sources within `radius_m` of one another (single linkage): the stacks of one industrial park."""
    from scipy.cluster.hierarchy import fcluster, linkage

    xy = np.c_[np.asarray(src_x, dtype=float), np.asarray(src_y, dtype=float)]
    if len(xy) < 2 or radius_m <= 0:
        return [np.array([j]) for j in range(len(xy))]
    lab = fcluster(linkage(xy, "single"), radius_m, "distance")
    return [np.flatnonzero(lab == c) for c in np.unique(lab)]


def _weighted_fit(k: np.ndarray, b: np.ndarray, hour: np.ndarray, n_hours: int, sig: np.ndarray,
                  ridge: float) -> tuple[float, np.ndarray]:
    """NNLS of b ≈ k·q + background[hour], rows divided by their noise `sig`: (residual norm, q)."""
    from scipy.optimize import nnls

    scale = np.maximum(k.max(axis=0), 1e-12)
    bg = np.zeros((len(b), n_hours))
    bg[np.arange(len(b)), hour] = 1.0
    a = np.hstack([k / scale, bg]) / sig[:, None]
    ref = max(float(np.abs(b).max()), 1.0)
    n_q = k.shape[1]
    a = np.vstack([a, np.hstack([np.eye(n_q) * ridge * ref, np.zeros((n_q, n_hours))])])
    coef, r = nnls(a, np.r_[b / sig, np.zeros(n_q)], maxiter=100 * a.shape[1])
    return float(r), coef[:n_q] / scale


def pick_cluster_members(k: np.ndarray, b: np.ndarray, hour: np.ndarray, n_hours: int, sig: np.ndarray,
                         clusters: list[np.ndarray]) -> np.ndarray:
    """Keep one source per cluster: the member whose fit leaves the least noise-weighted squared error.

    Stacks a few hundred metres apart seen from kilometres away through vane error explain the
    data almost equally well one for another, and a fit that may use all of them spreads the
    strength over the wrong ones. Each cluster in turn (the one the joint fit loads most first)
    is reduced to the member that fits best with the others as they stand.

    Returns the kept mask over the columns of `k`.
    """
    n_src = k.shape[1]
    keep = np.ones(n_src, dtype=bool)
    _, q0 = _weighted_fit(k, b, hour, n_hours, sig, 1e-4)
    for mem in sorted((c for c in clusters if len(c) > 1), key=lambda c: -q0[c].sum()):
        fits = []
        for m in mem:
            trial = keep.copy()
            trial[mem] = False
            trial[m] = True
            r, _ = _weighted_fit(k[:, trial], b, hour, n_hours, sig, 1e-4)
            fits.append((r, int(m)))
        keep[mem] = False
        keep[min(fits)[1]] = True
    return keep


def attribute_exceedances(
    times: pd.DatetimeIndex, station_ids: list[str], st_x: np.ndarray, st_y: np.ndarray, values: np.ndarray,
    wind_from: np.ndarray, wind_speed: np.ndarray, local_hour: np.ndarray,
    sources: pd.DataFrame, src_x: np.ndarray, src_y: np.ndarray, threshold: float,
    window_h: int = 36, spread_deg: float = 8.0, progress=None, block_h: int = 6,
    lam_shared: float = 1e-3, lam_block: float = 1e-3, vane_sigma_deg: float = 8.0,
    targets: np.ndarray | None = None, weights: np.ndarray | None = None,
    hours_after: int = 0, cluster_m: float = 0.0,
) -> list[Attribution]:
    """Attribute every (time, station) above `threshold` to sources.

    values: T × S; wind_from/wind_speed/local_hour: T (network wind). For each exceedance
    hour the strengths of all sources are fitted jointly by NNLS over the `window_h` hours up
    to it and the `hours_after` hours after it (0 live; a batch analyst has the whole file)
    and all stations (a shared strength plus one per `block_h`-hour block, ridge-penalised),
    with a non-negative background per hour; each station's share is then taken over its
    plausible wind-direction offsets (`vane_sigma_deg`). With `cluster_m` > 0 only one source
    of each cluster within that distance enters the fit (see `pick_cluster_members`). Window,
    spread and penalties were chosen on bench/air's simulated episodes under the constraint
    that the city simulator's demo episode is still traced to its source
    (tests/test_air_simulate.py).

    `targets` (T × S, bool) limits which exceedances are attributed (default: all); `weights` (S)
    weighs each receptor's rows in the fit (calibrated low-cost sensors count less than stations).
    """
    from scipy.optimize import nnls

    src_h = sources["height_m"].to_numpy(float) if "height_m" in sources else np.full(len(sources), 10.0)
    src_h = np.nan_to_num(src_h, nan=10.0)
    n_t, n_s = values.shape
    n_all = len(sources)
    cls = stability_class(wind_speed, local_hour)
    kern_cache: dict[int, np.ndarray] = {}
    clusters = source_clusters(src_x, src_y, cluster_m)
    pick_cache: dict[tuple[int, int], np.ndarray] = {}

    def kern(t: int) -> np.ndarray:
        if t not in kern_cache:
            kern_cache[t] = plume_kernel(src_x, src_y, src_h, st_x, st_y, wind_from[t], wind_speed[t], cls[t],
                                         spread_deg)
        return kern_cache[t]

    above = np.nan_to_num(values, nan=-np.inf) > threshold
    if targets is not None:
        above &= targets
    w_rec = np.ones(n_s) if weights is None else np.asarray(weights, dtype=float)
    hits = np.argwhere(above)
    ex_times = np.unique(hits[:, 0])
    out: list[Attribution] = []
    it = ex_times if progress is None else progress(ex_times, total=len(ex_times), desc="attribute")
    for t in it:
        ts = list(range(max(0, t - window_h + 1), min(n_t, t + hours_after + 1)))
        # sources switch on and off: a strength shared by the whole window plus a non-negative
        # deviation per block of `block_h` hours (block 0 ends at t, blocks after t count on from
        # it), the deviations penalised harder so a source has to be consistent across blocks
        # unless the data say otherwise
        blk_of = {tau: (tau - t + block_h - 1) // block_h for tau in ts}
        first_blk = blk_of[ts[0]]
        n_blk = blk_of[ts[-1]] - first_blk + 1
        rows, rhs, hour_col, blk_col, wcol, ycol = [], [], [], [], [], []
        for k, tau in enumerate(ts):
            ok = np.isfinite(values[tau])
            rows.append(kern(tau)[ok] * w_rec[ok, None])
            rhs.append(values[tau][ok] * w_rec[ok])
            hour_col.append(np.full(ok.sum(), k))
            blk_col.append(np.full(ok.sum(), blk_of[tau] - first_blk))
            wcol.append(w_rec[ok])
            ycol.append(values[tau][ok])
        k_all = np.vstack(rows)
        b = np.concatenate(rhs)
        hc = np.concatenate(hour_col)
        bc = np.concatenate(blk_col)
        use = np.arange(n_all)
        if cluster_m > 0:
            key = (ts[0], ts[-1])
            if key not in pick_cache:
                sig = (0.08 * np.maximum(np.concatenate(ycol), 10.0) + 2.0) / np.concatenate(wcol)
                pick_cache[key] = pick_cluster_members(k_all, b, hc, len(ts), sig, clusters)
            use = np.flatnonzero(pick_cache[key])
        n_src = len(use)
        k_src = k_all[:, use]
        scale = np.maximum(k_src.max(axis=0), 1e-12)
        k_n = k_src / scale
        a_blk = np.zeros((len(b), n_src * n_blk))
        for blk in range(n_blk):
            m = bc == blk
            a_blk[m, blk * n_src:(blk + 1) * n_src] = k_n[m]
        a_bg = np.zeros((len(b), len(ts)))
        a_bg[np.arange(len(b)), hc] = np.concatenate(wcol)
        a = np.hstack([k_n, a_blk, a_bg])
        ref = max(float(np.abs(b).max()), 1.0)
        n_q = n_src * (1 + n_blk)
        pen = np.r_[np.full(n_src, lam_shared), np.full(n_src * n_blk, lam_block)] * ref
        a_aug = np.vstack([a, np.hstack([np.diag(pen), np.zeros((n_q, len(ts)))])])
        b_aug = np.concatenate([b, np.zeros(n_q)])
        coef, _ = nnls(a_aug, b_aug, maxiter=50 * a.shape[1])
        b_t = -first_blk  # the block holding t
        q = np.zeros(n_all)
        q[use] = (coef[:n_src] + coef[n_src * (1 + b_t):n_src * (2 + b_t)]) / scale
        bg = coef[n_q + ts.index(t)]
        contrib_t = kern(t) * q[None, :]  # stations × sources at hour t
        if vane_sigma_deg > 0:
            # each station sees the plumes through its own vane error and meander: pick, per
            # station, the wind-direction offsets (Gaussian prior of vane_sigma_deg) by how well their plumes
            # explain its observed excess, and attribute with that posterior mean
            offs = np.linspace(-2.5 * vane_sigma_deg, 2.5 * vane_sigma_deg, 21)
            k_offs = np.stack([plume_kernel(src_x, src_y, src_h, st_x, st_y, wind_from[t] + d, wind_speed[t],
                                            cls[t], spread_deg / 2) for d in offs])  # D × S × J
            pred = k_offs @ q  # D × S
            exc = np.nan_to_num(values[t] - bg, nan=0.0)
            noise = 0.1 * np.maximum(values[t], 10.0) + 2.0
            cost = ((pred - exc[None, :]) / np.nan_to_num(noise, nan=10.0)[None, :]) ** 2 \
                + (offs / vane_sigma_deg)[:, None] ** 2
            w = np.exp(-0.5 * (cost - cost.min(axis=0, keepdims=True)))
            w /= w.sum(axis=0, keepdims=True)  # posterior over offsets, per station
            contrib_t = np.einsum("ds,dsj->sj", w, k_offs) * q[None, :]
        up = upwind_score(src_x, src_y, st_x, st_y, wind_from[t])
        for s in np.flatnonzero(above[t]):
            c = contrib_t[s]
            pos = np.flatnonzero(c > 1e-6)
            if len(pos) == 0:
                continue
            order = pos[np.lexsort((-up[s, pos], -c[pos]))]
            excess = max(values[t, s] - bg, 1e-9)
            share = c / max(excess, c.sum())
            for r, j in enumerate(order, start=1):
                out.append(Attribution(times[t], station_ids[s], str(sources["source_id"].iloc[j]),
                                       float(c[j]), r, float(min(share[j], 1.0))))
    return out


def naive_ranking(src_x, src_y, st_x, st_y, wind_from_deg: float) -> np.ndarray:
    """Source indices per station ranked by upwind alignment and distance alone (the baseline)."""
    return np.argsort(-upwind_score(src_x, src_y, st_x, st_y, wind_from_deg), axis=1)
