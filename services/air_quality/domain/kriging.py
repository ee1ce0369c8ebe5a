"""Ordinary kriging and variogram fitting in numpy (fast enough for a 2,500-cell grid per update)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Variogram:
    """Exponential variogram: nugget + sill·(1 − exp(−h/range)); distances in metres."""

    nugget: float
    sill: float
    range_m: float

    def __call__(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, dtype=float)
        g = self.nugget + self.sill * (1.0 - np.exp(-h / self.range_m))
        return np.where(h > 0, g, 0.0)


def fit_variogram(x: np.ndarray, y: np.ndarray, v: np.ndarray, *, n_bins: int = 12) -> Variogram:
    """Method-of-moments semivariogram, exponential model fitted by weighted least squares.

    Nugget and partial sill solve a non-negative linear fit for each trial range; the
    range with the smallest weighted error wins. Falls back to a pure nugget when there
    are too few pairs to see structure.
    """
    from scipy.optimize import nnls

    x, y, v = (np.asarray(a, dtype=float) for a in (x, y, v))
    ok = np.isfinite(v)
    x, y, v = x[ok], y[ok], v[ok]
    n = len(v)
    var = float(np.var(v)) if n > 1 else 1.0
    if n < 5 or var <= 0:
        return Variogram(max(var, 1e-6), 1e-6, 1000.0)
    i, j = np.triu_indices(n, 1)
    h = np.hypot(x[i] - x[j], y[i] - y[j])
    g = 0.5 * (v[i] - v[j]) ** 2
    edges = np.quantile(h, np.linspace(0, 1, n_bins + 1))
    idx = np.clip(np.searchsorted(edges, h, side="right") - 1, 0, n_bins - 1)
    cnt = np.bincount(idx, minlength=n_bins).astype(float)
    keep = cnt > 0
    hb = (np.bincount(idx, h, n_bins)[keep] / cnt[keep])
    gb = (np.bincount(idx, g, n_bins)[keep] / cnt[keep])
    w = np.sqrt(cnt[keep])
    best = None
    for r in np.geomspace(max(hb.min(), 1.0) / 2, hb.max() * 2, 25):
        a = np.column_stack([np.ones_like(hb), 1 - np.exp(-hb / r)]) * w[:, None]
        coef, res = nnls(a, gb * w)
        if best is None or res < best[0]:
            best = (res, coef, r)
    _, (nug, sill), r = best
    return Variogram(max(nug, 1e-6 * var), max(sill, 1e-6 * var), float(r))


def ok_weights(xs: np.ndarray, ys: np.ndarray, xt: np.ndarray, yt: np.ndarray, vg: Variogram):
    """Ordinary-kriging weights (n_targets × n_stations) and kriging variances."""
    n = len(xs)
    d = np.hypot(xs[:, None] - xs[None, :], ys[:, None] - ys[None, :])
    a = np.ones((n + 1, n + 1))
    a[:n, :n] = vg(d)
    a[n, n] = 0.0
    d0 = np.hypot(xt[:, None] - xs[None, :], yt[:, None] - ys[None, :])
    b = np.ones((len(xt), n + 1))
    b[:, :n] = vg(d0)
    sol = np.linalg.solve(a + np.eye(n + 1) * 1e-10, b.T).T
    lam, mu = sol[:, :n], sol[:, n]
    var = np.einsum("ij,ij->i", lam, b[:, :n]) + mu
    return lam, np.maximum(var, 0.0)


def ordinary_kriging(xs, ys, vs, xt, yt, vg: Variogram | None = None):
    """Kriged values and 1-sigma at targets from stations (x, y in metres)."""
    xs, ys, vs = (np.asarray(a, dtype=float) for a in (xs, ys, vs))
    ok = np.isfinite(vs)
    xs, ys, vs = xs[ok], ys[ok], vs[ok]
    xt, yt = np.asarray(xt, dtype=float), np.asarray(yt, dtype=float)
    if len(vs) == 0:
        return np.full(len(xt), np.nan), np.full(len(xt), np.nan)
    if len(vs) == 1:
        return np.full(len(xt), vs[0]), np.full(len(xt), np.nan)
    vg = vg or fit_variogram(xs, ys, vs)
    lam, var = ok_weights(xs, ys, xt, yt, vg)
    return lam @ vs, np.sqrt(var)


def idw(xs, ys, vs, xt, yt, power: float = 2.0) -> np.ndarray:
    """Inverse distance weighting; a target on a station takes its value."""
    xs, ys, vs = (np.asarray(a, dtype=float) for a in (xs, ys, vs))
    ok = np.isfinite(vs)
    xs, ys, vs = xs[ok], ys[ok], vs[ok]
    d = np.hypot(np.asarray(xt)[:, None] - xs[None, :], np.asarray(yt)[:, None] - ys[None, :])
    w = 1.0 / np.maximum(d, 1.0) ** power
    return (w @ vs) / w.sum(axis=1)
