"""Bird's-eye-view pictures of LiDAR masking: visible, hidden and predicted voxels."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pcmae.engine.checkpoint import atomic_write  # noqa: E402


def save_bev_png(panels: list[dict], path, extent=None, point_size: float = 0.3) -> Path:
    """One row per sample: visible | hidden (truth) | predicted occupied, top view.

    panels: dicts of numpy (K, 2+) arrays 'visible', 'hidden', 'predicted' (x, y in metres).
    """
    for i, panel in enumerate(panels):
        for key in ("visible", "hidden", "predicted"):
            if key not in panel:
                raise KeyError(f"panel {i} has no {key!r} points")
    fig, axes = plt.subplots(len(panels), 3, figsize=(15, 5 * len(panels)), squeeze=False)
    styles = {"visible": ("0.4", "visible"), "hidden": ("tab:red", "hidden (truth)"),
              "predicted": ("tab:blue", "predicted occupied")}
    for row, panel in zip(axes, panels):
        for ax, key in zip(row, ("visible", "hidden", "predicted")):
            xy = np.asarray(panel[key])
            color, title = styles[key]
            if key != "visible" and len(panel["visible"]):
                vis = np.asarray(panel["visible"])
                ax.scatter(vis[:, 0], vis[:, 1], s=point_size, c="0.85", linewidths=0)
            if len(xy):
                ax.scatter(xy[:, 0], xy[:, 1], s=point_size, c=color, linewidths=0)
            ax.set_title(f"{title} ({len(xy)})")
            ax.set_aspect("equal")
            if extent is not None:
                ax.set_xlim(extent[0], extent[3])
                ax.set_ylim(extent[1], extent[4])
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
    return Path(path)
