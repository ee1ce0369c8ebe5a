"""The demo's HTML report: what the services wrote, drawn, next to what was injected.

`write()` is called by `cityops demo` at the end of a run (shared/demo/runner.py). Each figure reads
what exists — product tables the services wrote, the observations, the run summary — and a figure
whose data is missing becomes a bilingual "no data for X" note that names the table to look at, so a
partly working city still gets a report. PNGs sit next to the HTML in `report_files/`.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

logger = logging.getLogger("cityops.report")
CJK_FONT = "Noto Sans CJK SC"


class NoData(Exception):
    """A figure has nothing to draw; the message says what is missing (shown in the report)."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    if not any(f.name == CJK_FONT for f in font_manager.fontManager.ttflist):
        # matplotlib's font cache may predate fonts-noto-cjk: register the file fontconfig knows
        import subprocess

        found = subprocess.run(["fc-match", "-f", "%{file}", CJK_FONT], capture_output=True, text=True).stdout
        if found.endswith((".ttc", ".otf", ".ttf")):
            font_manager.fontManager.addfont(found)
    plt.rcParams["font.sans-serif"] = [CJK_FONT, "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def _truth(sim, scenario: str) -> dict | None:
    return next((t for t in (sim.truth if sim is not None else []) if t.get("scenario") == scenario), None)


def _ts(s: Any) -> datetime | None:
    if s is None:
        return None
    return s if isinstance(s, datetime) else datetime.fromisoformat(str(s))


def pollution_peak(conn, sim, path: Path) -> tuple[Path, str]:
    """Grid heat map at the peak of the episode, traced source (top attribution) and injected source."""
    plt = _plt()
    ep = _truth(sim, "pollution_episode")
    pollutant = (ep or {}).get("pollutant", "pm25")
    peak = conn.execute(
        "SELECT valid_at FROM air_grid WHERE pollutant = %s GROUP BY 1 ORDER BY max(value) DESC LIMIT 1",
        (pollutant,),
    ).fetchone()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    note = ""
    if peak:
        cells = conn.execute(
            "SELECT lon, lat, value FROM air_grid WHERE pollutant = %s AND valid_at = %s",
            (pollutant, peak[0]),
        ).fetchall()
        sc = ax.scatter(
            [c[0] for c in cells],
            [c[1] for c in cells],
            c=[c[2] for c in cells],
            cmap="inferno_r",
            marker="s",
            s=60,
        )
        when, what = peak[0], "grid estimate 网格估算"
    else:
        # no grid product: the stations' own hourly means at the peak hour still show the plume
        row = conn.execute(
            "SELECT bucket FROM observations_hourly WHERE domain = 'air' AND quantity = %s "
            "GROUP BY 1 ORDER BY max(avg_value) DESC LIMIT 1",
            (pollutant,),
        ).fetchone()
        if not row:
            raise NoData(f"no {pollutant} grid estimates (air_grid) and no air observations")
        pts = conn.execute(
            "SELECT s.lon, s.lat, h.avg_value FROM observations_hourly h JOIN sensors s USING (sensor_id) "
            "WHERE h.domain = 'air' AND h.quantity = %s AND h.bucket = %s",
            (pollutant, row[0]),
        ).fetchall()
        sc = ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            c=[p[2] for p in pts],
            cmap="inferno_r",
            s=40,
            edgecolors="k",
            linewidths=0.3,
        )
        when, what = row[0], "station hourly means 站点小时均值"
        note = "no data for the grid estimate (air_grid is empty): stations shown instead / 无网格估算数据，显示站点值"
    fig.colorbar(sc, ax=ax, label=f"{pollutant} µg/m³")
    traced = conn.execute(
        "SELECT source_id, contribution FROM source_attributions WHERE pollutant = %s "
        "ORDER BY abs(extract(epoch FROM at - %s)), rank LIMIT 1",
        (pollutant, when),
    ).fetchone()
    if ep:
        ax.scatter(
            [ep["lon"]],
            [ep["lat"]],
            marker="*",
            s=380,
            c="cyan",
            edgecolors="k",
            label=f"injected source 注入源 {ep['source_id']}",
        )
    if traced:
        src = next(
            (
                s
                for sc_ in (sim.scenarios if sim else [])
                for s in sc_.config.get("sources", [])
                if isinstance(s, dict) and s.get("source_id") == traced[0]
            ),
            None,
        )
        if src and "lat" in src:
            ax.scatter(
                [src["lon"]],
                [src["lat"]],
                marker="X",
                s=200,
                c="lime",
                edgecolors="k",
                label=f"traced source 溯源结果 {traced[0]}",
            )
        else:
            ax.plot([], [], " ", label=f"traced source 溯源结果 {traced[0]} ({traced[1]:.1f} µg/m³)")
    else:
        note += (
            "; " if note else ""
        ) + "no data for source tracing (source_attributions is empty) / 无溯源结果"
    ax.set_title(f"污染峰值 Pollution peak — {what}\n{when:%Y-%m-%d %H:%M} UTC")
    ax.set_xlabel("lon")
    ax.set_ylabel("lat")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path), note


