"""Hourly district bulletins (预报服务产品自动生成): text in Chinese and English, a PNG chart, HTML."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.weather.domain.signals import LEVEL_ZH, SIGNAL_EN, SIGNAL_ZH

_HTML = """<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>{{ title_zh }} / {{ title_en }}</title></head>
<body><h1>{{ title_zh }}</h1><h2>{{ title_en }}</h2>
{% if signals %}<ul class="signals">{% for s in signals %}<li class="{{ s.level }}">{{ s.zh }} / {{ s.en }}</li>{% endfor %}</ul>{% endif %}
<p lang="zh">{{ text_zh }}</p><p lang="en">{{ text_en }}</p>
<table><tr><th>时效 Lead (h)</th><th>气温 Temp (°C)</th><th>p10</th><th>p90</th><th>模式 Model</th></tr>
{% for r in rows %}<tr><td>+{{ r.horizon_h }}</td><td>{{ "%.1f"|format(r.value) }}</td><td>{{ fmt(r.p10) }}</td><td>{{ fmt(r.p90) }}</td><td>{{ r.model }}</td></tr>{% endfor %}
</table><img alt="chart" src="data:image/png;base64,{{ png_b64 }}"></body></html>"""


@dataclass
class Bulletin:
    district_id: str
    issue_time: pd.Timestamp
    text_zh: str
    text_en: str
    png: bytes
    html: str


def build_bulletin(district_id: str, name_zh: str, name_en: str, issue_time: pd.Timestamp,
                   observed: pd.DataFrame, temp_nowcast: pd.DataFrame, rain_next_h_mm: float,
                   wind_max_ms: float, active_signals: list[tuple[str, str]]) -> Bulletin:
    """One district's bulletin.

    observed: hourly district means with columns time, temp (the last 24 h);
    temp_nowcast: district means per horizon with columns horizon_h, value, p10, p90, model;
    active_signals: [(signal, level)].
    """
    import jinja2

    local = issue_time.tz_convert("Asia/Shanghai")
    now_t = float(observed["temp"].iloc[-1])
    fc = temp_nowcast.sort_values("horizon_h")
    last = fc.iloc[-1]
    hmax = int(last["horizon_h"])
    has_iv = bool(np.isfinite(last["p10"]) and np.isfinite(last["p90"]))
    iv_zh = f"（{last['p10']:.1f}～{last['p90']:.1f}℃）" if has_iv else ""
    iv_en = f" ({last['p10']:.1f} to {last['p90']:.1f} °C)" if has_iv else ""
    sig_zh = "；".join(f"{SIGNAL_ZH[s]}{LEVEL_ZH[lv]}预警信号生效中" for s, lv in active_signals) or "目前无预警信号"
    sig_en = "; ".join(f"{SIGNAL_EN[s]} {lv.upper()} warning in force" for s, lv in active_signals) or "No warning in force"
    text_zh = (f"{name_zh}{local:%m月%d日%H时}天气：当前气温{now_t:.1f}℃，预计{hmax}小时后{last['value']:.1f}℃"
               f"{iv_zh}，未来{hmax}小时降水约{rain_next_h_mm:.1f}毫米，"
               f"最大风速{wind_max_ms:.1f}米/秒。{sig_zh}。")
    text_en = (f"{name_en}, {local:%d %b %H:00} local time: {now_t:.1f} °C now, {last['value']:.1f} °C expected in "
               f"{hmax} h{iv_en}; about {rain_next_h_mm:.1f} mm of rain and winds "
               f"up to {wind_max_ms:.1f} m/s over the next {hmax} h. {sig_en}.")
    png = _chart(observed, fc, issue_time, f"{name_en} {local:%Y-%m-%d %H:00}")
    html = jinja2.Environment(autoescape=True).from_string(_HTML).render(
        title_zh=f"{name_zh}逐时天气公报", title_en=f"{name_en} hourly weather bulletin",
        signals=[{"level": lv, "zh": f"{SIGNAL_ZH[s]}{LEVEL_ZH[lv]}预警", "en": f"{SIGNAL_EN[s]} {lv}"}
                 for s, lv in active_signals],
        text_zh=text_zh, text_en=text_en, rows=fc.to_dict("records"), fmt=_fmt, png_b64=base64.b64encode(png).decode())
    return Bulletin(district_id, issue_time, text_zh, text_en, png, html)


def _fmt(x: float) -> str:
    return f"{x:.1f}" if np.isfinite(x) else "–"


def _chart(observed: pd.DataFrame, fc: pd.DataFrame, issue_time: pd.Timestamp, title: str) -> bytes:
    """Observed and nowcast temperature against hours from the issue time (cheap to draw: one every
    hour per district, so no date ticks and no second layout pass)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), dpi=72)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.1, right=0.97, top=0.88, bottom=0.16)
    x_obs = (pd.to_datetime(observed["time"]) - issue_time).dt.total_seconds().to_numpy() / 3600
    ax.plot(x_obs, observed["temp"].to_numpy(float), color="k", label="observed")
    x_fc = fc["horizon_h"].to_numpy(float)
    ax.plot(x_fc, fc["value"].to_numpy(float), "o-", color="tab:red", label="nowcast")
    ax.fill_between(x_fc, fc["p10"].to_numpy(float), fc["p90"].to_numpy(float), color="tab:red", alpha=0.2,
                    label="p10-p90")
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("hours from issue")
    ax.set_ylabel("°C")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
