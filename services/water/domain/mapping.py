"""A network map (PNG) with the ranked candidate pipes of a leak, for the field task."""

from __future__ import annotations

from pathlib import Path

from services.water.domain.localisation import LeakCandidate
from services.water.domain.network import WaterNetwork


def network_map_png(
    net: WaterNetwork,
    candidates: list[LeakCandidate],
    path: str | Path,
    *,
    sensor_nodes: list[str] = (),
    true_pipe: str | None = None,
    title: str = "",
) -> Path:
    """Draw all pipes in grey, candidates from red (first) to orange, sensors as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    segs = [[net.node_xy[a], net.node_xy[b]] for a, b in net.link_nodes.values()]
    ax.add_collection(LineCollection(segs, colors="#bbbbbb", linewidths=0.8))
    n = max(len(candidates), 1)
    for i, c in enumerate(reversed(candidates)):
        rank = n - i
        a, b = net.link_nodes[c.pipe_id]
        colour = (1.0, 0.55 * (rank - 1) / n, 0.0)
        ax.plot(*zip(net.node_xy[a], net.node_xy[b], strict=True), color=colour, linewidth=4 if rank == 1 else 2.5)
        mx, my = net.link_midpoint_xy(c.pipe_id)
        ax.annotate(str(rank), (mx, my), fontsize=8, color="black")
    if sensor_nodes:
        xs, ys = zip(*(net.node_xy[s] for s in sensor_nodes if s in net.node_xy), strict=True)
        ax.scatter(xs, ys, s=14, c="#1f77b4", zorder=3, label="pressure sensor")
    if true_pipe:
        a, b = net.link_nodes[true_pipe]
        ax.plot(*zip(net.node_xy[a], net.node_xy[b], strict=True), color="green", linewidth=2, linestyle="--",
                label="true leak")
    for t in net.tanks + net.reservoirs:
        ax.scatter(*net.node_xy[t], marker="s", s=40, c="navy", zorder=4)
    ax.autoscale()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{net.path.name}: leak candidates (1 = most likely)")
    if sensor_nodes or true_pipe:
        ax.legend(loc="lower right", fontsize=8)
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
