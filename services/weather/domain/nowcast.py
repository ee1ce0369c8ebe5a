"""Station nowcasts 1–N hours ahead: several candidate models, rolling skill, best-model choice.

Candidates (all vectorised over time × station):
- `persistence`: the last passed value;
- `diurnal`: persistence plus the station's mean change over the same hours of the last 7 days;
- `sarimax`: a statsmodels SARIMAX(2,1,1)x(1,0,1,24) fitted on one station's recent training
  data, run over every station with its steady-state Kalman gain;
- `xgboost`: gradient-boosted trees on lags, the diurnal change, neighbours and the other
  variables, one model per horizon pooled over stations, predicting the change from now.

Every candidate's error is verified once its target hour has passed; an exponentially
weighted mean squared error per model, station and horizon (rolling skill) picks the best
model (最优模式) or weights a blend. p10/p90 come from the empirical quantiles of the chosen
forecast's verified errors over the past `interval_window_h` hours, per horizon.
Only data at or before an issue time is used for its forecast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from services.weather.domain.grid import StationGrid

CANDIDATES = ("persistence", "diurnal", "sarimax", "xgboost")
# variables whose forecast is an angle (degrees, wrapped) or cannot go below zero
CIRCULAR = {"wind_dir"}
NON_NEGATIVE = {"rain", "wind_speed"}


@dataclass
class NowcastConfig:
    horizons: list[int] = field(default_factory=lambda: [1, 3, 6])
    candidates: tuple[str, ...] = CANDIDATES
    selection: str = "best"  # "best" model per station/horizon, or "blend" (inverse-MSE² weights)
    skill_halflife_h: float = 72.0
    interval_window_h: int = 720
    min_interval_h: int = 24  # verified issue hours needed before p10/p90 are given (NaN until then)
    quantiles: tuple[float, float] = (0.1, 0.9)
    holdout_h: int = 720  # most recent training hours kept out of the xgboost fit, to warm up skill/intervals
    ffill_limit_h: int = 3
    xgb_params: dict[str, Any] = field(default_factory=lambda: {
        "n_estimators": 200, "max_depth": 6, "learning_rate": 0.08, "subsample": 0.8,
        "colsample_bytree": 0.8, "min_child_weight": 5, "tree_method": "hist", "max_bin": 128, "n_jobs": 2})
    sarimax_fit_h: int = 600


@dataclass
class Nowcaster:
    """Fitted models for one variable; apply with :func:`nowcast`."""

    variable: str
    config: NowcastConfig
    xgb: dict[int, Any]  # horizon -> fitted XGBRegressor
    feature_names: dict[int, list[str]]
    sarimax: dict[str, np.ndarray] | None  # Z, T, K of the steady-state filter
    trained_until: pd.Timestamp
    # horizon -> issue time of the last row each xgboost model was fitted on: its forecasts up to then are in-sample
    # and say nothing of its skill or error spread
    fit_until: dict[int, pd.Timestamp] = field(default_factory=dict)


@dataclass
class NowcastResult:
    """Forecasts on the grid: arrays (n_times, n_stations) per horizon, issue time = row time."""

    variable: str
    times: pd.DatetimeIndex
    station_ids: list[str]
    forecast: dict[int, np.ndarray]
    p10: dict[int, np.ndarray]
    p90: dict[int, np.ndarray]
    candidates: dict[str, dict[int, np.ndarray]]  # model -> horizon -> forecast
    skill_mse: dict[str, dict[int, np.ndarray]]  # model -> horizon -> rolling MSE known at issue time
    chosen: dict[int, np.ndarray]  # horizon -> index into `models` of the best model (-1 none)
    models: list[str]

    def to_frame(self, issue_mask: np.ndarray | None = None) -> pd.DataFrame:
        """Long table: issue_time, station_id, horizon_h, value, p10, p90, model (the chosen one)."""
        n_t, n_s = len(self.times), len(self.station_ids)
        rows = np.arange(n_t) if issue_mask is None else np.flatnonzero(issue_mask)
        parts = []
        for h in sorted(self.forecast):
            ch = self.chosen[h][rows]
            names = np.array(self.models + ["none"])[np.where(ch < 0, len(self.models), ch)]
            parts.append(pd.DataFrame({
                "issue_time": np.repeat(self.times[rows], n_s),
                "station_id": np.tile(np.asarray(self.station_ids, dtype=object), len(rows)),
                "horizon_h": h,
                "value": self.forecast[h][rows].ravel(),
                "p10": self.p10[h][rows].ravel(),
                "p90": self.p90[h][rows].ravel(),
                "model": names.ravel(),
            }))
        out = pd.concat(parts, ignore_index=True)
        return out.sort_values(["issue_time", "station_id", "horizon_h"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- helpers

def _ffill(a: np.ndarray, limit: int) -> np.ndarray:
    return pd.DataFrame(a).ffill(limit=limit).to_numpy()


def _shift(a: np.ndarray, k: int) -> np.ndarray:
    """Row t of the result is row t-k of `a` (k>0: the past; k<0: the future), NaN outside."""
    out = np.full_like(a, np.nan, dtype=float)
    if k > 0:
        out[k:] = a[:-k]
    elif k < 0:
        out[:k] = a[-k:]
    else:
        out[:] = a
    return out


def _wrap(d: np.ndarray) -> np.ndarray:
    return (d + 180.0) % 360.0 - 180.0


def _diff(a: np.ndarray, b: np.ndarray, circular: bool) -> np.ndarray:
    return _wrap(a - b) if circular else a - b


def _finish(var: str, f: np.ndarray) -> np.ndarray:
    if var in CIRCULAR:
        return f % 360.0
    if var in NON_NEGATIVE:
        return np.maximum(f, 0.0)
    return f


def diurnal_change(x: np.ndarray, h: int, days: int = 7, circular: bool = False) -> np.ndarray:
    """Mean over the last `days` days of x[t+h-24k] - x[t-24k]: uses only data up to t."""
    acc = np.zeros_like(x, dtype=float)
    cnt = np.zeros_like(x, dtype=float)
    for k in range(1, days + 1):
        lag = 24 * k - h
        if lag < 0:
            continue
        d = _diff(_shift(x, lag), _shift(x, 24 * k), circular)
        ok = np.isfinite(d)
        acc[ok] += d[ok]
        cnt += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)


# ---------------------------------------------------------------- candidates

def persistence_forecast(x_ff: np.ndarray, h: int) -> np.ndarray:
    """Tomorrow is like today: the last passed value."""
    return x_ff.copy()


def diurnal_forecast(x_ff: np.ndarray, x: np.ndarray, h: int, circular: bool = False) -> np.ndarray:
    """Persistence plus the station's mean change over the same hours of the last 7 days."""
    d = diurnal_change(x, h, circular=circular)
    return x_ff + np.nan_to_num(d, nan=0.0)


