"""Minimum night flow (MNF) per DMA: the utility's classic leak indicator and our baseline.

At night customer use is lowest, so a rise of the night minimum of a DMA's inflow is mostly
leakage. The night window is the `window_hours` of the day with the lowest mean inflow in the
leak-free history (so it works whatever the network's clock); each night's minimum is compared
with the history's nightly minima: above mean + `n_sigma` × sd is an alarm. After an alarm the
new level becomes the reference, so only a further rise raises another one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class NightFlowAlarm:
    detected_at: pd.Timestamp  # end of the night window that showed the rise
    night_flow_m3h: float
    reference_m3h: float


def night_window(inflow: pd.Series, window_hours: int = 3) -> int:
    """Start hour (0-23) of the `window_hours` with the lowest mean inflow."""
    by_hour = inflow.groupby(pd.DatetimeIndex(inflow.index).hour).mean().reindex(range(24))
    by_hour = by_hour.fillna(by_hour.mean())
    sums = [sum(by_hour[(h + i) % 24] for i in range(window_hours)) for h in range(24)]
    return int(np.argmin(sums))


def nightly_minimum(inflow: pd.Series, start_hour: int, window_hours: int = 3) -> pd.Series:
    """Minimum inflow in each night's window, indexed by the window's end time."""
    idx = pd.DatetimeIndex(inflow.index)
    in_window = ((idx.hour - start_hour) % 24) < window_hours
    s = inflow[in_window]
    night_start = (pd.DatetimeIndex(s.index) - pd.Timedelta(hours=start_hour)).floor("D") + pd.Timedelta(hours=start_hour)
    mins = s.groupby(night_start).min()
    mins.index = pd.DatetimeIndex(mins.index) + pd.Timedelta(hours=window_hours)
    return mins


def detect_night_flow(
    inflow: pd.Series, train_until: pd.Timestamp, *, window_hours: int = 3, n_sigma: float = 3.0
) -> list[NightFlowAlarm]:
    """MNF alarms after `train_until` on one DMA's (or the network's) inflow series in m³/h."""
    train = inflow[inflow.index <= train_until].dropna()
    if len(train) < 48:
        return []
    h0 = night_window(train, window_hours)
    hist = nightly_minimum(train, h0, window_hours)
    hist = hist.iloc[1:] if len(hist) > 3 else hist  # the first night may be a start-up transient
    ref, sd = float(hist.mean()), float(hist.std(ddof=1)) if len(hist) > 1 else 0.0
    sd = max(sd, 0.01 * abs(ref), 1e-6)
    out = []
    for t, v in nightly_minimum(inflow[inflow.index > train_until], h0, window_hours).items():
        if v > ref + n_sigma * sd:
            out.append(NightFlowAlarm(pd.Timestamp(t), float(v), ref))
            ref = float(v)
    return out
