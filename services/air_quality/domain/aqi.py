"""China's Ambient Air Quality Index, HJ 633-2012 (环境空气质量指数 (AQI) 技术规定).

IAQI is piecewise linear between the breakpoints of Table 1 and rounded up to a whole
number (向上进位取整数); AQI is the largest IAQI; the primary pollutant is the one with
the largest IAQI when AQI > 50. PM2.5 and PM10 have only 24-h breakpoints, which the
hourly (real-time) AQI also uses, as the national real-time reporting does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IAQI_LEVELS = np.array([0, 50, 100, 150, 200, 300, 400, 500], dtype=float)

# µg/m³ except co in mg/m³. None = no breakpoint at that level in the standard.
BREAKPOINTS_24H: dict[str, list[float]] = {
    "so2": [0, 50, 150, 475, 800, 1600, 2100, 2620],
    "no2": [0, 40, 80, 180, 280, 565, 750, 940],
    "pm10": [0, 50, 150, 250, 350, 420, 500, 600],
    "co": [0, 2, 4, 14, 24, 36, 48, 60],
    "o3_8h": [0, 100, 160, 215, 265, 800],
    "pm25": [0, 35, 75, 115, 150, 250, 350, 500],
}
BREAKPOINTS_1H: dict[str, list[float]] = {
    # SO2 1-h above 800 is not rated by the 1-h table: the 24-h table applies (note 2).
    "so2": [0, 150, 500, 650, 800],
    "no2": [0, 100, 200, 700, 1200, 2340, 3090, 3840],
    "co": [0, 5, 10, 35, 60, 90, 120, 150],
    "o3": [0, 160, 200, 300, 400, 800, 1000, 1200],
    "pm10": BREAKPOINTS_24H["pm10"],
    "pm25": BREAKPOINTS_24H["pm25"],
}

# (upper AQI, level, zh, en, colour)
CATEGORIES = [
    (50, "I", "优", "Excellent", "#00e400"),
    (100, "II", "良", "Good", "#ffff00"),
    (150, "III", "轻度污染", "Lightly polluted", "#ff7e00"),
    (200, "IV", "中度污染", "Moderately polluted", "#ff0000"),
    (300, "V", "重度污染", "Heavily polluted", "#99004c"),
    (10_000, "VI", "严重污染", "Severely polluted", "#7e0023"),
]


@dataclass(frozen=True)
class AqiResult:
    aqi: int
    primary: tuple[str, ...]
    level: str
    category_zh: str
    category_en: str
    colour: str
    iaqi: dict[str, int]


def iaqi(pollutant: str, conc, *, period: str = "1h") -> np.ndarray:
    """IAQI of concentrations (µg/m³; co in mg/m³); NaN where missing. period '1h' or '24h'.

    For '24h', `o3` means the 8-hour moving average table ('o3_8h'); concentrations above
    the top breakpoint are capped at IAQI 500.
    """
    table = BREAKPOINTS_1H if period == "1h" else BREAKPOINTS_24H
    key = "o3_8h" if (period != "1h" and pollutant == "o3") else pollutant
    if key not in table:
        raise KeyError(f"no {period} breakpoints for {pollutant!r}")
    c = np.atleast_1d(np.asarray(conc, dtype=float))
    bp = np.asarray(table[key], dtype=float)
    out = np.interp(c, bp, IAQI_LEVELS[: len(bp)])
    if period == "1h" and pollutant == "so2":
        high = c > bp[-1]
        out[high] = np.interp(c[high], BREAKPOINTS_24H["so2"], IAQI_LEVELS)
    if period != "1h" and pollutant == "o3":
        # above 800 µg/m³ the 8-h table stops; the standard rates O3 by its 1-h value instead
        high = c > bp[-1]
        out[high] = np.interp(c[high], BREAKPOINTS_1H["o3"], IAQI_LEVELS)
    # 向上进位取整数; tiny epsilon keeps exact breakpoints (35 -> 50) from rounding up by float noise
    out = np.ceil(out - 1e-9)
    out[np.isnan(c)] = np.nan
    return out


def category(aqi_value: float) -> tuple[str, str, str, str]:
    """(level, zh, en, colour) of an AQI value."""
    for upper, level, zh, en, colour in CATEGORIES:
        if aqi_value <= upper:
            return level, zh, en, colour
    raise ValueError(aqi_value)


def aqi(concentrations: dict[str, float], *, period: str = "1h", co_unit: str = "mg/m3") -> AqiResult:
    """AQI, primary pollutant(s) and category of one place and period.

    `concentrations`: pollutant -> value (µg/m³; co in `co_unit`, 'mg/m3' or 'ug/m3').
    Missing (None/NaN) pollutants are skipped.
    """
    sub: dict[str, int] = {}
    for p, v in concentrations.items():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        if p == "co" and co_unit in ("ug/m3", "µg/m³", "ug/m³"):
            v = v / 1000.0
        val = iaqi(p, v, period=period)[0]
        if not np.isnan(val):
            sub[p] = int(val)
    if not sub:
        raise ValueError("no pollutant concentration given")
    top = max(sub.values())
    primary = tuple(sorted(p for p, v in sub.items() if v == top)) if top > 50 else ()
    level, zh, en, colour = category(top)
    return AqiResult(top, primary, level, zh, en, colour, sub)


class AqiAlert:
    """Exceedance alert with hysteresis: raise at `on` AQI, clear only below `off` AQI.

    A value hovering at the limit therefore does not flap between raised and cleared.
    """

    def __init__(self, on: float = 150.0, off: float = 130.0):
        if off >= on:
            raise ValueError("off must be below on")
        self.on, self.off = on, off
        self.active: dict[str, bool] = {}

    def update(self, key: str, aqi_value: float) -> str | None:
        """Feed one AQI value; returns 'raised', 'cleared' or None."""
        was = self.active.get(key, False)
        if not was and aqi_value >= self.on:
            self.active[key] = True
            return "raised"
        if was and aqi_value < self.off:
            self.active[key] = False
            return "cleared"
        return None