def _solar_hour(times: pd.DatetimeIndex, lon: np.ndarray) -> np.ndarray:
    utc_h = (times.hour + times.minute / 60.0).to_numpy(float)
    return (utc_h[:, None] + lon[None, :] / 15.0) % 24.0


def features(grid: StationGrid, var: str, h: int, ffill_limit: int = 3) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Feature arrays (n_times, n_stations) for forecasting `var` h hours ahead, and x_ff (last value)."""
    circ = var in CIRCULAR
    x = grid.values[var]
    x_ff = _ffill(x, ffill_limit)
    f: dict[str, np.ndarray] = {}
    if circ:
        f["sin_now"], f["cos_now"] = np.sin(np.radians(x_ff)), np.cos(np.radians(x_ff))
    else:
        f["now"] = x_ff
    for k in (1, 2, 3, 6, 12, 24):
        f[f"d{k}"] = _diff(x_ff, _shift(x_ff, k), circ)
    f["diurnal"] = diurnal_change(x, h, circular=circ)
    f["diurnal3"] = diurnal_change(x, h, days=3, circular=circ)
    if h <= 24:
        f["yday_target"] = _diff(_shift(x, 24 - h), x_ff, circ)
    # neighbours: the network's mean now and its recent change
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            net = np.nanmean(x_ff, axis=1, keepdims=True)
            net1 = np.nanmean(_diff(x_ff, _shift(x_ff, 1), circ), axis=1, keepdims=True)
            net3 = np.nanmean(_diff(x_ff, _shift(x_ff, 3), circ), axis=1, keepdims=True)
    if not circ:
        f["net_minus_now"] = net - x_ff
    f["net_d1"] = np.broadcast_to(net1, x.shape).copy()
    f["net_d3"] = np.broadcast_to(net3, x.shape).copy()
    hour = _solar_hour(grid.times + pd.Timedelta(hours=h), grid.lon)
    f["hour_sin"], f["hour_cos"] = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
    doy = grid.times.day_of_year.to_numpy(float)[:, None] * np.ones((1, grid.n_stations))
    f["doy_sin"], f["doy_cos"] = np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25)
    for other in ("temp", "dewp", "pres", "wind_speed", "rain"):
        if other == var or other not in grid.values:
            continue
        o = _ffill(grid.values[other], ffill_limit)
        f[f"{other}_now"] = o
        f[f"{other}_d3"] = o - _shift(o, 3)
    if "rain" in grid.values:
        r = np.nan_to_num(grid.values["rain"], nan=0.0)
        f["rain_6h"] = sum(_shift(r, k) for k in range(6))
    if "wind_dir" in grid.values and "wind_speed" in grid.values and var != "wind_dir":
        wd = np.radians(_ffill(grid.values["wind_dir"], ffill_limit))
        ws = _ffill(grid.values["wind_speed"], ffill_limit)
        f["wind_u"], f["wind_v"] = -ws * np.sin(wd), -ws * np.cos(wd)
    return f, x_ff


def _stack(f: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    return np.column_stack([a[rows].ravel() for a in f.values()]).astype(np.float32)


def _fit_sarimax(y: np.ndarray, gain_steps: int = 720) -> dict[str, np.ndarray] | None:
    """Fit SARIMAX on one series; return its filter (Z, T, gains per step K) to run on all stations."""
    import warnings

    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y = np.asarray(y, float)
    if np.sum(np.isfinite(y)) < 24 * 7:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = SARIMAX(y, order=(2, 1, 1), seasonal_order=(1, 0, 1, 24))
            res = mod.fit(disp=False, maxiter=40)
            # The gain depends only on which hours were observed, not on the values: run the model's own
            # filter over a fully observed dummy series to get its gain for each step after a station's
            # first reading (the start-up matters: the seasonal states are learnt slowly), then hold the
            # last gain as the steady state.
            fr = res.apply(np.zeros(gain_steps)).filter_results
    except (np.linalg.LinAlgError, ValueError):
        return None  # a fit that does not converge to a usable filter: the other candidates go on without it
    Z = np.asarray(fr.design[:, :, 0], float).ravel()
    T = np.asarray(fr.transition[:, :, 0], float)
    P = np.asarray(fr.predicted_state_cov, float)[:, :, :gain_steps]  # (k, k, L)
    F = np.einsum("i,ijt,j->t", Z, P, Z) + float(np.asarray(fr.obs_cov).ravel()[0])
    K = (np.einsum("ijt,j->ti", P, Z) / np.maximum(F, 1e-12)[:, None])
    n_diffuse = int(getattr(fr, "nobs_diffuse", 0) or 0)
    K[:n_diffuse] = np.nan  # handled by starting the level at the first reading
    # numerically the predicted covariance can lose positivity after some steps (F <= 0): the gains then blow up
    # (1e14) and the forecasts overflow; hold the last sound gain from there on, or drop the candidate
    bad = np.flatnonzero((np.arange(len(F)) >= n_diffuse)
                         & ((F <= 0) | ~np.isfinite(F) | ~np.isfinite(K).all(axis=1) | (np.abs(K).max(axis=1) > 1e3)))
    if len(bad):
        if bad[0] <= n_diffuse:
            return None
        K[bad[0]:] = K[bad[0] - 1]
    return {"Z": Z, "T": T, "K": K}


def sarimax_forecasts(ss: dict[str, np.ndarray], x: np.ndarray, horizons: list[int]) -> dict[int, np.ndarray]:
    """Run the fitted Kalman filter over every station at once; h-step forecasts from each hour."""
    Z, T, K = ss["Z"], ss["T"], ss["K"]
    n_t, n_s = x.shape
    k = len(Z)
    a = np.zeros((n_s, k))
    first = np.full(n_s, -1)
    filt = np.full((n_t, n_s, k), np.nan)
    level = int(np.argmax(np.abs(Z)))
    for t in range(n_t):
        y = x[t]
        ok = np.isfinite(y)
        new = ok & (first < 0)
        pred = a @ T.T
        if new.any():
            # a station's first reading fixes its level; the other states start at their mean, 0
            pred[new] = 0.0
            pred[new, level] = y[new] / Z[level]
            first[new] = t
        seen = first >= 0
        age = np.clip(t - first, 0, len(K) - 1)
        gain = np.nan_to_num(K[age], nan=0.0)
        v = np.where(ok & ~new, y - pred @ Z, 0.0)
        a = np.where(seen[:, None], pred + v[:, None] * gain, 0.0)
        filt[t] = np.where(seen[:, None], a, np.nan)
    out = {}
    Tp = np.eye(k)
    for h in range(1, max(horizons) + 1):
        Tp = T @ Tp
        if h in horizons:
            out[h] = filt @ (Z @ Tp)
    return out


# ---------------------------------------------------------------- fit / apply

def fit_nowcaster(grid: StationGrid, variable: str, train_until: pd.Timestamp,
                  config: NowcastConfig | None = None) -> Nowcaster:
    """Fit the trainable candidates on passed values with target time <= train_until.

    The last `holdout_h` training hours are left out of the xgboost fit so its skill and
    error quantiles can be measured out of sample before the first issue time.
    """
    import xgboost as xgb

    cfg = config or NowcastConfig()
    if variable not in grid.values:
        raise ValueError(f"variable {variable!r} not in observations")
    t_end = int(np.searchsorted(grid.times, train_until, side="right"))  # rows < t_end are <= T
    n_train = t_end
    hold = min(cfg.holdout_h, n_train // 4)
    xgbs, names, fit_until = {}, {}, {}
    for h in cfg.horizons if "xgboost" in cfg.candidates else []:
        f, x_ff = features(grid, variable, h, cfg.ffill_limit_h)
        y = _diff(_shift(grid.values[variable], -h), x_ff, variable in CIRCULAR)
        last_issue = n_train - hold - h  # target time inside the fit part
        rows = np.arange(max(last_issue, 0))
        X = _stack(f, rows)
        yy = y[rows].ravel()
        ok = np.isfinite(yy) & np.isfinite(x_ff[rows].ravel())
        if ok.sum() < 50:
            continue
        m = xgb.XGBRegressor(**cfg.xgb_params)
        m.fit(X[ok], yy[ok])
        xgbs[h] = m
        names[h] = list(f)
        fit_until[h] = pd.Timestamp(grid.times[len(rows) - 1])
    ss = None
    if "sarimax" in cfg.candidates and variable not in CIRCULAR:
        x = grid.values[variable][:t_end]
        lo = max(0, t_end - cfg.sarimax_fit_h)
        counts = np.sum(np.isfinite(x[lo:]), axis=0)
        if len(counts) and counts.max() > 0:
            ss = _fit_sarimax(x[lo:, int(np.argmax(counts))])
    return Nowcaster(variable, cfg, xgbs, names, ss, train_until, fit_until)


def _ewm_mean(x: np.ndarray, halflife: float) -> np.ndarray:
    """pandas' `ewm(halflife, ignore_na=True).mean()` (adjusted weights) along axis 0, vectorised over
    the columns: pandas applies it column by column, 30x slower for 500 stations."""
    decay = np.exp(-np.log(2.0) / halflife)
    num = np.zeros(x.shape[1:])
    den = np.zeros(x.shape[1:])
    out = np.full(x.shape, np.nan)
    for t in range(x.shape[0]):
        ok = np.isfinite(x[t])
        num = np.where(ok, np.where(ok, x[t], 0.0) + decay * num, num)
        den = np.where(ok, 1.0 + decay * den, den)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[t] = np.where(den > 0, num / den, np.nan)
    return out


def _rolling_mse(err: np.ndarray, h: int, halflife: float) -> np.ndarray:
    """EW mean squared error known at each issue time t: errors of issues <= t-h (target <= t)."""
    return _shift(_ewm_mean(err**2, halflife), h)


def nowcast(model: Nowcaster, grid: StationGrid, issue_rows: np.ndarray | None = None,
            cache: dict | None = None) -> NowcastResult:
    """Forecasts at every hour of `grid` (or only `issue_rows`) for every station and horizon.

    `grid` should hold passed values only (see qc.passed_values) and enough history before the
    first issue row to verify the candidates (≥ `interval_window_h` hours is best).
    `cache` (a stream's, one dict kept across calls on the same stations): the xgboost forecasts of
    earlier hours, issued then, are taken from it instead of being predicted again for the skill
    and the intervals (the trees are most of a cycle's time).
    """
    cfg, var = model.config, model.variable
    circ = var in CIRCULAR
    x = grid.values[var]
    n_t, n_s = x.shape
    sar = sarimax_forecasts(model.sarimax, x, cfg.horizons) if model.sarimax is not None else {}
    models = [m for m in cfg.candidates if m != "sarimax" or sar]
    models = [m for m in models if m != "xgboost" or model.xgb]
    cands: dict[str, dict[int, np.ndarray]] = {m: {} for m in models}
    skill: dict[str, dict[int, np.ndarray]] = {m: {} for m in models}
    fc, p10, p90, chosen = {}, {}, {}, {}
    for h in cfg.horizons:
        f, x_ff = features(grid, var, h, cfg.ffill_limit_h) if "xgboost" in models else (None, _ffill(x, cfg.ffill_limit_h))
        truth = _shift(x, -h)
        for m in models:
            if m == "persistence":
                pred = persistence_forecast(x_ff, h)
            elif m == "diurnal":
                pred = diurnal_forecast(x_ff, x, h, circ)
            elif m == "sarimax":
                pred = sar[h]
            else:
                pred = np.full((n_t, n_s), np.nan)
                if h in model.xgb:
                    rows = np.arange(n_t)
                    if issue_rows is not None:
                        # skill needs the xgboost errors over the verification window before the issues too
                        lo = max(0, int(np.min(issue_rows)) - cfg.interval_window_h - h)
                        rows = rows[lo:]
                    known: dict = {} if cache is None else cache.setdefault((var, m, h), {})
                    todo = np.array([i for i in rows if grid.times[i] not in known], dtype=int)
                    if len(todo):
                        delta = model.xgb[h].predict(_stack(f, todo)).reshape(len(todo), n_s)
                        pred[todo] = x_ff[todo] + delta
                    for i in rows:
                        if grid.times[i] in known:
                            pred[i] = known[grid.times[i]]
                        elif cache is not None:
                            known[grid.times[i]] = pred[i].copy()
                    for t in [t for t in known if t < grid.times[0]]:
                        del known[t]
                if h in getattr(model, "fit_until", {}):  # (a model pickled before it was recorded)
                    # in-sample forecasts would make the trees look skilful and their intervals narrow (in-sample
                    # RMSE 0.09 against 0.63 held out; p10-p90 covering a third at first): left out of both
                    pred = np.where(np.asarray(grid.times <= model.fit_until[h])[:, None], np.nan, pred)
            pred = _finish(var, pred)
            pred = np.where(np.isfinite(x_ff), pred, np.nan)
            cands[m][h] = pred
            skill[m][h] = _rolling_mse(_diff(pred, truth, circ), h, cfg.skill_halflife_h)
        stack_f = np.stack([cands[m][h] for m in models])  # (M, T, S)
        stack_s = np.stack([skill[m][h] for m in models])
        # where no skill is known yet, prefer the most elaborate model available (last in the list)
        prior = np.arange(len(models), 0, -1, dtype=float)[:, None, None] * 1e6
        score = np.where(np.isfinite(stack_s) & np.isfinite(stack_f), stack_s,
                         np.where(np.isfinite(stack_f), prior, np.inf))
        best = np.argmin(score, axis=0)
        best = np.where(np.isfinite(np.min(score, axis=0)), best, -1)
        if cfg.selection == "blend":
            w = np.where(np.isfinite(score) & (score < 1e5), 1.0 / np.maximum(score, 1e-9) ** 2, 0.0)
            no_skill = w.sum(axis=0) == 0
            w = np.where(no_skill[None], (np.arange(len(models))[:, None, None] == best[None]).astype(float), w)
            w = w / np.maximum(w.sum(axis=0, keepdims=True), 1e-300)
            if circ:
                ang = np.radians(np.nan_to_num(stack_f))
                final = np.degrees(np.arctan2((w * np.sin(ang)).sum(0), (w * np.cos(ang)).sum(0))) % 360
            else:
                final = (w * np.nan_to_num(stack_f)).sum(axis=0)
            final = np.where(best >= 0, final, np.nan)
        else:
            final = np.take_along_axis(stack_f, np.maximum(best, 0)[None], axis=0)[0]
            final = np.where(best >= 0, final, np.nan)
        final = _finish(var, final)
        lo_q, hi_q = _interval_offsets(_diff(final, truth, circ), h, cfg)
        fc[h] = final
        p10[h] = _finish(var, final + lo_q[:, None]) if not circ else (final + lo_q[:, None]) % 360
        p90[h] = _finish(var, final + hi_q[:, None]) if not circ else (final + hi_q[:, None]) % 360
        chosen[h] = best
    return NowcastResult(var, grid.times, grid.station_ids, fc, p10, p90, cands, skill, chosen, models)


def _interval_offsets(err: np.ndarray, h: int, cfg: NowcastConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per issue time: empirical quantiles of the forecast's errors verified by then (pooled over stations).

    Errors are forecast - truth; the interval is forecast - q_hi(err) .. forecast - q_lo(err).
    Recomputed every 6 hours to stay cheap.
    """
    n_t = err.shape[0]
    lo = np.full(n_t, np.nan)
    hi = np.full(n_t, np.nan)
    q_lo, q_hi = cfg.quantiles
    for t0 in range(0, n_t, 6):
        end = t0 - h + 1  # issues <= t0-h are verified at t0
        start = max(0, end - cfg.interval_window_h)
        if end - start < cfg.min_interval_h:
            continue
        e = err[start:end].ravel()
        e = e[np.isfinite(e)]
        if len(e) < 30:
            continue
        a, b = np.quantile(e, [q_lo, q_hi])
        lo[t0:t0 + 6], hi[t0:t0 + 6] = -b, -a
    return lo, hi
