"""China Meteorological Administration style warning signals with hysteresis.

Signals: rainstorm 暴雨, high temperature 高温, cold wave 寒潮, gale 大风; levels blue/yellow/orange/red.
Each is driven by one metric per area (district or station) computed from observations and
nowcasts (`signal_metrics`). A level is raised as soon as its threshold is reached (upgrades
at once) and lowered or lifted only after the metric has stayed below `lift_fraction` of the
current level's threshold for `lift_hold_h` consecutive hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

LEVELS = ("blue", "yellow", "orange", "red")
LEVEL_ZH = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色"}
SIGNAL_ZH = {"rainstorm": "暴雨", "high_temperature": "高温", "cold_wave": "寒潮", "gale": "大风"}
SIGNAL_EN = {"rainstorm": "Rainstorm", "high_temperature": "High temperature", "cold_wave": "Cold wave", "gale": "Gale"}

# Thresholds per level (None: the level does not exist for that signal). Simplified from the CMA
# definitions: rainstorm on the largest of the 12/6/3 h accumulations (observed + nowcast) scaled to
# the 50 mm criterion of each level; gale on mean wind (m/s); cold wave on the 24 h temperature drop
# (°C) with a minimum temperature condition; high temperature on the day's maximum (°C).
DEFAULT_SIGNAL_CONFIG: dict[str, Any] = {
    "rainstorm": {"thresholds": {"blue": 1.0, "yellow": 1.0001, "orange": 1.0002, "red": 2.0}},
    "high_temperature": {"thresholds": {"blue": None, "yellow": 35.0, "orange": 37.0, "red": 40.0}},
    "cold_wave": {"thresholds": {"blue": 8.0, "yellow": 10.0, "orange": 12.0, "red": 16.0},
                  "min_temp_c": {"blue": 4.0, "yellow": 4.0, "orange": 0.0, "red": 0.0}},
    "gale": {"thresholds": {"blue": 10.8, "yellow": 17.2, "orange": 24.5, "red": 32.7}},
    "lift_fraction": 0.8,
    "lift_hold_h": 2,
}


def rainstorm_level(acc_3h: float, acc_6h: float, acc_12h: float) -> str | None:
    """CMA rainstorm criteria: blue 50 mm/12 h, yellow 50 mm/6 h, orange 50 mm/3 h, red 100 mm/3 h."""
    if acc_3h >= 100:
        return "red"
    if acc_3h >= 50:
        return "orange"
    if acc_6h >= 50:
        return "yellow"
    if acc_12h >= 50:
        return "blue"
    return None


def rainstorm_index(acc_3h: float, acc_6h: float, acc_12h: float) -> float:
    """One number whose thresholds (config) reproduce `rainstorm_level`: red ≥ 2, orange ≥ 1.0002 …"""
    if acc_3h >= 100:
        return max(2.0, acc_3h / 50.0)
    if acc_3h >= 50:
        return 1.0002 + (acc_3h - 50) / 50 * 0.9
    if acc_6h >= 50:
        return 1.0001
    return acc_12h / 50.0 if acc_12h < 50 else 1.0


@dataclass
class SignalChange:
    """A raise, upgrade, downgrade or lift of one signal in one area (an alert to publish)."""

    time: pd.Timestamp
    area: str
    signal: str
    action: str  # raise | upgrade | downgrade | lift
    level: str | None
    previous: str | None
    metric: float

    def text(self) -> tuple[str, str]:
        """Alert text in Chinese and English."""
        zh_sig, en_sig = SIGNAL_ZH[self.signal], SIGNAL_EN[self.signal]
        if self.action == "lift":
            return (f"{self.area}：{zh_sig}{LEVEL_ZH.get(self.previous or '', '')}预警信号解除。",
                    f"{self.area}: {en_sig} {self.previous} warning lifted.")
        verb_zh = {"raise": "发布", "upgrade": "升级为", "downgrade": "降级为"}[self.action]
        return (f"{self.area}：{verb_zh}{zh_sig}{LEVEL_ZH[self.level]}预警信号。",
                f"{self.area}: {en_sig} warning {self.action}d to {self.level.upper()}." if self.action != "raise"
                else f"{self.area}: {en_sig} {self.level.upper()} warning issued.")


@dataclass
class SignalBoard:
    """Current level of every signal in every area, with the hysteresis counters."""

    config: dict[str, Any] = field(default_factory=lambda: DEFAULT_SIGNAL_CONFIG)
    level: dict[tuple[str, str], str] = field(default_factory=dict)
    below_h: dict[tuple[str, str], int] = field(default_factory=dict)

    def _level_for(self, signal: str, metric: float, extra: dict[str, float]) -> int:
        th = self.config[signal]["thresholds"]
        best = -1
        for i, lv in enumerate(LEVELS):
            t = th.get(lv)
            if t is None or not np.isfinite(metric) or metric < t:
                continue
            if signal == "cold_wave" and extra.get("min_temp_c", -1e9) > self.config[signal]["min_temp_c"][lv]:
                continue
            best = i
        return best

    def update(self, time: pd.Timestamp, metrics: dict[str, dict[str, float]],
               extras: dict[str, dict[str, dict[str, float]]] | None = None) -> list[SignalChange]:
        """Feed one hour of metrics {signal: {area: value}}; returns the changes to announce."""
        changes = []
        lift_frac = self.config.get("lift_fraction", 0.8)
        hold = int(self.config.get("lift_hold_h", 2))
        for signal, per_area in metrics.items():
            for area, m in per_area.items():
                key = (signal, area)
                extra = (extras or {}).get(signal, {}).get(area, {})
                new = self._level_for(signal, m, extra)
                cur_name = self.level.get(key)
                cur = LEVELS.index(cur_name) if cur_name else -1
                if new > cur:
                    self.level[key] = LEVELS[new]
                    self.below_h[key] = 0
                    changes.append(SignalChange(time, area, signal, "raise" if cur < 0 else "upgrade",
                                                LEVELS[new], cur_name, float(m)))
                    continue
                if cur < 0:
                    continue
                # stay while the metric is within the hysteresis band of the current level
                th = self.config[signal]["thresholds"][cur_name]
                if np.isfinite(m) and m >= th * lift_frac:
                    self.below_h[key] = 0
                    continue
                self.below_h[key] = self.below_h.get(key, 0) + 1
                if self.below_h[key] < hold:
                    continue
                self.below_h[key] = 0
                if new < 0:
                    del self.level[key]
                    changes.append(SignalChange(time, area, signal, "lift", None, cur_name, float(m)))
                else:
                    self.level[key] = LEVELS[new]
                    changes.append(SignalChange(time, area, signal, "downgrade", LEVELS[new], cur_name, float(m)))
        return changes

    def active(self) -> dict[tuple[str, str], str]:
        return dict(self.level)


def signal_metrics(rain_hourly: np.ndarray, rain_nowcast: np.ndarray | None, temp_hourly: np.ndarray,
                   temp_nowcast_max: np.ndarray | None, temp_nowcast_min: np.ndarray | None,
                   wind_hourly: np.ndarray, wind_nowcast_max: np.ndarray | None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-station metrics at the latest hour from recent hourly observations and nowcasts.

    rain_hourly/temp_hourly/wind_hourly: (hours, stations) ending at the issue hour (≥ 24 h for the
    cold wave); rain_nowcast: (horizons 1..H, stations) rain expected in each coming hour.
    Returns ({signal: metric per station}, {"min_temp_c": …}).
    """
    r = np.nan_to_num(rain_hourly, nan=0.0)
    fut = np.zeros((0, r.shape[1])) if rain_nowcast is None else np.nan_to_num(rain_nowcast, nan=0.0)
    seq = np.vstack([r, fut])
    now = r.shape[0]  # index just after the issue hour

    def best_window(w: int) -> np.ndarray:
        # the largest w-hour total among windows that end at or after now (observed + expected)
        out = np.zeros(r.shape[1])
        for end in range(now, seq.shape[0] + 1):
            out = np.maximum(out, seq[max(0, end - w):end].sum(axis=0))
        return out

    # gauges resolve 0.1 mm; rounding keeps sums of fractions from missing a threshold by 1e-12
    a3, a6, a12 = (np.round(best_window(w), 2) for w in (3, 6, 12))
    rain_idx = np.array([rainstorm_index(x, y, z) for x, y, z in zip(a3, a6, a12, strict=True)])
    t_now = temp_hourly[-1]
    t_max = np.nanmax(np.vstack([temp_hourly[-24:], temp_nowcast_max[None]]) if temp_nowcast_max is not None
                      else temp_hourly[-24:], axis=0)
    t_min = t_now if temp_nowcast_min is None else np.fmin(t_now, temp_nowcast_min)
    drop = temp_hourly[-24] - t_min if temp_hourly.shape[0] >= 24 else np.full_like(t_now, np.nan)
    wind = wind_hourly[-1] if wind_nowcast_max is None else np.fmax(wind_hourly[-1], wind_nowcast_max)
    return ({"rainstorm": rain_idx, "high_temperature": t_max, "cold_wave": drop, "gale": wind},
            {"min_temp_c": t_min})