def nowcast_vs_observed(conn, sim, path: Path) -> tuple[Path, str]:
    plt = _plt()
    fc = conn.execute(
        # a weather nowcast's valid_at ends the forecast hour; observations_hourly labels an hour by its start
        "SELECT station_id, valid_at - interval '1 hour', value, p10, p90 FROM forecasts "
        "WHERE domain = 'weather' AND variable = 'temp' "
        "AND horizon_h = 1 ORDER BY station_id, valid_at"
    ).fetchall()
    station = fc[0][0] if fc else None
    obs_sql = (
        "SELECT bucket, avg_value FROM observations_hourly WHERE quantity = 'temp' AND sensor_id = %s "
        "ORDER BY bucket"
    )
    if station is None:
        any_station = conn.execute(
            "SELECT sensor_id FROM observations_hourly WHERE quantity = 'temp' AND domain IN ('weather', 'air') "
            "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        if not any_station:
            raise NoData("no nowcasts (forecasts) and no temperature observations")
        station = any_station[0]
    obs = conn.execute(obs_sql, (station,)).fetchall()
    fig, ax = plt.subplots(figsize=(9, 4))
    if obs:
        ax.plot([o[0] for o in obs], [o[1] for o in obs], "k-", label="observed 实况")
    mine = [f for f in fc if f[0] == station]
    note = ""
    if mine:
        t = [f[1] for f in mine]
        ax.plot(t, [f[2] for f in mine], "C0-", label="nowcast +1 h 临近预报")
        band = [f for f in mine if f[3] is not None and f[4] is not None]  # intervals need verified hours first
        if band:
            ax.fill_between(
                [f[1] for f in band], [f[3] for f in band], [f[4] for f in band], color="C0", alpha=0.2,
                label="p10–p90"
            )
    else:
        note = "no data for nowcasts (forecasts is empty): observed only / 无临近预报数据，仅显示实况"
    ax.set_title(f"临近预报与实况 Nowcast vs observed — temperature, {station}")
    ax.set_ylabel("°C")
    ax.legend(fontsize=8)
    return _save(fig, path), note


def leak_map(conn, sim, path: Path) -> tuple[Path, str]:
    from services.water.domain.network import load_network
    from services.water.domain.simulate import network_path

    plt = _plt()
    from matplotlib.collections import LineCollection

    net = load_network(network_path())
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    segs = [
        [net.node_xy[a], net.node_xy[b]]
        for a, b in net.link_nodes.values()
        if a in net.node_xy and b in net.node_xy
    ]
    ax.add_collection(LineCollection(segs, colors="#bbbbbb", linewidths=0.8))
    ax.autoscale()
    nodes = [
        r[0]
        for r in conn.execute(
            "SELECT meta->>'node' FROM sensors WHERE domain = 'water' AND kind = 'pressure'"
        ).fetchall()
        if r[0]
    ]
    pts = [net.node_xy[n] for n in nodes if n in net.node_xy]
    if pts:
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            s=16,
            c="#1f77b4",
            zorder=3,
            label="pressure sensor 压力计",
        )
    leak = conn.execute(
        "SELECT leak_id, pipe_id, candidates FROM leaks ORDER BY detected_at LIMIT 1"
    ).fetchone()
    note = ""
    if leak:
        cands = [c for c in leak[2] if isinstance(c, dict) and c.get("pipe_id") in net.link_nodes][:10]
        for rank, c in reversed(list(enumerate(cands, start=1))):
            a, b = net.link_nodes[c["pipe_id"]]
            ax.plot(
                *zip(net.node_xy[a], net.node_xy[b], strict=True),
                color=(1.0, 0.55 * (rank - 1) / len(cands), 0),
                linewidth=4 if rank == 1 else 2.5,
                label="candidate pipes 候选管段" if rank == 1 else None,
            )
            ax.annotate(str(rank), net.link_midpoint_xy(c["pipe_id"]), fontsize=8)
        title = f"漏损定位 Leak {leak[0]} — top candidate {leak[1]}"
    else:
        note = "no data for detected leaks (leaks is empty): network and injected leaks only / 无漏损检测结果"
        title = "供水管网 Water network"
    for scen, marker in (("pipe_burst", "burst 爆管"), ("incipient_leak", "incipient leak 渐进漏损")):
        t = _truth(sim, scen)
        if t and t.get("pipe_id") in net.link_nodes:
            ax.scatter(
                *net.link_midpoint_xy(t["pipe_id"]),
                marker="*",
                s=260,
                edgecolors="k",
                label=f"injected {marker} ({t['pipe_id']})",
                zorder=4,
            )
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path), note


