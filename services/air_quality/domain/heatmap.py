"""PNG heat map of a grid estimate (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import io

import numpy as np

from services.air_quality.domain.grid import Grid


def heatmap_png(grid: Grid, values: np.ndarray, *, title: str = "PM2.5 µg/m³",
                sensors: tuple[np.ndarray, np.ndarray] | None = None, vmax: float | None = None) -> bytes:
    """Render cell values as a PNG (bytes); optional sensor positions as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(values, float).reshape(grid.shape)
    extent = (grid.lon.min(), grid.lon.max(), grid.lat.min(), grid.lat.max())
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    im = ax.imshow(img, extent=extent, origin="upper", cmap="magma_r", vmin=0,
                   vmax=vmax or float(np.nanpercentile(img, 99)) or 1.0, aspect="auto")
    if sensors is not None:
        ax.scatter(sensors[1], sensors[0], s=6, c="cyan", edgecolors="k", linewidths=0.3)
    fig.colorbar(im, ax=ax, label=title)
    ax.set_xlabel("lon")
    ax.set_ylabel("lat")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
