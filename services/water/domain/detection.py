"""Leak detection: learned sensor expectations, residual CUSUM per sensor and per DMA.

1. :func:`fit_expectation` learns, on leak-free history, what every pressure and flow sensor
   should read given what a leak does not change: metered demand (smart meters), tank levels,
   the on/off state of pumps and valves (operations), and the time of day and week. A ridge
   regression per sensor; blocked cross-validation over the history gives out-of-sample residuals
   that set each sensor's residual scale and the alarm thresholds, then the model is fitted on all of it.
2. :class:`LeakMonitor` turns new readings into residuals, orients them so that a leak pushes
   them up (pressure falls, inflow rises — the sign comes from the leak signatures), averages
   them over `smooth_hours` and runs one-sided CUSUMs, with thresholds calibrated on the
   out-of-sample history, on: the water balance (inflow from reservoirs minus tank storage
   change, see :func:`add_water_balance`) when every supply is metered; otherwise each DMA's
   mean pressure residual and the whole network's. An alarm opens a leak; the change of the
   residuals — their mean over the following `localise_hours` minus their mean over the
   `baseline_hours` before the onset (less `smooth_hours`, which the smoothed CUSUM lags by) —
   locates it (see localisation.py) and becomes the new baseline, so a second leak is a second
   change. A later alarm whose pressure pattern matches
   a known leak nearby (a slowly growing leak getting bigger) updates that leak instead.
   Every alarm carries provisional candidates at once (from the hours the alarm saw). With
   `watch_while_localising` (the city demo: leaks a few hours apart) the CUSUMs restart at the
   alarm against the level it reached instead of going blind for `localise_hours`, so a second
   leak inside the window is a second alarm, and each change is measured from that level.
3. :meth:`LeakMonitor.rank_pipes` ranks pipes for a change: pressures weighted by residual spread
   (the monitor's default), whitened by their leak-free covariance (`localise_weighting="white"`:
   the batch command, with operating-state signatures, see BATCH_OPTIONS; and the demo), or the
   naive nearest-logger baseline the benchmark compares against.

Known operations (tank filling, valve changes) enter as features when they are measured, and
as explicit suppression windows when they come from config (`suppress`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from services.water.domain.localisation import LeakCandidate, SensitivityMatrix, Sensor, localise
from services.water.domain.network import WaterNetwork


@dataclass
class ExpectationModel:
    sensors: list[Sensor]  # all sensors of the SCADA data
    targets: list[str]  # sensor ids with a learned expectation (pressure, flow)
    feature_sources: dict[str, list[str]]  # demand / level / status sensor ids used as inputs
    status_threshold: dict[str, float]
    x_mean: np.ndarray
    x_std: np.ndarray
    coef: np.ndarray  # (n_features, n_targets)
    intercept: np.ndarray
    sigma: np.ndarray  # residual scale per target, from held-out history
    train_fill: dict[str, float]
    # weekends use more water; the term is learned once the history holds a whole weekend and weekdays
    weekly: bool = False
    # plain standard deviation of the held-out residuals: weights the sensors when locating a leak
    spread: np.ndarray | None = None

    def features(self, values: pd.DataFrame) -> np.ndarray:
        idx = pd.DatetimeIndex(values.index)
        hour = (idx.hour + idx.minute / 60.0).to_numpy(dtype=float)
        cols = []
        for k in (1, 2, 3, 4):
            cols += [np.sin(2 * np.pi * k * hour / 24), np.cos(2 * np.pi * k * hour / 24)]
        if self.weekly:
            cols.append(np.asarray(idx.day_of_week >= 5, dtype=float))
        dem = self.feature_sources["demand"]
        if dem:
            d = self._col(values, dem).sum(axis=1)
            cols += [d, d * d]
        for sid in self.feature_sources["level"]:
            cols.append(self._col(values, [sid])[:, 0])
        for sid in self.feature_sources["status"]:
            on = (np.abs(self._col(values, [sid])[:, 0]) > self.status_threshold[sid]).astype(float)
            cols.append(on)
            if dem:
                cols.append(on * d)
        return np.column_stack(cols)

    def _col(self, values: pd.DataFrame, ids: list[str]) -> np.ndarray:
        out = np.empty((len(values), len(ids)))
        for i, sid in enumerate(ids):
            v = values[sid].to_numpy(dtype=float) if sid in values else np.full(len(values), np.nan)
            out[:, i] = np.where(np.isfinite(v), v, self.train_fill.get(sid, 0.0))
        return out

    def expected(self, values: pd.DataFrame) -> np.ndarray:
        x = (self.features(values) - self.x_mean) / self.x_std
        return x @ self.coef + self.intercept

    def residuals(self, values: pd.DataFrame) -> np.ndarray:
        """Observed minus expected, (n_rows, n_targets); NaN where a target has no reading."""
        obs = np.column_stack([values[t].to_numpy(dtype=float) if t in values else np.full(len(values), np.nan)
                               for t in self.targets])
        return obs - self.expected(values)


def _has_weekend_and_weekdays(idx: pd.DatetimeIndex) -> bool:
    weekend = np.asarray(idx.day_of_week >= 5)
    per_day = pd.Timedelta(days=1) / (pd.Series(idx).diff().median() if len(idx) > 1 else pd.Timedelta(days=1))
    return bool(weekend.sum() >= 1.5 * per_day and (~weekend).sum() >= 3 * per_day)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge on standardised x, per target column, ignoring NaN targets by filling with the column mean."""
    ym = np.nanmean(y, axis=0)
    yc = np.where(np.isfinite(y), y, ym) - ym
    a = x.T @ x + alpha * np.eye(x.shape[1])
    coef = np.linalg.solve(a, x.T @ yc)
    return coef, ym


