"""Equipment fault early warning (设备故障预警): multivariate anomaly detection per machine.

Both detectors learn one machine's normal operation from a block of rows and then score
new rows; the score is normalised so that 1.0 is the alarm threshold. An alarm needs the
score above 1 in `k` of the last `n` samples (persistence), so one noisy sample does not
page a crew. Every scored row carries per-channel contributions: which channels deviate.

- :class:`PcaT2Q` — the textbook baseline: PCA on standardised channels, Hotelling's T²
  in the retained subspace plus the Q statistic (squared prediction error) outside it.
- :class:`MsetDetector` — MSET-style state estimation: a memory of normal states, a
  similarity-weighted estimate of the expected state for each new sample, and the
  Mahalanobis distance of the residual, smoothed over a short causal window.

Everything is causal: a row's score uses that row and earlier rows only, which is what
the streaming service can do too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import pandas as pd

ModelName = Literal["mset", "pca", "hybrid"]


@dataclass(frozen=True)
class FaultScores:
    """Per-row results. `score` >= 1 means above threshold; `is_anomaly` is after persistence."""

    channels: list[str]
    score: np.ndarray
    is_anomaly: np.ndarray
    # (n_rows, n_channels), each row sums to 1 where the score is positive
    contributions: np.ndarray

    def deviating_channels(self, row: int, top: int = 3, min_share: float = 0.15) -> list[str]:
        """The channels that explain most of row `row`'s deviation, largest first."""
        share = self.contributions[row]
        order = np.argsort(-share)[:top]
        return [self.channels[i] for i in order if share[i] >= min_share]


@dataclass(frozen=True)
class FaultAlert:
    """One alarm episode on a machine: when it started, ended, and which channels moved."""

    start_index: int
    end_index: int
    peak_score: float
    channels: list[str]


class _Scorer(Protocol):
    def fit(self, x: np.ndarray) -> _Scorer: ...

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class _Standardiser:
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std: np.ndarray = field(default_factory=lambda: np.ones(0))

    def fit(self, x: np.ndarray) -> _Standardiser:
        self.mean = np.nanmean(x, axis=0)
        std = np.nanstd(x, axis=0)
        # A channel that never moved in training (a stuck or quantised sensor) still gets a
        # finite scale, so that a later change shows up instead of dividing by zero.
        floor = np.maximum(1e-6 * np.abs(self.mean), 1e-9)
        self.std = np.maximum(std, floor)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