def alert_timeline(conn, sim, path: Path) -> tuple[Path, str]:
    plt = _plt()
    since = (sim.start.to_pydatetime() - timedelta(days=1)) if sim is not None else datetime(2000, 1, 1)
    alerts = conn.execute(
        "SELECT alert_id, domain, severity, raised_at FROM alerts WHERE raised_at >= %s ORDER BY raised_at",
        (since,),
    ).fetchall()
    if not alerts:
        raise NoData("no alerts were raised (alerts is empty)")
    dl = conn.execute(
        "SELECT d.channel, d.status, coalesce(d.sent_at, d.created_at) FROM deliveries d "
        "WHERE d.subject_id = ANY(%s)",
        ([a[0] for a in alerts],),
    ).fetchall()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    domains = sorted({a[1] for a in alerts})
    colours = {"info": "#999999", "minor": "#f2c14e", "major": "#f78154", "critical": "#c1121f"}
    for a in alerts:
        ax.scatter(a[3], domains.index(a[1]), c=colours.get(a[2], "k"), s=40, zorder=3)
    channels = sorted({d[0] for d in dl})
    for d in dl:
        ax.scatter(
            d[2],
            len(domains) + channels.index(d[0]),
            marker="|" if d[1] == "sent" else "x",
            s=80,
            c="C0" if d[1] == "sent" else "C3",
        )
    ax.set_yticks(
        range(len(domains) + len(channels)),
        [f"alert: {x}" for x in domains] + [f"delivery: {c}" for c in channels],
    )
    ax.set_title(f"告警与送达时间线 Alerts and deliveries — {len(alerts)} alerts, {len(dl)} deliveries")
    note = "" if dl else "no data for deliveries (deliveries is empty) / 无送达记录"
    return _save(fig, path), note