def fit_expectation(
    values: pd.DataFrame,
    sensors: list[Sensor],
    net: WaterNetwork | None = None,
    *,
    alpha: float = 1.0,
    n_folds: int = 4,
) -> tuple[ExpectationModel, np.ndarray]:
    """Fit on leak-free `values` (time index, one column per sensor id).

    Returns the model fitted on all rows and out-of-sample residuals over the history (for calibration).
    """
    if len(values) < 48:
        raise ValueError("need at least 48 leak-free time steps to learn sensor expectations")
    kinds = {s.sensor_id: s for s in sensors}
    # a sensor with no reading in the history has nothing to learn from: as a target its NaN fit, kept, dominated
    # the whitened localisation with a near-zero variance; as an input (a smart meter or tank level installed after
    # the training end) it read as its fill, 0, in training, and then its whole consumption entered the summed
    # demand, raised every expectation and masked real leaks. It is left out either way until a refit sees it
    trained = {s.sensor_id for s in sensors
               if s.sensor_id in values and np.isfinite(values[s.sensor_id].to_numpy(dtype=float)).any()}
    untrained = sorted(f"{s.element} ({s.kind})" for s in sensors if s.sensor_id not in trained)
    if untrained:
        logging.getLogger(__name__).warning(
            "%d sensor(s) without readings before the training end are not used until a refit sees them: %s%s",
            len(untrained), ", ".join(untrained[:10]), " …" if len(untrained) > 10 else "")
    targets = [s.sensor_id for s in sensors if s.kind in ("pressure", "flow", "balance") and s.sensor_id in trained]
    if not targets:
        raise ValueError("no pressure or flow sensors to watch")
    active_links = set()
    if net is not None:
        active_links = set(net.wn.pump_name_list) | set(net.wn.valve_name_list)
    status = [s.sensor_id for s in sensors if s.kind == "flow" and s.element in active_links and s.sensor_id in trained]
    sources = {
        "demand": [s.sensor_id for s in sensors if s.kind == "demand" and s.sensor_id in trained],
        "level": [s.sensor_id for s in sensors if s.kind == "level" and s.sensor_id in trained],
        "status": status,
    }
    thr = {sid: 0.02 * float(np.nanmax(np.abs(values[sid].to_numpy(dtype=float))) or 1.0) for sid in status}
    fill = {sid: float(values[sid].astype(float).mean()) for sid in kinds if sid in values}  # NaN: no values
    fill = {k: (v if np.isfinite(v) else 0.0) for k, v in fill.items()}
    model = ExpectationModel(sensors, targets, sources, thr, np.zeros(1), np.ones(1), np.zeros((1, 1)),
                             np.zeros(1), np.ones(len(targets)), fill,
                             weekly=_has_weekend_and_weekdays(pd.DatetimeIndex(values.index)))
    x_all = model.features(values)
    y_all = np.column_stack([values[t].to_numpy(dtype=float) if t in values else np.full(len(values), np.nan)
                             for t in targets])
    def fit(rows: np.ndarray) -> None:
        x = x_all[rows]
        mu, sd = x.mean(axis=0), x.std(axis=0)
        sd[sd < 1e-9] = 1.0
        model.x_mean, model.x_std = mu, sd
        model.coef, model.intercept = _ridge((x - mu) / sd, y_all[rows], alpha)

    # out-of-sample residuals over the whole history: contiguous blocks, each predicted by a
    # model fitted on the others, so the thresholds see the model's real error
    n = len(values)
    blocks = np.array_split(np.arange(n), n_folds)
    held = np.empty((n, len(targets)))
    for b in blocks:
        fit(np.setdiff1d(np.arange(n), b))
        held[b] = model.residuals(values.iloc[b])
    # a robust scale (MAD): one glitch in the history (a logger reset, a tank level jump) must not
    # widen every threshold
    med = np.nanmedian(held, axis=0)
    sigma = 1.4826 * np.nanmedian(np.abs(held - med), axis=0)
    fallback = np.nanmedian(sigma[np.isfinite(sigma) & (sigma > 0)]) if np.any(sigma > 0) else 1.0
    model.sigma = np.where(np.isfinite(sigma) & (sigma > 1e-6), sigma, fallback)
    spread = np.nanstd(held, axis=0)
    model.spread = np.where(np.isfinite(spread) & (spread > 1e-6), spread, model.sigma)
    fit(np.arange(n))
    return model, held


@dataclass
class LeakEvent:
    """A detected leak. `candidates` ranked best first; `flow_m3h` estimated from the signature fit."""

    leak_id: str
    detected_at: pd.Timestamp
    statistic: str  # which CUSUM raised it, e.g. "dma:dma-2", "flow:P-1", "network"
    dma: str
    candidates: list[LeakCandidate] = field(default_factory=list)
    flow_m3h: float = float("nan")
    onset_at: pd.Timestamp | None = None
    localised_at: pd.Timestamp | None = None
    updates: int = 0
    # False: the alarm was withdrawn when its localisation window closed (the water balance did not rise)
    confirmed: bool = True
    _best_pipe: str = field(default="", repr=False, compare=False)  # the best single match (merging)

    @property
    def pipe_id(self) -> str:
        return self.candidates[0].pipe_id if self.candidates else ""


