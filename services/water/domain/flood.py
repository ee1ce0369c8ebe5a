"""Drainage and flood warning (防汛预警) per catchment: water level, rain and nowcast to a graded alert.

Each catchment's drain or river level follows a linear-reservoir balance,

    dL/dt = gain × rain_rate − recession × (L − base_level),

whose `gain` and `recession` are fitted by least squares on the catchment's own history of
level and rain (hourly). The level is projected `horizon_h` ahead with the weather service's
rain nowcast when there is one, else with the last hour's rain decaying by half each hour.
The grade is the highest warning level (blue < yellow < orange < red) the projection reaches;
the lead time is when it first reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

GRADES = ("blue", "yellow", "orange", "red")
GRADE_ZH = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色", "none": "无"}


@dataclass(frozen=True)
class Catchment:
    catchment_id: str
    name_zh: str
    name_en: str
    district: str | None
    base_level_m: float
    # warning levels in m, ascending: blue, yellow, orange, red
    thresholds_m: tuple[float, float, float, float]


@dataclass
class CatchmentModel:
    catchment: Catchment
    gain_m_per_mm: float  # level rise per mm of rain (per hour of rain at 1 mm/h)
    recession_per_h: float


@dataclass(frozen=True)
class FloodRisk:
    catchment_id: str
    at: pd.Timestamp
    level_m: float
    projected_peak_m: float
    grade: str  # none | blue | yellow | orange | red
    lead_time_h: float | None  # hours until the projection reaches `grade`; 0 if already there
    rain_last_h_mm: float


def fit_catchment(c: Catchment, level: pd.Series, rain_mm: pd.Series) -> CatchmentModel:
    """Fit gain and recession on hourly history (level in m, rain in mm per reading)."""
    lv = level.resample("1h").mean().interpolate(limit=3)
    rn = rain_mm.resample("1h").sum().reindex(lv.index).fillna(0.0)
    dl = lv.diff().shift(-1)
    x = np.column_stack([rn.to_numpy(), -(lv.to_numpy() - c.base_level_m)])
    ok = np.isfinite(dl.to_numpy()) & np.isfinite(x).all(axis=1)
    gain, rec = 0.02, 0.2  # a small urban drain, used until there is history with rain in it
    if ok.sum() >= 12 and rn[ok].sum() > 1.0:
        coef, *_ = np.linalg.lstsq(x[ok], dl.to_numpy()[ok], rcond=None)
        gain, rec = float(max(coef[0], 1e-4)), float(np.clip(coef[1], 0.01, 2.0))
    return CatchmentModel(c, gain, rec)


def assess_flood(
    model: CatchmentModel,
    level: pd.Series,
    rain_mm: pd.Series,
    *,
    nowcast_mm_per_h: list[float] | None = None,
    horizon_h: int = 6,
) -> FloodRisk:
    """The catchment's risk now: project the level `horizon_h` hours ahead and grade it."""
    c = model.catchment
    now = pd.Timestamp(level.index[-1])
    level_now = float(level.iloc[-1])
    rain_last = float(rain_mm[rain_mm.index > now - pd.Timedelta(hours=1)].sum())
    if nowcast_mm_per_h:
        future = list(nowcast_mm_per_h)[:horizon_h] + [0.0] * max(0, horizon_h - len(nowcast_mm_per_h))
    else:
        future = [rain_last * 0.5 ** (i + 1) for i in range(horizon_h)]
    path = [level_now]
    lv = level_now
    for r in future:
        lv = lv + model.gain_m_per_mm * r - model.recession_per_h * (lv - c.base_level_m)
        path.append(lv)
    grade, lead = "none", None
    for g, thr in zip(GRADES, c.thresholds_m, strict=True):
        hit = [i for i, v in enumerate(path) if v >= thr]
        if hit:
            grade, lead = g, float(hit[0])
    return FloodRisk(c.catchment_id, now, level_now, float(max(path)), grade, lead, rain_last)


def flood_alert_text(risk: FloodRisk, c: Catchment) -> dict[str, str]:
    """Dispatcher message in Chinese and English."""
    zh_grade, en_grade = GRADE_ZH[risk.grade], risk.grade.upper()
    when_zh = "已达到" if risk.lead_time_h == 0 else f"预计{risk.lead_time_h:.0f}小时内达到"
    when_en = "reached now" if risk.lead_time_h == 0 else f"expected within {risk.lead_time_h:.0f} h"
    return {
        "zh": (f"【防汛{zh_grade}预警】{c.name_zh}：当前水位{risk.level_m:.2f}米，预测峰值{risk.projected_peak_m:.2f}米，"
               f"{when_zh}{zh_grade}警戒水位；近1小时降雨{risk.rain_last_h_mm:.1f}毫米。请巡查排水设施并做好应急准备。"),
        "en": (f"[Flood warning {en_grade}] {c.name_en}: level {risk.level_m:.2f} m, projected peak "
               f"{risk.projected_peak_m:.2f} m, {en_grade} level {when_en}; rain last hour {risk.rain_last_h_mm:.1f} mm. "
               f"Inspect drains and stand by."),
    }
