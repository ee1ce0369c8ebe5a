"""Observation quality control: QARTOD tests (ioos_qc) plus a spatial buddy check.

Flags follow QARTOD: 1 pass, 2 not evaluated, 3 suspect, 4 fail, 9 missing. Values are
never changed or removed here; models downstream use only values flagged 1 (see
`passed_values`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from services.weather.domain.grid import StationGrid, distance_matrix_km

PASS, NOT_EVALUATED, SUSPECT, FAIL, MISSING = 1, 2, 3, 4, 9

# Per variable: gross range (fail = physically impossible, suspect = outside this climate),
# spike and rate-of-change thresholds in unit / unit per hour, flat line in hours with a
# tolerance, and the buddy check's floor on the residual scale (a robust sigma never below it).
DEFAULT_QC_CONFIG: dict[str, dict[str, Any]] = {
    "temp": {"fail_span": (-60.0, 60.0), "suspect_span": (-40.0, 47.0), "spike": (6.0, 12.0),
             "rate_per_h": 8.0, "flat_h": (6, 12), "flat_tol": 0.05,
             "buddy": {"floor": 0.8, "overrides": ("spike", "rate_of_change", "flat_line")}},
    "dewp": {"fail_span": (-70.0, 40.0), "suspect_span": (-50.0, 35.0), "spike": (8.0, 15.0),
             "rate_per_h": 10.0, "flat_h": (6, 12), "flat_tol": 0.05, "buddy": {"floor": 1.2}},
    # hourly pressure at Beijing stations steps by up to 5 hPa in 1 % of hours (coarse logging), so the
    # spike and step limits sit above that; it is never unchanged for 5 h there (flat at 5/10 h: stuck
    # recall 0.82 -> 0.92 on the bench at the same false-flag rate as 8/14 h)
    # pressure and wind also flag a buddy deviation held for 4 h (every hour beyond 2, the mean beyond 3 robust
    # sigmas): on the bench, swapped-station recall 0.14 -> 0.67 (pressure) and 0.56 -> 0.63 (wind). Temperature
    # and dew point keep to the single-hour test: cold pools and sea-breeze fronts hold such deviations for
    # hours, and the test doubled their false flags for little recall
    # station pressure falls about 12 hPa per 100 m of height: a sea-level range (850/960 hPa) failed every station
    # above ~1500 m and held those above ~450 m suspect. Fail is what no inhabited station reads (Tibetan stations
    # ~550-650 hPa, records near 1085); suspect is more than 60 hPa from the station's own median (beyond what
    # weather moves it outside a typhoon's eye), so every station is judged against its own height
    "pres": {"fail_span": (500.0, 1090.0), "suspect_dev": 60.0, "spike": (7.0, 12.0),
             "rate_per_h": 10.0, "flat_h": (5, 10), "flat_tol": 0.05,
             "buddy": {"floor": 1.5, "sustained": {"hours": 4, "z": 3.0, "z_each": 2.0}}},
    "wind_speed": {"fail_span": (0.0, 75.0), "suspect_span": (0.0, 40.0), "spike": (10.0, 20.0),
                   "rate_per_h": 15.0, "flat_h": (10, 18), "flat_tol": 0.05, "flat_skip_zero": True,
                   "buddy": {"floor": 0.2, "z": (3.5, 6.0), "transform": "log1p",
                             "sustained": {"hours": 4, "z": 3.0, "z_each": 2.0}}},
    "rain": {"fail_span": (0.0, 300.0), "suspect_span": (0.0, 120.0)},
    "wind_dir": {"fail_span": (0.0, 360.0)},
}
# buddy-check defaults: neighbours within radius_km, at least min_buddies reporting,
# robust z-score of (value - buddies' median - station's usual offset) above z -> suspect/fail
BUDDY_DEFAULTS = {"radius_km": 120.0, "min_buddies": 2, "z": (4.5, 7.0), "window_h": 720, "min_history_h": 48,
                  "method": "regression", "max_buddies": 8, "refit_h": 168, "fit_window_h": 1440, "min_fit_h": 120}


@dataclass
class QcResult:
    """Combined flag and the flag of each individual test, per variable, on the grid."""

    flags: dict[str, np.ndarray]  # var -> (n_times, n_stations) uint8
    tests: dict[str, dict[str, np.ndarray]]  # var -> test name -> flags


def _combine(into: np.ndarray, flags: np.ndarray) -> None:
    """Raise `into` to suspect/fail where a test says so (pass/missing of one test changes nothing)."""
    f = np.asarray(np.ma.filled(flags, PASS), dtype=np.uint8)
    bad = (f == SUSPECT) | (f == FAIL)
    np.maximum(into, np.where(bad, f, 0).astype(np.uint8), out=into)


def gross_range(values: np.ndarray, cfg: dict[str, Any], level: np.ndarray | float | None = None) -> np.ndarray:
    """Gross-range flags (as ioos_qc's): 4 outside `fail_span`, 3 outside `suspect_span` or farther than
    `suspect_dev` from `level` (the station's own median, see `station_level`), 1 else; 9 where missing."""
    x = np.asarray(values, dtype=float)
    lo, hi = cfg["fail_span"]
    with np.errstate(invalid="ignore"):
        out = np.where((x < lo) | (x > hi), FAIL, PASS)
        if cfg.get("suspect_span") is not None:
            slo, shi = cfg["suspect_span"]
            out = np.where((out == PASS) & ((x < slo) | (x > shi)), SUSPECT, out)
        if cfg.get("suspect_dev") is not None and level is not None:
            out = np.where((out == PASS) & (np.abs(x - level) > cfg["suspect_dev"]), SUSPECT, out)
    return np.where(np.isfinite(x), out, MISSING).astype(np.uint8)


def within_fail_span(arr: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """`arr` with the values outside the gross range's fail span as NaN."""
    lo, hi = cfg["fail_span"]
    with np.errstate(invalid="ignore"):
        return np.where((arr >= lo) & (arr <= hi), arr, np.nan)


def station_level(arr: np.ndarray, cfg: dict[str, Any], causal: bool = False) -> np.ndarray | None:
    """Each station's own median (over the rows of a time × station array, or of one series) of its plausible
    values, for the `suspect_dev` test; `causal`: the median up to each row. None when the test is not configured."""
    if cfg.get("suspect_dev") is None:
        return None
    ok = within_fail_span(np.asarray(arr, dtype=float), cfg)
    if causal:
        return pd.DataFrame(ok.reshape(len(ok), -1)).expanding().median().to_numpy().reshape(ok.shape)
    with np.errstate(all="ignore"), _quiet():
        return np.nanmedian(ok, axis=0)


def qc_series_tests(values: np.ndarray, times_s: np.ndarray, cfg: dict[str, Any],
                    causal: bool = False) -> dict[str, np.ndarray]:
    """QARTOD tests of one station's hourly series (`times_s` in seconds). Returns flags per test.

    `causal=True` leaves out the spike test, which looks one value ahead, so that a value's flag
    depends only on data up to its own time (what a nowcast issued then may use).
    """
    from ioos_qc import qartod

    out: dict[str, np.ndarray] = {}
    x = np.ma.masked_invalid(values)
    out["gross_range"] = gross_range(values, cfg, station_level(values, cfg, causal=causal))
    if "spike" in cfg and not causal:
        sp = np.ma.filled(qartod.spike_test(x, suspect_threshold=cfg["spike"][0],
                                            fail_threshold=cfg["spike"][1]), MISSING)
        # a spike also lifts the test's statistic at its two neighbours; only the peak is the error
        stat = np.full(len(values), np.nan)
        stat[1:-1] = np.abs(values[1:-1] - (values[:-2] + values[2:]) / 2)
        left, right = np.roll(stat, 1), np.roll(stat, -1)
        left[0], right[-1] = np.nan, np.nan
        echo = (np.nan_to_num(left, nan=-1) > np.nan_to_num(stat, nan=-1)) | (
            np.nan_to_num(right, nan=-1) > np.nan_to_num(stat, nan=-1))
        out["spike"] = np.where(echo & np.isin(sp, (SUSPECT, FAIL)), PASS, sp)
    if "rate_per_h" in cfg:
        roc = np.ma.filled(qartod.rate_of_change_test(x, times_s, threshold=cfg["rate_per_h"] / 3600.0), MISSING)
        # the step back down after a spike is not itself an error: only the jump into it counts
        prev_spike = np.zeros_like(roc, dtype=bool)
        if "spike" in out:
            prev_spike[1:] = np.isin(out["spike"][:-1], (SUSPECT, FAIL))
        roc = np.where(prev_spike & (roc == SUSPECT), PASS, roc)
        out["rate_of_change"] = roc
    if "flat_h" in cfg:
        fl = np.ma.filled(qartod.flat_line_test(x, times_s, suspect_threshold=int(cfg["flat_h"][0] * 3600),
                                                fail_threshold=int(cfg["flat_h"][1] * 3600),
                                                tolerance=cfg.get("flat_tol", 0.0)), MISSING)
        if cfg.get("flat_skip_zero"):
            # calm wind reads 0 for hours on end; that is weather, not a stuck sensor
            fl = np.where(np.nan_to_num(values, nan=1.0) == 0.0, PASS, fl)
        # ioos_qc skips missing values inside the window, so a value alone in it (the first after a gap, a new
        # station's first reading) has a range of 0 and read as stuck: a flat line needs two values in its window
        # (as newest_series_tests has it)
        for hours, flag in zip(cfg["flat_h"], (SUSPECT, FAIL), strict=True):
            n = _finite_within(values, times_s, hours * 3600.0)
            fl = np.where((fl == flag) & (n < 2), PASS, fl)
        out["flat_line"] = fl
    return {k: np.asarray(v, dtype=np.uint8) for k, v in out.items()}


def _finite_within(values: np.ndarray, times_s: np.ndarray, window_s: float) -> np.ndarray:
    """How many finite values lie in (t - window_s, t] for each time t (times ascending)."""
    ok = np.concatenate([[0], np.cumsum(np.isfinite(values))])
    lo = np.searchsorted(times_s, np.asarray(times_s, dtype=float) - window_s, side="right")
    return ok[np.arange(1, len(values) + 1)] - ok[lo]


def buddy_check(values: np.ndarray, lat: np.ndarray, lon: np.ndarray, cfg: dict[str, Any],
                history: np.ndarray | None = None) -> np.ndarray:
    """Spatial buddy check on a (time × station) array.

    Each station is predicted from its nearest neighbours (at most `max_buddies` within
    `radius_km`) by a linear model refitted every `refit_h` hours on the past `fit_window_h`
    hours (robust: a second fit leaves out residuals beyond 4 sigma). The residual is scaled by
    its own rolling robust spread (never below `floor`) and flagged above `z`. Where no model
    could be fitted yet (too little history) the neighbours' median minus the station's usual
    offset stands in. Values failed in a first pass are taken out of the neighbours' predictors
    (filled from the others) so one bad station does not accuse its buddies. Uses only the same
    hour and the past; `history` (earlier rows of the same stations) seeds the fits in streaming
    use. Returns flags (2 where fewer than `min_buddies` report).
    """
    c = {**BUDDY_DEFAULTS, **cfg}
    n_t, n_s = values.shape
    if n_s < c["min_buddies"] + 1:
        return np.full((n_t, n_s), NOT_EVALUATED, dtype=np.uint8)
    full = np.asarray(values if history is None else np.vstack([history, values]), dtype=float)
    if c.get("transform") == "log1p":
        # wind: a unit mistake or a gust-scale error is multiplicative, a shift in log space
        with np.errstate(invalid="ignore"):
            full = np.log1p(np.where(full >= 0, full, np.nan))
    d = distance_matrix_km(lat, lon)
    n_buddies = np.zeros(full.shape, dtype=int)
    fin = np.isfinite(full)
    for s in range(n_s):
        mates = np.flatnonzero((d[s] <= c["radius_km"]) & (np.arange(n_s) != s))
        n_buddies[:, s] = fin[:, mates].sum(axis=1) if len(mates) else 0
    med_resid = _median_buddy_resid(full, d, c)
    med_z = _scaled(med_resid, c)
    z = med_z
    signed = _scaled(med_resid, c, signed=True) if c.get("sustained") else None
    if c.get("method", "regression") == "regression":
        # values the robust median check already fails are kept out of the fits and predictors
        work = np.where(np.nan_to_num(med_z) > c["z"][1], np.nan, full)
        for _ in range(2):
            resid = _regression_resid(work, full, d, c)
            zr = _scaled(resid, c)
            z = np.where(np.isfinite(zr), zr, med_z)
            # take clear failures out of the predictors for the second pass
            work = np.where((np.nan_to_num(z) > c["z"][0]) | (np.nan_to_num(med_z) > c["z"][1]), np.nan, full)
        if signed is not None:
            r_signed = _scaled(resid, c, signed=True)
            signed = np.where(np.isfinite(r_signed), r_signed, signed)
    ok = np.isfinite(z) & (n_buddies >= c["min_buddies"])
    fl = np.where(z > c["z"][1], FAIL, np.where(z > c["z"][0], SUSPECT, PASS))
    if signed is not None:
        # a deviation too small for one hour's threshold, held for hours: an offset, a swapped or stuck station
        fl = np.where((fl == PASS) & _sustained(signed, c["sustained"], causal=bool(c.get("causal"))), SUSPECT, fl)
    full_flags = np.where(ok, fl, NOT_EVALUATED).astype(np.uint8)
    return full_flags[-n_t:]


def _sustained(signed: np.ndarray, c: dict[str, Any], *, causal: bool) -> np.ndarray:
    """Cells inside a run of `hours` hours whose buddy residuals all lie beyond `z_each` on the same side and
    average beyond `z`: an offset, a swapped or stuck station, too small for the single-hour threshold but
    too long to be the noise of coarse logging. Causal: only runs ending at the cell (what a stream knows)."""
    w, z_each, z_mean = int(c["hours"]), float(c.get("z_each", 2.0)), float(c["z"])
    s = pd.DataFrame(signed)
    roll = s.rolling(w, min_periods=w)
    lo, hi, mean = roll.min(), roll.max(), roll.mean()
    q = ((lo > z_each) & (mean > z_mean)) | ((hi < -z_each) & (mean < -z_mean))
    if causal:
        return q.to_numpy()
    # a run that qualifies marks every hour of it, not only its last
    return q[::-1].rolling(w, min_periods=1).max()[::-1].to_numpy().astype(bool)


def _past_median(x: np.ndarray, window: int, min_count: int) -> np.ndarray:
    """Median of each column over the `window` rows before each row (NaN skipped; NaN with fewer than
    `min_count` values) - pandas' shift(1).rolling(window, min_periods).median(), in C (bottleneck)."""
    import bottleneck as bn

    x = np.asarray(x, dtype=float)
    past = np.vstack([np.full((1, x.shape[1]), np.nan), x[:-1]])
    window = max(1, min(window, len(x)))  # a window longer than the data is the data so far
    if min_count > window:
        return np.full(x.shape, np.nan)
    return bn.move_median(past, window, min_count=max(1, min_count), axis=0)


def _scaled(resid: np.ndarray, c: dict[str, Any], *, signed: bool = False) -> np.ndarray:
    """|residual - its rolling median| over the rolling robust sigma of the past (floored); with `signed`,
    without the absolute value."""
    import bottleneck as bn

    w, m = max(1, min(int(c["window_h"]), len(resid))), int(c["min_history_h"])
    bias = _past_median(resid, w, m)
    with np.errstate(invalid="ignore"):
        dev_now = resid - bias
        # the spread at row t: the median of |past residual - its own bias| over the window before t
        dev = np.abs(dev_now)
        past_dev = np.vstack([np.full((1, dev.shape[1]), np.nan), dev[:-1]])
        scale = 1.4826 * (bn.move_median(past_dev, w, min_count=max(1, m), axis=0) if m <= w
                          else np.full(dev.shape, np.nan))
        scale = np.maximum(np.where(np.isfinite(scale), scale, np.nan), c["floor"])
        return (dev_now if signed else np.abs(dev_now)) / scale


def _median_buddy_resid(full: np.ndarray, d: np.ndarray, c: dict[str, Any]) -> np.ndarray:
    n_t, n_s = full.shape
    resid = np.full(full.shape, np.nan)
    cap = int(c["median_max_buddies"]) if c.get("median_max_buddies") else n_s
    rows: list[int] = []
    mates_of: list[np.ndarray] = []
    for s in range(n_s):
        mates = np.flatnonzero((d[s] <= c["radius_km"]) & (np.arange(n_s) != s))
        if len(mates) < c["min_buddies"]:
            continue
        # a dense network: the nearest ones say as much as all within the radius, at a fraction of the cost
        mates = mates[np.argsort(d[s, mates], kind="stable")[:cap]] if len(mates) > cap else mates
        rows.append(s)
        mates_of.append(mates)
    if not rows:
        return resid
    # one vectorised median: each station's mates side by side, padded with an all-NaN column
    width = max(len(m) for m in mates_of)
    padded = np.vstack([np.concatenate([m, np.full(width - len(m), n_s)]) for m in mates_of]).astype(int)
    ext = np.hstack([full, np.full((n_t, 1), np.nan)])
    with np.errstate(all="ignore"), _quiet():
        med = np.nanmedian(ext[:, padded], axis=2)  # (n_t, stations with buddies)
    resid[:, rows] = full[:, rows] - med
    return resid


def _impute(work: np.ndarray, c: dict[str, Any]) -> np.ndarray:
    """Gaps filled with the station's recent level plus the hour's median anomaly of the others."""
    lvl = _past_median(work, int(c["window_h"]), 1)
    with np.errstate(all="ignore"), _quiet():
        lvl = np.where(np.isfinite(lvl), lvl, np.nanmedian(work, axis=0)[None, :])
        rowmed = np.nanmedian(work - lvl, axis=1)
    fill = lvl + np.nan_to_num(rowmed)[:, None]
    return np.where(np.isfinite(work), work, fill)


def _regression_resid(work: np.ndarray, full: np.ndarray, d: np.ndarray, c: dict[str, Any]) -> np.ndarray:
    """Residual of each station's value from a linear model on its neighbours, fitted on the past only."""
    n_t, n_s = full.shape
    xs = _impute(work, c)
    pred = np.full((n_t, n_s), np.nan)
    step, win, minfit = int(c["refit_h"]), int(c["fit_window_h"]), int(c["min_fit_h"])
    for s in range(n_s):
        order = np.argsort(d[s])
        mates = order[(order != s) & (d[s, order] <= c["radius_km"])][: int(c["max_buddies"])]
        if len(mates) < c["min_buddies"]:
            continue
        x = xs[:, mates]
        y = work[:, s]
        for b in range(0, n_t, step):
            rows = np.arange(max(0, b - win), b)
            rows = rows[np.isfinite(y[rows]) & np.all(np.isfinite(x[rows]), axis=1)]
            if len(rows) < minfit:
                continue
            xm, ym = x[rows].mean(axis=0), y[rows].mean()
            xf, yf = x[rows] - xm, y[rows] - ym
            beta = None
            for _ in range(2):
                a = xf.T @ xf
                tr = float(np.trace(a))
                if not tr > 0.0:
                    # every neighbour held one value through the window (calm anemometers, a sentinel): nothing
                    # to regress on, the median check judges these hours; a second pass keeps the first fit
                    break
                try:
                    beta = np.linalg.solve(a + 1e-3 * tr / len(mates) * np.eye(len(mates)), xf.T @ yf)
                except np.linalg.LinAlgError:
                    break
                r = yf - xf @ beta
                sig = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-9
                keep = np.abs(r) < 4 * sig
                xf, yf = xf[keep], yf[keep]
            if beta is not None:
                pred[b:b + step, s] = ym + (x[b:b + step] - xm) @ beta
    return full - pred


class _quiet:
    """Silence numpy's 'All-NaN slice' warning for hours when no buddy reports."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def qc_grid(grid: StationGrid, config: dict[str, dict[str, Any]] | None = None,
            causal: bool = False) -> QcResult:
    """Run every configured test on every variable of the grid and combine the flags.

    Combined flag: 9 where the value is missing; else the worst of the tests' suspect (3) /
    fail (4) verdicts, 1 if none; 2 for a variable with no configured test.
    """
    cfg_all = config or DEFAULT_QC_CONFIG
    times_s = np.asarray(grid.times.as_unit("s").asi8, dtype=float)
    flags: dict[str, np.ndarray] = {}
    tests: dict[str, dict[str, np.ndarray]] = {}
    for var, arr in grid.values.items():
        present = np.isfinite(arr)
        combined = np.where(present, PASS, MISSING).astype(np.uint8)
        cfg = cfg_all.get(var)
        if cfg is None:
            flags[var] = np.where(present, NOT_EVALUATED, MISSING).astype(np.uint8)
            tests[var] = {}
            continue
        per_test: dict[str, np.ndarray] = {}
        for s in range(grid.n_stations):
            res = qc_series_tests(arr[:, s], times_s, cfg, causal=causal)
            for name, f in res.items():
                per_test.setdefault(name, np.full(arr.shape, MISSING, dtype=np.uint8))[:, s] = f
        if "buddy" in cfg:
            # impossible values (a -9999 sentinel, a wrong unit) are failed already; among the buddies they would
            # accuse the one station that still reads right, and make the regression's neighbours constant
            judged = np.where(per_test["gross_range"] == FAIL, np.nan, arr)
            per_test["buddy"] = buddy_check(judged, grid.lat, grid.lon, {**cfg["buddy"], "causal": causal})
            # a step, spike or flat stretch the neighbours agree with (e.g. the step back to normal
            # after a bad stretch, a calm night) is weather: only a fail verdict stands there
            agreed = per_test["buddy"] == PASS
            for name in cfg["buddy"].get("overrides", ("spike", "rate_of_change")):
                if name in per_test:
                    per_test[name] = np.where(agreed & (per_test[name] == SUSPECT), PASS, per_test[name]).astype(np.uint8)
        for f in per_test.values():
            _combine(combined, f)
        combined[~present] = MISSING
        flags[var] = combined
        tests[var] = per_test
    return QcResult(flags, tests)


def passed_values(grid: StationGrid, qc: QcResult) -> StationGrid:
    """A copy of the grid with every value not flagged 1 (pass) or 2 (not evaluated) set to NaN."""
    vals = {v: np.where(np.isin(qc.flags[v], (PASS, NOT_EVALUATED)), a, np.nan) for v, a in grid.values.items()}
    return StationGrid(grid.times, grid.station_ids, grid.lat, grid.lon, vals)


# the streaming service judges each hour as it closes, with days rather than months of history: the
# buddy residual's spread is estimated from 6 past hours (floored, so a short history cannot make it
# tiny), and the regression on the neighbours needs two days of hours before it replaces the median
# of the (at most 16 nearest) neighbours
STREAM_BUDDY = {"min_history_h": 6, "min_fit_h": 48, "window_h": 336, "fit_window_h": 336, "median_max_buddies": 16}


def newest_series_tests(arr: np.ndarray, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The causal QARTOD tests of `qc_series_tests` (gross range, rate of change, flat line) for the last
    row of an hourly (time × station) array only, vectorised over the stations (the stream judges one
    hour at a time; ioos_qc per station costs ~2 ms a call). Flags (n_stations,); 9 where the value is missing.
    """
    x = arr[-1]
    present = np.isfinite(x)
    out: dict[str, np.ndarray] = {}
    # the level is the median of the buffer, which ends at this hour: causal
    out["gross_range"] = gross_range(x, cfg, station_level(arr, cfg))
    if "rate_per_h" in cfg and arr.shape[0] >= 2:
        step = np.abs(x - arr[-2])
        out["rate_of_change"] = np.where(np.isfinite(step) & (step > cfg["rate_per_h"]), SUSPECT, PASS)
    if "flat_h" in cfg:
        fl = np.full(x.shape, PASS)
        for hours, flag in zip(cfg["flat_h"], (SUSPECT, FAIL), strict=True):
            if arr.shape[0] < hours + 1:
                continue
            w = arr[-(hours + 1):]
            with np.errstate(invalid="ignore"), _quiet():
                # as ioos_qc: missing hours inside the window are skipped
                flat = (np.isfinite(w).sum(axis=0) >= 2) & (np.nanmax(w, axis=0) - np.nanmin(w, axis=0) < cfg.get("flat_tol", 0.0))
            fl = np.where(flat, flag, fl)
        if cfg.get("flat_skip_zero"):
            fl = np.where(np.nan_to_num(x, nan=1.0) == 0.0, PASS, fl)
        out["flat_line"] = fl
    return {k: np.where(present, v, MISSING).astype(np.uint8) for k, v in out.items()}


def qc_newest_hour(grid: StationGrid, config: dict[str, dict[str, Any]] | None = None,
                   buddy: dict[str, Any] | None = None) -> QcResult:
    """QC of the grid's last hour only, from that hour and the past (what a stream knows when it closes).

    Per variable: gross range, rate of change and flat line (`newest_series_tests`: causal, so no spike
    test, which needs the next hour), and the spatial buddy check over the whole grid (its residual
    scale needs the history), with `buddy` overriding the configured buddy settings (default
    `STREAM_BUDDY`). Returns flags of shape (1, n_stations) per variable and per test.
    """
    cfg_all = config or DEFAULT_QC_CONFIG
    over = STREAM_BUDDY if buddy is None else buddy
    flags: dict[str, np.ndarray] = {}
    tests: dict[str, dict[str, np.ndarray]] = {}
    for var, arr in grid.values.items():
        last = arr[-1:]
        present = np.isfinite(last)
        combined = np.where(present, PASS, MISSING).astype(np.uint8)
        cfg = cfg_all.get(var)
        if cfg is None:
            flags[var] = np.where(present, NOT_EVALUATED, MISSING).astype(np.uint8)
            tests[var] = {}
            continue
        per_test = {name: f[None, :] for name, f in newest_series_tests(arr, cfg).items()}
        if "buddy" in cfg and present.any():
            per_test["buddy"] = buddy_check(within_fail_span(arr, cfg), grid.lat, grid.lon,
                                            {**cfg["buddy"], **over, "causal": True})[-1:]
            agreed = per_test["buddy"] == PASS
            for name in cfg["buddy"].get("overrides", ("spike", "rate_of_change")):
                if name in per_test:
                    per_test[name] = np.where(agreed & (per_test[name] == SUSPECT), PASS, per_test[name]).astype(np.uint8)
        for f in per_test.values():
            _combine(combined, f)
        combined[~present] = MISSING
        flags[var] = combined
        tests[var] = per_test
    return QcResult(flags, tests)