@dataclass
class _Pending:
    event: LeakEvent
    onset_row: int
    alarm_row: int
    # the level the CUSUMs ran against when it alarmed (watching while localising): the change is measured from it
    base: np.ndarray | None = None


class LeakMonitor:
    """Stateful detector: feed it readings in time order with :meth:`update`; it returns leaks as they are localised."""

    def __init__(
        self,
        model: ExpectationModel,
        matrix: SensitivityMatrix | None,
        net: WaterNetwork,
        calibration_residuals: np.ndarray,
        *,
        step: pd.Timedelta,
        drift_k: float = 1.0,
        threshold_margin: float = 2.5,
        min_threshold: float = 5.0,
        localise_hours: float = 24.0,
        smooth_hours: float = 12.0,
        merge_correlation: float = 0.8,
        merge_distance_m: float = 1000.0,
        baseline_hours: float = 24.0,
        baseline_gap_hours: float | None = None,
        localise_weighting: str = "sigma",
        z_clip: float = 6.0,
        suppress: list[tuple[pd.Timestamp, pd.Timestamp]] | None = None,
        watch_while_localising: bool = False,
        confirm_k: float = 1.0,
    ):
        self.model, self.matrix, self.net = model, matrix, net
        self.step = step
        self.k = drift_k
        self.localise_steps = max(1, int(pd.Timedelta(hours=localise_hours) / step))
        # residuals carry the daily cycle's model error; a running mean over half a day
        # averages it out before the CUSUM sees it
        self.smooth_steps = max(1, int(pd.Timedelta(hours=smooth_hours) / step))
        self.merge_correlation = merge_correlation
        self.merge_distance_m = merge_distance_m
        self.suppress = suppress or []
        self.baseline_steps = max(1, int(pd.Timedelta(hours=baseline_hours) / step))
        self.localise_weighting = localise_weighting
        self.z_clip = z_clip
        # keep the CUSUMs running while an alarm's localisation window fills (against the level the
        # alarm reached): a second leak inside that window is then a second alarm, not part of the first
        self.watch_while_localising = watch_while_localising
        gap_h = smooth_hours if baseline_gap_hours is None else baseline_gap_hours
        self.baseline_gap_steps = max(0, int(pd.Timedelta(hours=gap_h) / step))
        by_id = {s.sensor_id: s for s in model.sensors}
        self.target_sensors = [by_id[t] for t in model.targets]
        # the column of the network's water balance among the targets (None: no balance meter)
        self._balance = next((i for i, s in enumerate(self.target_sensors) if s.kind == "balance"), None)
        self.orientation = self._orientation()
        self.stats = self._statistics()
        if not self.stats:
            raise ValueError(self._no_statistic())
        # calibrate each statistic's scale and CUSUM threshold on held-out leak-free residuals
        # the first day of a history often holds start-up transients (tanks settling)
        skip = min(len(calibration_residuals) // 4, int(pd.Timedelta(days=1) / step))
        if len(calibration_residuals) - skip < self.smooth_steps:
            need = min_training_steps(step, smooth_hours)
            raise ValueError(
                f"need at least {need} leak-free time steps ({need * step / pd.Timedelta(hours=1):g} h) before the "
                f"training end, found {len(calibration_residuals)}: the alarm statistics average over "
                f"{smooth_hours:g} h and the first part of the history is skipped as start-up; move the training "
                "end later (a few days of history is what the thresholds need to be reliable)")
        zc = self._oriented(calibration_residuals[skip:])
        xs = _running_mean(self._stat_values(zc), self.smooth_steps)[self.smooth_steps - 1:]
        self.stat_mu = np.nanmean(xs, axis=0)
        self.stat_mu[~np.isfinite(self.stat_mu)] = 0.0
        self.stat_sd = np.nanstd(xs, axis=0)
        self.stat_sd[~np.isfinite(self.stat_sd) | (self.stat_sd < 1e-9)] = 1.0
        xz = (xs - self.stat_mu) / self.stat_sd
        self.h = np.maximum(min_threshold, threshold_margin * self._cusum_path(xz).max(axis=0))
        self.sig_idx: np.ndarray | None = None
        self._calibrate_whitening(zc)
        self.confirm_k = confirm_k
        self.confirm_sd = self._calibrate_confirmation(calibration_residuals[skip:])
        self.reset()

    def _calibrate_confirmation(self, history: np.ndarray) -> float | None:
        """Spread of the water balance's change, as an alarm measures it (the mean over a localisation window
        minus the mean over the baseline before the onset), over leak-free history; None without a balance or
        with too little history.

        Every leak raises the water balance for good. On the benchmark's fresh scenarios (seeds 12-29) most false
        alarms came from slow drifts that the CUSUMs crossed while the balance, measured over the day after,
        had not risen at all (0.0-0.6 of this spread, against 4-10 for most leaks): an alarm whose balance rose
        by less than `confirm_k` of it is withdrawn when its window closes (see _localise)."""
        if self._balance is None or self.confirm_k <= 0:
            return None
        h = pd.Series(history[:, self._balance]).interpolate(limit_direction="both").to_numpy()
        n_a, n_b, gap = self.localise_steps, self.baseline_steps, self.baseline_gap_steps
        if len(h) < n_a + n_b + gap + 8 or not np.isfinite(h).all():
            return None
        c = np.concatenate([[0.0], np.cumsum(h)])
        t = np.arange(gap + n_b, len(h) - n_a + 1)
        after = (c[t + n_a] - c[t]) / n_a
        before = (c[t - gap] - c[t - gap - n_b]) / n_b
        sd = float(np.std(after - before))
        return sd if sd > 1e-9 else None

    def _calibrate_whitening(self, zc: np.ndarray) -> None:
        """Whitening of the smoothed pressure residuals by their leak-free covariance, for localisation.

        Pressures move together with demand and tanks; matching leak signatures in whitened
        coordinates counts that shared swing once instead of once per logger, so the local drop
        a leak causes decides the ranking."""
        if self.matrix is None:
            return
        col = {m.sensor_id: j for j, m in enumerate(self.matrix.sensors)}
        idx = [i for i, s in enumerate(self.target_sensors) if s.kind == "pressure" and s.sensor_id in col]
        if len(idx) < 3:
            return
        self.sig_idx = np.array(idx)
        scale = (self.model.sigma * self.orientation)[self.sig_idx]
        hist = _running_mean(np.nan_to_num(zc[:, self.sig_idx] * scale), self.smooth_steps)[self.smooth_steps - 1:]
        cov = np.cov(hist.T)
        # shrunk toward the diagonal: a few days of history estimate a dozen correlations loosely
        cov = 0.9 * cov + 0.1 * np.diag(np.diag(cov)) + 1e-9 * np.eye(len(idx))
        self.sig_white = np.linalg.cholesky(np.linalg.inv(cov))
        sig = self.matrix.per_m3h[:, [col[self.target_sensors[i].sensor_id] for i in idx]]
        self.sig_matrix = SensitivityMatrix([self.target_sensors[i] for i in idx], self.matrix.pipes,
                                            sig @ self.sig_white, self.matrix.network_hash)

    # ---- setup -------------------------------------------------------------------------
    def _orientation(self) -> np.ndarray:
        """+1 where a leak raises the reading, -1 where it lowers it."""
        out = np.ones(len(self.target_sensors))
        for i, s in enumerate(self.target_sensors):
            if self.matrix is not None and s.sensor_id in [m.sensor_id for m in self.matrix.sensors]:
                j = [m.sensor_id for m in self.matrix.sensors].index(s.sensor_id)
                col = self.matrix.per_m3h[:, j]
                med = np.median(col[np.abs(col) > 0]) if np.any(np.abs(col) > 0) else 0.0
                out[i] = -1.0 if med < 0 else 1.0
            elif s.kind == "pressure":
                out[i] = -1.0
        return out

    def _statistics(self) -> list[tuple[str, str, np.ndarray]]:
        """(name, dma, weights over targets) for each CUSUM."""
        stats = []
        n = len(self.target_sensors)
        dmas: dict[str, list[int]] = {}
        for i, s in enumerate(self.target_sensors):
            if s.kind == "pressure":
                dmas.setdefault(self.net.dma_of_node.get(s.element, "dma-1"), []).append(i)
            elif s.kind == "balance":
                # the water balance: supply minus storage change, i.e. consumption plus leakage
                w = np.zeros(n)
                w[i] = 1.0
                stats.append(("water_balance", "all", w))
        if any(s[0] == "water_balance" for s in stats):
            # with a metered water balance, DMA mean pressures swing with pump and tank cycles more
            # than with a leak; they still locate it (see localisation), they no longer raise alarms
            return stats
        for d, idx in sorted(dmas.items()):
            w = np.zeros(n)
            w[idx] = 1.0 / len(idx)
            stats.append((f"dma:{d}", d, w))
        pressure = [i for i, s in enumerate(self.target_sensors) if s.kind == "pressure"]
        if len(dmas) > 1:
            w = np.zeros(n)
            w[pressure] = 1.0 / len(pressure)
            stats.append(("network", "all", w))
        return stats

    def _no_statistic(self) -> str:
        """What to add when nothing can raise an alarm: no pressure logger, and the water balance incomplete."""
        res = set(self.net.reservoirs)
        metered = {s.element for s in self.target_sensors if s.kind == "flow"}
        missing = [link for link, (a, b) in self.net.link_nodes.items() if (a in res or b in res) and link not in metered]
        if not res:
            return "no leak statistic: add pressure loggers (the network has no reservoir, so no water balance)"
        if not missing:  # every supply metered, but the balance had no complete reading in the history
            return ("no leak statistic: add pressure loggers, or readings before the training end from every "
                    "reservoir link's flow meter and every tank level at the same times (the water balance needs all)")
        return ("no leak statistic: add pressure loggers, or flow meters with readings before the training end on "
                f"every reservoir link (missing: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''})")

    def _is_supply_link(self, link: str) -> bool:
        if not self.net.has_link(link):
            return False
        a, b = self.net.link_nodes[link]
        res = set(self.net.reservoirs)
        return a in res or b in res or link in set(self.net.wn.pump_name_list)

    def _oriented(self, residuals: np.ndarray) -> np.ndarray:
        # clipped so that a single wild reading (a glitch in history or in the stream) moves a
        # CUSUM by a bounded step; a leak persists and accumulates anyway
        z = residuals / self.model.sigma * self.orientation
        return np.clip(z, -self.z_clip, self.z_clip)

    def _stat_values(self, z: np.ndarray) -> np.ndarray:
        w = np.array([s[2] for s in self.stats])  # (n_stats, n_targets)
        zf = np.where(np.isfinite(z), z, 0.0)
        return zf @ w.T

    def _cusum_path(self, x: np.ndarray) -> np.ndarray:
        s = np.zeros(x.shape[1])
        out = np.zeros_like(x)
        for i, row in enumerate(x):
            s = np.maximum(0.0, s + np.nan_to_num(row) - self.k)
            out[i] = s
        return out

    def reset(self) -> None:
        self.offset = np.zeros(len(self.target_sensors))
        self.cusum = np.zeros(len(self.stats))
        self.last_zero = np.zeros(len(self.stats), dtype=int)
        self.row = 0
        self.times: list[pd.Timestamp] = []
        self.resid: list[np.ndarray] = []
        self.blind_until = -1
        self.pending: list[_Pending] = []
        self.raised: list[LeakEvent] = []  # alarms as raised (provisional candidates), until taken by take_alarms
        self.xbuf: list[np.ndarray] = []
        self.leaks: list[LeakEvent] = []
        self.withdrawn: list[LeakEvent] = []  # alarms the water balance did not confirm

    # ---- streaming ---------------------------------------------------------------------
    def update(self, values: pd.DataFrame) -> list[LeakEvent]:
        """Process new rows (time index, sensor columns). Returns leaks localised during this call
        (new ones, and known ones that grew), each at most once per call."""
        out: list[LeakEvent] = []
        if values.empty:
            return out
        res = self.model.residuals(values)
        times = list(pd.DatetimeIndex(values.index))
        for t, r in zip(times, res, strict=True):
            self.times.append(t)
            self.resid.append(r)
            i = self.row
            self.row += 1
            z = self._oriented(r - self.offset)
            self.xbuf.append(self._stat_values(z[None, :])[0])
            if len(self.xbuf) > self.smooth_steps:
                self.xbuf.pop(0)
            x = (np.mean(self.xbuf, axis=0) - self.stat_mu) / self.stat_sd
            if i <= self.blind_until or self._suppressed(t):
                self.cusum[:] = 0.0
                self.last_zero[:] = i
            else:
                self.cusum = np.maximum(0.0, self.cusum + x - self.k)
                self.last_zero[self.cusum == 0.0] = i
                over = self.cusum > self.h
                if over.any():
                    j = int(np.argmax(self.cusum / self.h))
                    name, dma, _ = self.stats[j]
                    onset = int(self.last_zero[j])
                    if self.watch_while_localising:
                        # an open window ends where the new change began
                        for p in list(self.pending):
                            self.pending.remove(p)
                            done = self._localise(p, end_row=max(p.alarm_row + 1, onset))
                            if done is not None and all(done is not o for o in out):
                                out.append(done)
                    ev = LeakEvent("", t, name, dma, onset_at=self.times[onset])
                    pend = _Pending(ev, onset, i)
                    if self.watch_while_localising:
                        # the level now, over the running-mean window the alarm looked at
                        level = _column_mean(np.array(self.resid[max(onset, i + 1 - self.smooth_steps):]), self.offset)
                        pend.base = self.offset.copy()
                        self._fill_candidates(ev, level - pend.base)
                        self._rebase(level)
                    else:
                        self._fill_candidates(ev, self._change(pend, i + 1))
                        self.blind_until = i + self.localise_steps
                    # candidates at once from what the alarm saw; refined when the window is full
                    self.pending.append(pend)
                    self.raised.append(replace(ev, candidates=list(ev.candidates)))
            for p in list(self.pending):
                if i - p.alarm_row >= self.localise_steps:
                    self.pending.remove(p)
                    done = self._localise(p)
                    if done is not None and all(done is not o for o in out):
                        out.append(done)
        return out

    def take_alarms(self) -> list[LeakEvent]:
        """Alarms raised since the last call, as they were when raised (their provisional candidates): the same
        whether the rows came one at a time or in a backlog that also completed their localisation."""
        out, self.raised = self.raised, []
        return out

    def flush(self) -> list[LeakEvent]:
        """Localise alarms still waiting for their full window (end of a batch)."""
        out = []
        for p in list(self.pending):
            self.pending.remove(p)
            done = self._localise(p)
            if done is not None and all(done is not o for o in out):
                out.append(done)
        return out

    def _suppressed(self, t: pd.Timestamp) -> bool:
        return any(a <= t <= b for a, b in self.suppress)

    def _after(self, p: _Pending, end_row: int) -> np.ndarray:
        window = np.array(self.resid[p.alarm_row:end_row])
        if not len(window):  # an alarm on its own row: what the CUSUM saw since the onset
            window = np.array(self.resid[p.onset_row:end_row])
        after = np.nanmean(window, axis=0) if len(window) else np.zeros_like(self.offset)
        return np.where(np.isfinite(after), after, self.offset)

    def _change(self, p: _Pending, end_row: int, *, provisional: bool = True) -> np.ndarray:
        """Mean residual after the alarm (or, `provisional`, since the onset) minus the mean before the onset."""
        # the change is measured against the hours just before its onset rather than against the
        # learned expectation alone: slow drifts of the expectation (and an earlier leak) cancel
        # the smoothed CUSUM leaves zero up to `smooth_hours` after the change began, so the
        # baseline ends that much before the estimated onset
        hi = max(0, p.onset_row - self.baseline_gap_steps)
        lo = max(0, hi - self.baseline_steps)
        if hi - lo >= self.baseline_steps // 2:
            before = np.nanmean(np.array(self.resid[lo:hi]), axis=0)
            before = np.where(np.isfinite(before), before, self.offset)
        else:
            before = self.offset
        if p.base is not None:
            return self._after(p, end_row) - p.base
        if provisional:
            window = np.array(self.resid[p.onset_row:end_row])
            after = np.nanmean(window, axis=0) if len(window) else before
            after = np.where(np.isfinite(after), after, before)
        else:
            after = self._after(p, end_row)
        return after - before

    def _rebase(self, offset: np.ndarray) -> None:
        """A new normal level: CUSUMs restart from zero and the running mean is recomputed against it."""
        self.offset = np.where(np.isfinite(offset), offset, self.offset)
        self.cusum[:] = 0.0
        self.last_zero[:] = self.row - 1
        self.xbuf = [self._stat_values(self._oriented(r - self.offset)[None, :])[0]
                     for r in self.resid[-self.smooth_steps:]]

    def _localise(self, p: _Pending, end_row: int | None = None) -> LeakEvent | None:
        end_row = len(self.resid) if end_row is None else end_row
        after = self._after(p, end_row)
        change = self._change(p, end_row, provisional=False)
        ev = p.event
        ev.localised_at = self.times[end_row - 1]
        # the leak's pattern becomes the new normal: the next alarm must be a new change
        if not self.watch_while_localising:  # (watching, the CUSUMs run against the level at the alarm)
            self.offset = after
            self.cusum[:] = 0.0
            self.xbuf = []
        rise = self.balance_rise(change)
        if self.confirm_sd is not None and np.isfinite(rise) and rise <= self.confirm_k * self.confirm_sd:
            # not a leak: the balance did not rise over the window (a drift the CUSUMs crossed)
            ev.confirmed = False
            ev.flow_m3h = rise
            self.withdrawn.append(ev)
            return ev
        # a growing leak repeats its own pressure pattern; the water balance moves with every leak,
        # so only the pressure pattern's shape (centred) tells whether this is a known leak
        pattern = self._pressure_shape(change)
        self._fill_candidates(ev, change)
        for known in self.leaks:
            # whether this is the same leak is judged on the best single matches (the first candidates are a
            # decision of where to search, and on Net3 one region's wanders with a leak's growing change)
            near = (not ev.candidates or not known.candidates
                    or self.net.pipe_distance_m(ev._best_pipe, known._best_pipe) <= self.merge_distance_m)
            if near and _corr(pattern, known._pattern) >= self.merge_correlation:
                known._pattern = self._pressure_shape(self._cumulative(known, change))
                self._fill_candidates(known, known._change)
                known.updates += 1
                return known
        ev._pattern = pattern
        ev._change = change
        ev.leak_id = f"leak-{len(self.leaks) + 1:03d}"
        self.leaks.append(ev)
        return ev

    def balance_rise(self, change: np.ndarray) -> float:
        """The water balance's part of a change (m³/h), NaN without a balance."""
        return float(change[self._balance]) if self._balance is not None else float("nan")

    @property
    def confirm_threshold_m3h(self) -> float | None:
        """The rise of the water balance below which an alarm is withdrawn (None: alarms are not checked)."""
        return None if self.confirm_sd is None else self.confirm_k * self.confirm_sd

    def _pressure_shape(self, change: np.ndarray) -> np.ndarray:
        z = change / self.model.sigma
        p = np.array([s.kind == "pressure" for s in self.target_sensors])
        if not p.any():
            return z
        zp = z[p]
        return zp - np.nanmean(zp)

    def _cumulative(self, known: LeakEvent, change: np.ndarray) -> np.ndarray:
        known._change = known._change + change
        return known._change

    def rank_pipes(self, change: np.ndarray, weighting: str | None = None,
                   within_m: float | None = 300.0) -> list[LeakCandidate]:
        """Candidate pipes for a change of the residuals (one value per target sensor), best first.

        `weighting` (default: the monitor's `localise_weighting`): "sigma" weights each pressure by the
        spread of its held-out residuals; "white" matches in coordinates whitened by the pressures'
        leak-free covariance (needs the monitor built with it); "nearest" is the naive baseline — the
        pipes nearest the logger whose pressure fell most, in noise units. `within_m`: the first candidate
        is the pipe with the most posterior within that pipe distance (None: the best single match).
        """
        weighting = weighting or self.localise_weighting
        if self.matrix is None:
            return []
        spread = self.model.spread if self.model.spread is not None else self.model.sigma
        if weighting == "nearest":
            drop = [(-change[i] / spread[i], s.element) for i, s in enumerate(self.target_sensors)
                    if s.kind == "pressure" and np.isfinite(change[i])]
            if not drop:
                return []
            node = max(drop)[1]
            d = self.net.node_distances_m(node)
            near = sorted(self.matrix.pipes, key=lambda p: min(d.get(n, np.inf) for n in self.net.link_nodes[p])
                          + self.net.pipe_length_m.get(p, 0.0) / 2)[:10]
            return [LeakCandidate(p, 0.0, float("nan"), self.net.pipe_distance_m(near[0], p)) for p in near]
        if "white" in weighting and self.sig_idx is not None:
            # pressures whitened by their leak-free covariance (a shared swing counts once, not per logger)
            rw = np.nan_to_num(change[self.sig_idx]) @ self.sig_white
            return localise(self.sig_matrix, rw, np.ones(len(rw)), self.net, within_m=within_m)
        col = {m.sensor_id: j for j, m in enumerate(self.matrix.sensors)}
        r = np.full(len(self.matrix.sensors), np.nan)
        sig = np.full(len(self.matrix.sensors), np.nan)
        # pressures locate the leak; flows to and from tanks respond over hours in ways a
        # steady-state signature does not capture. Each pressure is weighted by the spread of its
        # held-out residuals: on the benchmark this put 37 % of top candidates within 1 km
        # (centred, equal weights: 20 %); centring on top of it lost signal on ky4
        for i, s in enumerate(self.target_sensors):
            if s.sensor_id in col and s.kind == "pressure":
                r[col[s.sensor_id]] = change[i]
                sig[col[s.sensor_id]] = spread[i] if "sigma" in weighting else 1.0
        return localise(self.matrix, r, sig, self.net, centre="centre" in weighting, within_m=within_m)

    def _fill_candidates(self, ev: LeakEvent, change: np.ndarray) -> None:
        if self.matrix is None:
            return
        ev.candidates = self.rank_pipes(change)
        # the best single match is among the candidates (the first after the places to start, if not one of them)
        ev._best_pipe = max(ev.candidates, key=lambda c: c.score).pipe_id if ev.candidates else ""
        bal = [i for i, s in enumerate(self.target_sensors) if s.kind == "balance"]
        if bal and change[bal[0]] > 0:
            ev.flow_m3h = float(change[bal[0]])
        elif ev.candidates:
            ev.flow_m3h = ev.candidates[0].flow_m3h
        if ev.candidates:
            ev.dma = self.net.dma_of_link(ev.candidates[0].pipe_id)


def _column_mean(x: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Mean of each column over its finite values; `fallback` where a column has none (a silent sensor)."""
    ok = np.isfinite(x)
    n = ok.sum(axis=0)
    total = np.where(ok, x, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), fallback)


def _running_mean(x: np.ndarray, n: int) -> np.ndarray:
    c = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
    out = np.empty_like(x)
    for i in range(len(x)):
        lo = max(0, i + 1 - n)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return 0.0
    na, nb = np.linalg.norm(a[ok]), np.linalg.norm(b[ok])
    return float(a[ok] @ b[ok] / (na * nb)) if na > 0 and nb > 0 else 0.0


KINDS = ("pressure", "flow", "level", "demand")


def align_to_grid(scada: pd.DataFrame) -> tuple[pd.DataFrame, pd.Timedelta]:
    """The SCADA step and the readings on its grid (long SCADA: time, sensor_id, kind, value).

    The step is the median gap between a sensor's own successive readings, in whole minutes. Readings already on
    one grid are returned as they are; otherwise each is moved to the nearest step of a grid on whole minutes.
    """
    default = pd.Timedelta(minutes=15)
    if len(scada) < 2:
        return scada, default
    times = scada["time"]
    ns = pd.DatetimeIndex(times).as_unit("ns").asi8
    key = pd.factorize(scada["kind"].astype(str) + ":" + scada["sensor_id"].astype(str))[0]
    order = np.lexsort((ns, key))
    gap = np.diff(ns[order])
    gap = gap[(key[order][1:] == key[order][:-1]) & (gap > 0)]
    # the gaps between all distinct timestamps made a readings-a-few-seconds-apart step out of jitter (a reading
    # stamped up to a minute late: a 1-second grid of 1.8 million rows); a sensor's own gaps do not
    minute = pd.Timedelta(minutes=1).value
    step_ns = max(1, round(float(np.median(gap)) / minute)) * minute if len(gap) else default.value
    step = pd.Timedelta(step_ns, unit="ns")
    offset = ns % step_ns
    if (offset == offset[0]).all():
        return scada, step
    # the grid's phase: a quarter into the readings' spread around their circular mean, so readings stamped up to a
    # minute late and readings a little early or late either way both land on the minute they were due
    angle = 2 * np.pi * offset / step_ns
    centre = np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) / (2 * np.pi) * step_ns
    spread = (offset - centre + step_ns / 2) % step_ns - step_ns / 2
    phase = int(round((centre + np.quantile(spread, 0.25)) / minute)) * minute % step_ns
    snapped = phase + (ns - phase + step_ns // 2) // step_ns * step_ns
    out = scada.copy()
    t = pd.to_datetime(snapped, unit="ns", utc=True)
    tz = getattr(times.dtype, "tz", None)
    out["time"] = t.tz_convert(tz) if tz is not None else t.tz_localize(None)
    return out, step


def scada_to_wide(scada: pd.DataFrame) -> tuple[pd.DataFrame, list[Sensor], pd.Timedelta]:
    """Long SCADA (time, sensor_id, kind, value) to a regular grid, one column per `kind:sensor_id`.

    The step and the grid are :func:`align_to_grid`'s; gaps of up to an hour are interpolated.
    """
    scada, step = align_to_grid(scada)
    df = scada[["time", "sensor_id", "kind", "value"]].copy()
    df["key"] = df["kind"] + ":" + df["sensor_id"]
    wide = df.pivot_table(index="time", columns="key", values="value", aggfunc="mean").sort_index()
    times = wide.index
    grid = pd.date_range(times[0], times[-1], freq=step)
    wide = wide.reindex(wide.index.union(grid)).interpolate(method="time", limit=max(1, int(pd.Timedelta(hours=1) / step)),
                                                             limit_area="inside").reindex(grid)
    pairs = df[["key", "kind", "sensor_id"]].drop_duplicates("key")
    sensors = [Sensor(k, kind, sid) for k, kind, sid in pairs.itertuples(index=False)]
    sensors.sort(key=lambda s: s.sensor_id)
    return wide, sensors, step


def add_water_balance(wide: pd.DataFrame, sensors: list[Sensor], net: WaterNetwork, step: pd.Timedelta) -> list[Sensor]:
    """Add `balance:network` = inflow from reservoirs minus tank storage change (m³/h), when every
    reservoir pipe is metered. Pump cycles and tank filling cancel out of it; a leak does not."""
    flows = {s.element: s.sensor_id for s in sensors if s.kind == "flow"}
    levels = {s.element: s.sensor_id for s in sensors if s.kind == "level"}
    res = set(net.reservoirs)
    supply = [(link, a in res) for link, (a, b) in net.link_nodes.items() if a in res or b in res]
    if not supply or any(link not in flows for link, _ in supply):
        return sensors
    total = np.zeros(len(wide))
    for link, outward in supply:
        q = wide[flows[link]].to_numpy(dtype=float)
        total += q if outward else -q
    hours = step / pd.Timedelta(hours=1)
    for tank in net.tanks:
        if tank not in levels:
            continue
        d = float(net.wn.get_node(tank).diameter)
        h = wide[levels[tank]].to_numpy(dtype=float)
        dh = np.empty_like(h)
        dh[1:] = np.diff(h) / hours
        dh[0] = dh[1] if len(h) > 1 else 0.0
        total -= np.pi * d * d / 4.0 * dh
    wide["balance:network"] = total
    return [*sensors, Sensor("balance:network", "balance", "network")]


# What batch command 6 (`cityops water detect`) runs: weeks of SCADA, a day-long window per leak. On the
# benchmark's same detections (bench/results/water.md, 32 leaks) operating-state signatures in whitened
# pressures put 0.41 of first candidates within 300 m (0.25 by the best single match), the initial-state
# spread-weighted match 0.19. The live
# service keeps its config's settings (the demo's few-hour windows on Net3 rank worse with operating state).
BATCH_OPTIONS: dict = {"localise_weighting": "white", "signature_state": "operating"}


def build_monitor(
    net: WaterNetwork,
    train: pd.DataFrame,
    sensors: list[Sensor],
    step: pd.Timedelta,
    *,
    cache_dir=None,
    signature_state: str = "initial",
    **monitor_options,
) -> LeakMonitor:
    """Everything learned from leak-free history: expectations, thresholds, leak signatures (from the
    `.inp`'s initial state or the network's operating state, see localisation.sensitivity_matrix)."""
    from services.water.domain.localisation import sensitivity_matrix

    model, held = fit_expectation(train, sensors, net)
    watched = [s for s in sensors if s.sensor_id in model.targets]
    matrix = sensitivity_matrix(net, watched, cache_dir=cache_dir, state=signature_state)
    return LeakMonitor(model, matrix, net, held, step=step, **monitor_options)


def min_training_steps(step: pd.Timedelta, smooth_hours: float = 12.0) -> int:
    """The fewest leak-free time steps a LeakMonitor can calibrate on: its statistics average over `smooth_hours`,
    after the first quarter of the history (at most a day) is skipped as start-up."""
    smooth = max(1, int(pd.Timedelta(hours=smooth_hours) / step))
    day = int(pd.Timedelta(days=1) / step)
    return next(n for n in range(smooth, 4 * smooth + day + 1) if n - min(n // 4, day) >= smooth)


def detect_leaks(
    net: WaterNetwork,
    scada: pd.DataFrame,
    train_until: pd.Timestamp,
    *,
    cache_dir=None,
    **monitor_options,
) -> list[LeakEvent]:
    """Batch detection: learn on rows up to `train_until`, then replay the rest in time order."""
    wide, sensors, step = scada_to_wide(scada)
    sensors = add_water_balance(wide, sensors, net, step)
    train = wide.loc[wide.index <= train_until]
    test = wide.loc[wide.index > train_until]
    monitor = build_monitor(net, train, sensors, step, cache_dir=cache_dir, **monitor_options)
    if test.empty:
        return []
    monitor.update(test)
    monitor.flush()
    return monitor.leaks
