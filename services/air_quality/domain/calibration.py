"""Low-cost sensor calibration against a reference: learned correction with humidity and temperature.

A cheap optical PM sensor over-reads in humid air (hygroscopic growth) and drifts. The
correction is an xgboost model of the reference value from the raw reading, relative
humidity and temperature; drift is tracked as the rolling bias of the calibrated value
against the reference and flagged when it leaves the band seen during fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class SensorCalibration:
    model: object
    resid_sd: float
    n_train: int

    def apply(self, raw: np.ndarray, rh: np.ndarray, temp: np.ndarray) -> np.ndarray:
        """Calibrated concentration from raw reading, RH (%) and temperature (°C)."""
        x = np.column_stack([raw, rh, temp])
        return np.maximum(self.model.predict(x), 0.0)


def fit_calibration(raw, rh, temp, reference, *, n_jobs: int = 2) -> SensorCalibration:
    """Fit a correction from co-located (or nearest-reference) pairs; NaN pairs are skipped."""
    import xgboost as xgb

    x = np.column_stack([raw, rh, temp]).astype(float)
    y = np.asarray(reference, dtype=float)
    ok = np.isfinite(y) & np.isfinite(x[:, 0])
    if ok.sum() < 20:
        raise ValueError(f"too few co-located pairs to calibrate ({int(ok.sum())} < 20)")
    m = xgb.XGBRegressor(n_estimators=200, max_depth=4, learning_rate=0.08, subsample=0.8,
                         tree_method="hist", n_jobs=n_jobs, random_state=0,
                         monotone_constraints="(1,0,0)").fit(x[ok], y[ok])
    resid = y[ok] - m.predict(x[ok])
    return SensorCalibration(m, float(np.std(resid)), int(ok.sum()))


def drift_flags(calibrated, reference, resid_sd: float, *, window: int = 48, k: float = 3.0,
                min_points: int = 12) -> np.ndarray:
    """True where the rolling mean bias over `window` readings exceeds k standard errors.

    A calibration 'no longer holds' when the bias is persistent, not when one reading is off.
    """
    err = pd.Series(np.asarray(calibrated, dtype=float) - np.asarray(reference, dtype=float))
    mean = err.rolling(window, min_periods=min_points).mean()
    n = err.notna().astype(float).rolling(window, min_periods=1).sum()
    se = np.maximum(resid_sd, 1e-6) / np.sqrt(np.maximum(n, 1.0)) + 0.25 * resid_sd
    return (mean.abs() > k * se).fillna(False).to_numpy()