class PcaT2Q:
    """PCA Hotelling T² + Q (SPE). Raw score: max(T²/T²_lim, Q/Q_lim) per sample."""

    def __init__(self, explained: float = 0.90, quantile: float = 0.99):
        self.explained = explained
        self.quantile = quantile

    def fit(self, x: np.ndarray) -> PcaT2Q:
        self.scale = _Standardiser().fit(x)
        z = self.scale(x)
        _, s, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
        var = s**2 / max(len(z) - 1, 1)
        ratio = np.cumsum(var) / max(var.sum(), 1e-12)
        k = int(np.searchsorted(ratio, self.explained) + 1)
        k = min(k, z.shape[1] - 1) if z.shape[1] > 1 else 1
        self.p = vt[:k].T
        self.lam = np.maximum(var[:k], 1e-12)
        t2, q, _, _ = self._stats(z)
        self.t2_lim = max(float(np.quantile(t2, self.quantile)), 1e-12)
        self.q_lim = max(float(np.quantile(q, self.quantile)), 1e-12)
        return self

    def _stats(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        t = z @ self.p
        t2 = np.sum(t**2 / self.lam, axis=1)
        resid = z - t @ self.p.T
        q = np.sum(resid**2, axis=1)
        # T² contribution of each channel: its part of the scores, weighted by 1/lambda
        c_t2 = np.abs(z * ((t / self.lam) @ self.p.T))
        return t2, q, c_t2, resid**2

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t2, q, c_t2, c_q = self._stats(self.scale(x))
        a, b = t2 / self.t2_lim, q / self.q_lim
        contrib = np.where((a >= b)[:, None], c_t2, c_q)
        return np.maximum(a, b), contrib


class MsetDetector:
    """MSET-style state estimation with a Mahalanobis residual test.

    The memory holds normal states (each channel's extremes plus states spread over the
    training range). For a new sample x the expected normal state is the memory states
    weighted by their similarity to x (regularised MSET inverse, then normalised), the
    residual x - x̂ is measured against the covariance of residuals seen on held-out
    training rows, and that distance is averaged over the last `window` samples.
    """

    def __init__(
        self,
        memory_size: int = 150,
        bandwidth: float = 1.0,
        ridge: float = 1e-3,
        window: int = 10,
        quantile: float = 0.995,
        margin: float = 1.0,
        folds: int = 5,
    ):
        self.memory_size = memory_size
        self.bandwidth = bandwidth
        self.ridge = ridge
        self.window = window
        self.quantile = quantile
        self.margin = margin
        self.folds = folds

    # -- memory and estimate ----------------------------------------------------------
    def _select_memory(self, z: np.ndarray) -> np.ndarray:
        idx = set(np.argmin(z, axis=0).tolist()) | set(np.argmax(z, axis=0).tolist())
        order = np.argsort(np.linalg.norm(z, axis=1))
        m = max(self.memory_size - len(idx), 1)
        idx |= set(order[np.linspace(0, len(order) - 1, min(m, len(order))).astype(int)].tolist())
        return z[sorted(idx)]

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = np.sum(a**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None, :] - 2 * a @ b.T
        h2 = (self.bandwidth**2) * a.shape[1]
        return np.exp(-np.maximum(d2, 0.0) / (2 * h2))

    def _memory(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self._kernel(d, d)
        ginv = np.linalg.inv(g + self.ridge * np.eye(len(d)))
        return d, ginv

    @staticmethod
    def _estimate(mem: tuple[np.ndarray, np.ndarray], kernel, z: np.ndarray) -> np.ndarray:
        d, ginv = mem
        w = kernel(z, d) @ ginv
        s = w.sum(axis=1, keepdims=True)
        w = np.where(np.abs(s) > 1e-9, w / np.where(np.abs(s) > 1e-9, s, 1.0), 1.0 / len(d))
        return w @ d

    def _expected(self, mem: tuple[np.ndarray, np.ndarray], z: np.ndarray) -> np.ndarray:
        # With one channel there is nothing to estimate it from: expect the training mean,
        # which makes the test a smoothed univariate control chart.
        if z.shape[1] == 1:
            return np.zeros_like(z)
        return self._estimate(mem, self._kernel, z)

    def fit(self, x: np.ndarray) -> MsetDetector:
        self.scale = _Standardiser().fit(x)
        z = self.scale(x)
        n = len(z)
        # Residual statistics from held-out blocks: a state that sits in the memory is
        # reproduced exactly, which would make the normal residual look far too small.
        blocks = np.array_split(np.arange(n), max(self.folds * 4, 1))
        held = np.zeros(n, dtype=int)
        for i, b in enumerate(blocks):
            held[b] = i % self.folds
        resid = np.empty_like(z)
        for f in range(self.folds):
            tr, te = held != f, held == f
            if tr.sum() < 2 or te.sum() == 0:
                resid[te] = 0.0
                continue
            mem = self._memory(self._select_memory(z[tr]))
            resid[te] = z[te] - self._expected(mem, z[te])
        self.mem = self._memory(self._select_memory(z))
        cov = np.cov(resid, rowvar=False) if n > 2 else np.eye(z.shape[1])
        cov = np.atleast_2d(cov)
        shrink = 0.1
        cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-6 * np.eye(len(cov))
        self.prec = np.linalg.inv(cov)
        d2 = self._d2(resid)
        calib = _causal_mean(d2, self.window)
        self.limit = max(float(np.quantile(calib, self.quantile)) * self.margin, 1e-12)
        return self

    def _d2(self, resid: np.ndarray) -> np.ndarray:
        return np.einsum("ij,jk,ik->i", resid, self.prec, resid)

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = self.scale(x)
        resid = z - self._expected(self.mem, z)
        d2 = self._d2(resid)
        # Each channel's part of d²: r_j (P r)_j, clipped at 0 so shares stay readable.
        contrib = np.maximum(resid * (resid @ self.prec), 0.0)
        smooth = _causal_mean(d2, self.window)
        contrib = np.apply_along_axis(_causal_mean, 0, contrib, self.window)
        return smooth / self.limit, contrib


class HybridDetector:
    """MSET where the memory knows the state, linear regression residuals where it does not.

    MSET cannot extrapolate: a pump pushed to a load it never ran at in training looks
    abnormal to it even when flow, current and pressure still agree with each other. The
    linear model (each channel regressed on the others) does extrapolate such proportional
    relations. The row's score is the smaller of the two: the state is normal if either
    model explains it. A fault that breaks the channels' relation (vibration up at the
    same load) raises both.
    """

    def __init__(self, **mset_params: float):
        self.mset = MsetDetector(**mset_params)
        self.window = self.mset.window

    def fit(self, x: np.ndarray) -> HybridDetector:
        self.mset.fit(x)
        self.scale = self.mset.scale
        z = self.scale(x)
        p = z.shape[1]
        self.coef = np.zeros((p, p))
        self.icpt = np.zeros(p)
        lam = 1e-2 * len(z)
        n = len(z)
        half = n // 2
        resid = np.empty_like(z)
        for j in range(p):
            others = np.delete(np.arange(p), j)
            for tr, te in ((slice(0, half), slice(half, n)), (slice(half, n), slice(0, half))):
                b, c = _ridge(z[tr][:, others], z[tr][:, j], lam)
                resid[te, j] = z[te, j] - z[te][:, others] @ b - c
            b, c = _ridge(z[:, others], z[:, j], lam)
            self.coef[others, j] = b
            self.icpt[j] = c
        cov = np.atleast_2d(np.cov(resid, rowvar=False))
        cov = 0.9 * cov + 0.1 * np.diag(np.diag(cov)) + 1e-6 * np.eye(p)
        self.prec = np.linalg.inv(cov)
        d2 = np.einsum("ij,jk,ik->i", resid, self.prec, resid)
        self.limit = max(float(np.quantile(_causal_mean(d2, self.window), self.mset.quantile)), 1e-12)
        return self

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s_m, c_m = self.mset.raw(x)
        z = self.scale(x)
        resid = z - (z @ self.coef + self.icpt)
        d2 = np.einsum("ij,jk,ik->i", resid, self.prec, resid)
        s_l = _causal_mean(d2, self.window) / self.limit
        c_l = np.apply_along_axis(_causal_mean, 0, np.maximum(resid * (resid @ self.prec), 0.0), self.window)
        use_l = s_l < s_m
        return np.where(use_l, s_l, s_m), np.where(use_l[:, None], c_l, c_m)


def _ridge(a: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    am, ym = a.mean(axis=0), y.mean()
    ac = a - am
    b = np.linalg.solve(ac.T @ ac + lam * np.eye(a.shape[1]), ac.T @ (y - ym))
    return b, float(ym - am @ b)


def _causal_mean(v: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return np.asarray(v, dtype=float)
    return pd.Series(v).rolling(window, min_periods=1).mean().to_numpy()


def persistence(above: np.ndarray, k: int, n: int) -> np.ndarray:
    """True where at least `k` of the last `n` samples (this one included) are above threshold."""
    above = np.asarray(above, dtype=bool)
    if k <= 1:
        return above.copy()
    counts = pd.Series(above.astype(int)).rolling(n, min_periods=1).sum().to_numpy()
    return counts >= k


def slow_channels(x: np.ndarray, block: int = 20, share: float = 0.65, tied: float = 0.9) -> np.ndarray:
    """Lone drifting channels (a thermal channel following the weather): left out of the test.

    A channel drifts when most of its training variance is carried by its `block`-sample
    means (white-ish sensor noise gives about 1/block, a wandering channel nearly 1). Its
    training level then says little about the level to expect an hour later. A drifting
    channel that moves with another channel (|correlation| >= `tied`, e.g. flow and
    current both following the load) stays in: the state estimate checks them against
    each other, which is the point of a multivariate test.
    """
    n = (len(x) // block) * block
    if n < 2 * block:
        return np.zeros(x.shape[1], dtype=bool)
    means = x[:n].reshape(-1, block, x.shape[1]).mean(axis=1)
    total = np.nanvar(x[:n], axis=0)
    frac = np.divide(np.nanvar(means, axis=0), total, out=np.zeros(x.shape[1]), where=total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.abs(np.corrcoef(x, rowvar=False)) if x.shape[1] > 1 else np.zeros((1, 1))
    corr = np.nan_to_num(np.atleast_2d(corr))
    np.fill_diagonal(corr, 0.0)
    return (frac >= share) & (corr.max(axis=0) < tied)


@dataclass
class FaultDetector:
    """A fitted detector for one machine: channels, model and persistence rule.

    `context` holds the last training rows so that the smoothing window continues
    seamlessly into the first scored rows. `slow` channels are left out of the test.
    """

    channels: list[str]
    model: ModelName
    scorer: _Scorer
    persist_k: int
    persist_n: int
    slow: np.ndarray
    context: np.ndarray
    fill: np.ndarray

    @property
    def used(self) -> np.ndarray:
        """Channels the multivariate test sees."""
        return ~self.slow

    def score(self, frame: pd.DataFrame | np.ndarray, *, continues_training: bool = True) -> FaultScores:
        """Score rows (DataFrame with the training channels, or an array in channel order).

        With `continues_training` the rows are taken to follow the training rows directly
        (batch use); otherwise they are scored on their own (a streaming buffer).
        """
        x = _as_matrix(frame, self.channels)
        x = _fill_missing(x, self.fill)
        ctx = self.context if continues_training else self.context[:0]
        full = np.vstack([ctx, x])[:, self.used]
        s, used_contrib = self.scorer.raw(full)
        s, used_contrib = s[len(ctx):], used_contrib[len(ctx):]
        contrib = np.zeros((len(x), len(self.channels)))
        contrib[:, self.used] = used_contrib
        tot = contrib.sum(axis=1, keepdims=True)
        contrib = np.divide(contrib, tot, out=np.zeros_like(contrib), where=tot > 0)
        flags = persistence(s >= 1.0, self.persist_k, self.persist_n)
        return FaultScores(self.channels, s, flags, contrib)


def fit_detector(
    train: pd.DataFrame | np.ndarray,
    channels: Sequence[str] | None = None,
    model: ModelName = "mset",
    persist_k: int | None = None,
    persist_n: int | None = None,
    slow_share: float = 0.65,
    **params: float,
) -> FaultDetector:
    """Learn normal operation from `train` (rows of normal operation, numeric channels).

    Defaults: the MSET detector with 3-of-5 persistence; `model="pca"` gives the PCA
    T²+Q baseline with no persistence (the textbook form), unless `persist_k` is given.
    """
    if isinstance(train, pd.DataFrame):
        channels = list(channels or train.columns)
    elif channels is None:
        channels = [f"ch{i}" for i in range(np.asarray(train).shape[1])]
    x = _as_matrix(train, list(channels))
    if len(x) < max(10, 2 * x.shape[1]):
        raise ValueError(f"need at least {max(10, 2 * x.shape[1])} normal rows to learn from, got {len(x)}")
    x = _fill_missing(x, np.nanmean(x, axis=0))
    # A channel that never moved in training has no normal spread to judge it by.
    constant = np.nanstd(x, axis=0) <= 1e-12 * np.maximum(np.abs(np.nanmean(x, axis=0)), 1.0)
    if constant.all():
        raise ValueError("every channel is constant in the normal rows; nothing to learn from")
    if model == "pca":
        # The textbook baseline judges every channel on its level.
        slow = constant.copy()
        k, n = persist_k or 1, persist_n or 1
    elif model in ("mset", "hybrid"):
        # Channels that mostly drifted during training (thermal channels, levels) cannot be
        # judged on their level an hour later; they are reported but left out of the test.
        slow = slow_channels(x, share=slow_share) if slow_share < 1 else np.zeros(x.shape[1], dtype=bool)
        if (slow | constant).all():
            slow = np.zeros(x.shape[1], dtype=bool)
        slow |= constant
        k, n = persist_k or 3, persist_n or 5
    else:
        raise ValueError(f"unknown model {model!r}")
    feats = x[:, ~slow]
    scorer: _Scorer
    if model == "pca":
        scorer = PcaT2Q(**params).fit(feats)  # type: ignore[arg-type]
    elif model == "hybrid":
        scorer = HybridDetector(**params).fit(feats)
    else:
        scorer = MsetDetector(**params).fit(feats)  # type: ignore[arg-type]
    keep = max(int(getattr(scorer, "window", 1)), n)
    return FaultDetector(list(channels), model, scorer, k, n, slow, x[-keep:].copy(), x.mean(axis=0))


def alerts_from(scores: FaultScores, top: int = 3) -> list[FaultAlert]:
    """Group consecutive flagged rows into alarm episodes with their deviating channels."""
    flags = scores.is_anomaly.astype(int)
    edges = np.flatnonzero(np.diff(np.r_[0, flags, 0]))
    out = []
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        peak = a + int(np.argmax(scores.score[a:b]))
        mean_share = scores.contributions[a:b].mean(axis=0)
        order = np.argsort(-mean_share)[:top]
        chans = [scores.channels[i] for i in order if mean_share[i] >= 0.15] or [scores.channels[order[0]]]
        out.append(FaultAlert(int(a), int(b - 1), float(scores.score[peak]), chans))
    return out


def _as_matrix(frame: pd.DataFrame | np.ndarray, channels: list[str]) -> np.ndarray:
    if isinstance(frame, pd.DataFrame):
        return frame.loc[:, channels].to_numpy(dtype=float)
    x = np.asarray(frame, dtype=float)
    return x.reshape(-1, 1) if x.ndim == 1 else x


def _fill_missing(x: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Carry the last reading forward (what a dashboard shows); before any reading, the normal mean."""
    if not np.isnan(x).any():
        return x
    filled = pd.DataFrame(x).ffill().to_numpy()
    return np.where(np.isnan(filled), fallback[None, :], filled)


class OnlineFaultMonitor:
    """One machine in a stream: feed one sample at a time, get its score, flag and channels.

    Keeps just enough recent samples for the smoothing window and the persistence rule,
    so the result for each sample equals what :meth:`FaultDetector.score` gives on the
    whole series. Raises an alert once per alarm episode (when the flag turns on).
    """

    def __init__(self, detector: FaultDetector):
        self.detector = detector
        self._rows: list[np.ndarray] = [r for r in detector.context]
        self._keep = len(detector.context)
        self._above: list[bool] = []
        self._in_alarm = False

    def update(self, sample: dict[str, float] | Sequence[float]) -> tuple[float, bool, list[str], bool]:
        """Returns (score, is_anomaly, deviating channels, alarm just started)."""
        if isinstance(sample, dict):
            row = np.array([sample.get(c, np.nan) for c in self.detector.channels], dtype=float)
        else:
            row = np.asarray(sample, dtype=float)
        if np.isnan(row).any():
            row = np.where(np.isnan(row), self._rows[-1] if self._rows else self.detector.fill, row)
        self._rows.append(row)
        self._rows = self._rows[-self._keep - 1:]
        hist = np.vstack(self._rows)
        s, contrib = self.detector.scorer.raw(hist[:, self.detector.used])
        # only the newest score is complete (its window is full); earlier flags are remembered
        self._above = [*self._above, bool(s[-1] >= 1.0)][-self.detector.persist_n:]
        flag = sum(self._above) >= self.detector.persist_k
        share = np.zeros(len(self.detector.channels))
        share[self.detector.used] = contrib[-1]
        tot = share.sum()
        order = np.argsort(-share)
        channels = [self.detector.channels[i] for i in order[:3] if tot > 0 and share[i] / tot >= 0.15]
        started = flag and not self._in_alarm
        self._in_alarm = flag
        return float(s[-1]), flag, channels, started
