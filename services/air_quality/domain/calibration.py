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


def peer_drift(log_ratio: pd.DataFrame, *, blocks: int = 3, block_rows: int = 12, z_drift: float = 4.5,
               z_hold: float = 1.5, floor: float = 0.03, min_readings: int = 4) -> pd.DataFrame:
    """Which sensors drift: `log_ratio` is time × sensor of log(raw / what the calibration expects),
    on a common time step (rows), with the hours to ignore (plumes) already left out.

    What all sensors share at a time (weather the calibration does not capture, a regional change the
    reference stations do not see) is removed by the median over sensors. The rest is summarised
    per block of `block_rows` rows, the last `blocks` blocks of rows, as a robust z among the peers.
    A sensor drifts when its newest block stands out by `z_drift` and every block stands out (by
    `z_hold`) on the same side: a drift lasts, while a plume or a bad hour comes and goes.
    Returns per sensor: z of the newest and of the oldest block, the newest block's log factor, flagged."""
    cols = ["z_last", "z_first", "log_factor", "flagged"]
    dev = log_ratio[log_ratio.notna().sum(axis=1) >= 3]
    if dev.empty or dev.shape[1] < 3 or len(dev) < blocks * block_rows:
        return pd.DataFrame(columns=cols)
    dev = dev.sub(dev.median(axis=1), axis=0)
    zs, meds = [], []
    for k in range(blocks):
        part = dev.iloc[len(dev) - (k + 1) * block_rows:len(dev) - k * block_rows]
        m = part.median().where(part.notna().sum() >= min_readings)
        centre = float(m.median())
        spread = max(float(1.4826 * (m - centre).abs().median()), floor)
        zs.append((m - centre) / spread)
        meds.append(m)
    z = pd.DataFrame(zs)  # block (0 = newest) × sensor
    last = z.iloc[0]
    same_side = (np.sign(z).eq(np.sign(last), axis=1) & (z.abs() >= z_hold)).all()
    flagged = (last.abs() >= z_drift) & same_side & z.notna().all()
    return pd.DataFrame({"z_last": last, "z_first": z.iloc[-1], "log_factor": meds[0], "flagged": flagged})
