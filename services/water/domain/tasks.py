"""Leak alerts and repair / inspection field tasks for dispatchers, in Chinese and English."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.water.domain.detection import LeakEvent
from services.water.domain.network import WaterNetwork


@dataclass(frozen=True)
class RepairTask:
    task_id: str
    leak_id: str
    dma: str
    pipe_ids: list[str]
    estimated_flow_m3h: float
    priority: str  # high | medium | low
    title_zh: str
    title_en: str
    body_zh: str
    body_en: str
    map_png: str | None = None
    extra: dict = field(default_factory=dict)


def leak_priority(flow_m3h: float) -> str:
    if flow_m3h >= 20.0:
        return "high"
    return "medium" if flow_m3h >= 5.0 else "low"


def repair_task(ev: LeakEvent, net: WaterNetwork, *, map_png: str | None = None, top: int = 5) -> RepairTask:
    """Inspection task for the top candidate pipes of a detected leak."""
    cands = ev.candidates[:top]
    pipes = [c.pipe_id for c in cands]
    lines_zh, lines_en = [], []
    for i, c in enumerate(cands, 1):
        a, b = net.link_nodes[c.pipe_id]
        length = net.pipe_length_m.get(c.pipe_id, 0.0)
        chance_zh = chance_en = ""
        if c.p_within == c.p_within:  # the model's chance that the leak is within 300 m (not calibrated exactly)
            chance_zh, chance_en = f"，模型估计漏点在其 300 米内的把握约 {c.p_within:.0%}", f", model's chance the leak is within 300 m: {c.p_within:.0%}"
        lines_zh.append(f"{i}. 管段 {c.pipe_id}（节点 {a}–{b}，长 {length:.0f} 米，距首选 {c.distance_to_top_m:.0f} 米{chance_zh}）")
        lines_en.append(f"{i}. pipe {c.pipe_id} (nodes {a}-{b}, {length:.0f} m long, {c.distance_to_top_m:.0f} m from the first{chance_en})")
    flow = float(ev.flow_m3h) if ev.flow_m3h == ev.flow_m3h else 0.0
    when = ev.detected_at.strftime("%Y-%m-%d %H:%M UTC")
    prio = leak_priority(flow)
    prio_zh = {"high": "高", "medium": "中", "low": "低"}[prio]
    return RepairTask(
        task_id=f"task-{ev.leak_id}",
        leak_id=ev.leak_id,
        dma=ev.dma,
        pipe_ids=pipes,
        estimated_flow_m3h=round(flow, 2),
        priority=prio,
        title_zh=f"漏损排查：{ev.dma} 疑似漏水约 {flow:.1f} 立方米/小时（优先级{prio_zh}）",
        title_en=f"Leak inspection: suspected leak of about {flow:.1f} m3/h in {ev.dma} (priority {prio})",
        body_zh=(f"{when} 检测到漏损（依据：{ev.statistic}）。请按顺序听漏排查以下管段：\n" + "\n".join(lines_zh)
                 + "\n确认后请回报位置并安排抢修。"),
        body_en=(f"Leak detected at {when} (evidence: {ev.statistic}). Please survey these pipes in order:\n"
                 + "\n".join(lines_en) + "\nReport the confirmed location and schedule the repair."),
        map_png=map_png,
    )


def leak_alert_text(ev: LeakEvent) -> dict[str, str]:
    flow = float(ev.flow_m3h) if ev.flow_m3h == ev.flow_m3h else 0.0
    return {
        "zh": f"【漏损告警】{ev.dma} 于 {ev.detected_at:%m-%d %H:%M} 检测到漏水，估计 {flow:.1f} 立方米/小时，最可能管段 {ev.pipe_id}。",
        "en": f"[Leak alert] {ev.dma}: leak detected {ev.detected_at:%m-%d %H:%M}, about {flow:.1f} m3/h, most likely pipe {ev.pipe_id}.",
    }