def stage_latency(summary: dict, path: Path) -> tuple[Path, str]:
    plt = _plt()
    lat = {k: v for k, v in (summary.get("latency") or {}).items() if v}
    if not lat:
        raise NoData("no latency figures in the run summary (the services exposed no stage histograms)")
    names = list(lat)
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.5))
    y = range(len(names))
    ax.barh(list(y), [lat[n]["p50_s"] * 1000 for n in names], color="C0", label="p50")
    ax.barh(list(y), [lat[n]["p99_s"] * 1000 for n in names], color="C0", alpha=0.35, label="p99")
    ax.set_yticks(list(y), [f"{n} (n={lat[n]['n']:,})" for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("ms (histogram bucket upper bound)")
    ax.set_title("各环节延迟 Per-stage latency")
    ax.legend()
    return _save(fig, path), ""


FIGURES: list[tuple[str, str, str]] = [
    ("pollution_peak", "污染峰值与溯源", "Pollution peak and traced source"),
    ("nowcast", "临近预报与实况", "Nowcast vs observed"),
    ("leak_map", "漏损与候选管段", "Leak on the network map with candidate pipes"),
    ("alert_timeline", "告警与送达时间线", "Alert and delivery timeline"),
    ("latency", "各环节延迟", "Per-stage latency"),
]


def write(summary: dict, sim, settings, out_dir: Path) -> Path:
    """Write `report.html` (and its PNGs) into out_dir; returns its path. Never raises for missing data."""
    out_dir = Path(out_dir)
    files = out_dir / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    sections = []
    with psycopg.connect(settings.db_url, autocommit=True) as conn:
        draw: dict[str, Callable[[Path], tuple[Path, str]]] = {
            "pollution_peak": lambda p: pollution_peak(conn, sim, p),
            "nowcast": lambda p: nowcast_vs_observed(conn, sim, p),
            "leak_map": lambda p: leak_map(conn, sim, p),
            "alert_timeline": lambda p: alert_timeline(conn, sim, p),
            "latency": lambda p: stage_latency(summary, p),
        }
        for key, zh, en in FIGURES:
            head = f"<h2>{html.escape(zh)} / {html.escape(en)}</h2>"
            try:
                png, note = draw[key](files / f"{key}.png")
                body = f'<img src="report_files/{png.name}" alt="{html.escape(en)}">'
                if note:
                    body += f'<p class="note">{html.escape(note)}</p>'
            except NoData as exc:
                body = f'<p class="nodata">暂无数据 / no data for {html.escape(en.lower())}: {html.escape(str(exc))}</p>'
            except Exception as exc:  # a broken figure must not cost the reader the rest of the report
                logger.exception("report figure %s failed", key)
                body = (
                    f'<p class="nodata">图表生成失败 / could not draw {html.escape(en.lower())}: '
                    f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))} — see the demo log</p>"
                )
            sections.append(f'<section id="{key}">{head}{body}</section>')
    scen = "".join(
        f"<tr><td>{html.escape(str(s.get('domain')))}</td><td>{html.escape(str(s.get('scenario')))}</td>"
        f"<td>{ {True: '检出 DETECTED', False: '漏检 MISSED', None: '未检查 not checked'}[s.get('detected')] }</td></tr>"
        for s in summary.get("scenarios", [])
    )
    facts = [
        ("messages published 发布消息", summary.get("published_total")),
        ("accepted to Kafka 进入 Kafka", summary.get("accepted_to_kafka")),
        ("dead-lettered 死信", summary.get("dead_lettered")),
        ("readings stored 入库读数", summary.get("rows_stored")),
        ("every message accounted for 全部消息可追溯", summary.get("accounted")),
        ("alerts raised 告警", summary.get("alerts")),
    ]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts if v is not None
    )
    page = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>CityOps 演示报告 / demo report</title>
<style>body{{font-family:"{CJK_FONT}",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
img{{max-width:100%;border:1px solid #ddd}} .note{{color:#8a6d3b}} .nodata{{color:#a94442;font-weight:bold}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}</style></head>
<body><h1>CityOps 演示报告 / Demo report</h1>
<table>{rows}</table>
<h2>注入场景 / Injected scenarios</h2><table>{scen or "<tr><td>no scenarios in the summary</td></tr>"}</table>
{"".join(sections)}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
