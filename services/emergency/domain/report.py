"""Incident report (事件上报): the timeline, the evidence and a map — one template, as an HTML page and as
a PDF document (A4, the CJK font embedded) drawn from the same HTML by WeasyPrint."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import jinja2

from services.emergency.domain.incidents import STATE_ZH, Incident
from services.emergency.domain.zones import Zone
from shared.city import City

_TEMPLATE = jinja2.Template("""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>{{ inc.incident_id }} — 事件报告 Incident report</title>
<style>
body{font-family:"Noto Sans CJK SC","Microsoft YaHei",Arial,sans-serif;margin:2em;max-width:60em;color:#222}
table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.3em .5em;text-align:left}
th{background:#eee}.sev{font-weight:bold;color:{{ '#b00' if inc.severity >= 3 else '#c60' }}}
</style></head><body>
<h1>事件报告 Incident report</h1>
<h2>{{ inc.title_zh }}<br><small>{{ inc.title_en }}</small></h2>
<table>
<tr><th>编号 Incident</th><td>{{ inc.incident_id }}</td></tr>
<tr><th>类型 Kind</th><td>{{ inc.kind }}</td></tr>
<tr><th>等级 Severity</th><td class="sev">{{ inc.severity.label_zh }} / {{ inc.severity.name }}</td></tr>
<tr><th>发现时间 Detected</th><td>{{ inc.opened_at.isoformat() }}</td></tr>
<tr><th>当前状态 State</th><td>{{ state_zh[inc.state.value] }} / {{ inc.state.value }}</td></tr>
<tr><th>涉及区域 Districts</th><td>{% for d in districts %}{{ d }}{% if not loop.last %}；{% endif %}{% else %}—{% endfor %}</td></tr>
<tr><th>位置 Location</th><td>{{ '%.5f' % inc.lat }}, {{ '%.5f' % inc.lon }}</td></tr>
</table>
<h3>处置时间线 Timeline</h3>
<table><tr><th>时间 Time</th><th>状态 State</th><th>处理人 By</th><th>说明 Note</th></tr>
{% for t in inc.timeline %}<tr><td>{{ t.time.isoformat() }}</td><td>{{ state_zh[t.state.value] }} / {{ t.state.value }}</td>
<td>{{ t.actor }}</td><td>{{ t.note }}</td></tr>
{% endfor %}</table>
<h3>证据 Evidence</h3>
<table><tr><th>时间 Time</th><th>来源 Source</th><th>内容 What</th><th>数值 Value</th></tr>
{% for e in inc.evidence %}<tr><td>{{ e.time }}</td><td>{{ e.source }}</td><td>{{ e.what }}</td><td>{{ e.value }}</td></tr>
{% endfor %}</table>
<h3>地图 Map</h3>
<img alt="incident map" style="max-width:100%" src="data:image/png;base64,{{ map_png }}">
<p><small>Generated {{ generated_at }} by CityOps. Worker ids in this report are pseudonymous.</small></p>
</body></html>
""", autoescape=True)


# paper, not screen: A4 margins, no on-screen width limit, table rows kept whole across pages
_PDF_CSS = """
@page { size: A4; margin: 14mm 12mm 16mm;
        @bottom-right { content: "第 " counter(page) " / " counter(pages) " 页  page " counter(page) " of " counter(pages);
                        font-family: "Noto Sans CJK SC", sans-serif; font-size: 8pt; color: #666 } }
body { margin: 0; max-width: none; font-size: 9.5pt }
h1 { font-size: 16pt } h2 { font-size: 13pt } h3 { font-size: 11pt; break-after: avoid }
tr { break-inside: avoid } img { max-width: 100%; break-inside: avoid }
"""


def map_png(incident: Incident, city: City, zones: list[Zone] | None = None,
            points: list[dict[str, Any]] | None = None) -> bytes:
    """A PNG map: districts, hazard/restricted zones, the incident area and place, extra points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=90)
    for d in city.districts:
        x0, y0, x1, y1 = d.bbox
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=d.district_id in incident.districts,
                                   alpha=0.15 if d.district_id in incident.districts else 1.0,
                                   edgecolor="#888", facecolor="#f90", lw=0.8))
        ax.text((x0 + x1) / 2, y1 - (y1 - y0) * 0.08, f"{d.district_id} {d.name_en}", ha="center", fontsize=7, color="#555", clip_on=True)
    for z in zones or []:
        xs, ys = z.polygon.exterior.xy
        ax.fill(xs, ys, alpha=0.3, color="#c00" if z.kind == "hazard" else "#36c", lw=0)
        ax.text(*z.polygon.centroid.coords[0], z.zone_id, fontsize=6, clip_on=True)
    if incident.area is not None:
        xs, ys = incident.area.exterior.xy
        ax.fill(xs, ys, alpha=0.45, color="#d40", label="evacuation area")
    for p in points or []:
        ax.plot(p["lon"], p["lat"], marker=p.get("marker", "o"), color=p.get("color", "#333"), ms=5)
    ax.plot(incident.lon, incident.lat, marker="*", color="#b00", ms=14, label="incident")
    x0, y0, x1, y1 = city.bbox
    if incident.area is not None:
        ax0, ay0, ax1, ay1 = incident.area.bounds
        pad = max(ax1 - ax0, ay1 - ay0) * 0.6
        x0, y0, x1, y1 = ax0 - pad, ay0 - pad, ax1 + pad, ay1 + pad
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect(1 / max(0.2, math.cos(math.radians((y0 + y1) / 2))))
    ax.set_xlabel("lon")
    ax.set_ylabel("lat")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(incident.title_en, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def render_report(incident: Incident, city: City, generated_at: str, zones: list[Zone] | None = None,
                  points: list[dict[str, Any]] | None = None) -> str:
    """The incident report as one self-contained HTML page (map embedded as PNG)."""
    districts = []
    for did in incident.districts:
        d = city.district(did)
        districts.append(f"{d.name_zh} {d.name_en} ({did})")
    png = base64.b64encode(map_png(incident, city, zones, points)).decode("ascii")
    return _TEMPLATE.render(inc=incident, districts=districts, state_zh=STATE_ZH, map_png=png,
                            generated_at=generated_at)


def pdf_unavailable() -> str | None:
    """Why PDF reports cannot be drawn here (WeasyPrint or its Pango library missing), or None if they can."""
    try:
        import weasyprint  # noqa: F401 - loads Pango through cffi; that is what may fail
    except (ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def render_pdf(html: str) -> bytes:
    """The report page as a PDF document (fonts subset and embedded, so it reads the same anywhere)."""
    from weasyprint import CSS, HTML

    return HTML(string=html).write_pdf(stylesheets=[CSS(string=_PDF_CSS)])
