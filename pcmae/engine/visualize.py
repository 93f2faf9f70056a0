"""Pictures of masked-autoencoder reconstructions (matplotlib, Agg canvas: no display needed)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from pcmae.engine.checkpoint import atomic_write

REQUIRED_KEYS = ("input", "visible", "reconstruction")
PANEL_INCHES = 3.0


def _check_sample(i: int, sample: dict) -> dict:
    """Arrays of one sample as float (K, 3); a clear error for a missing key or a wrong shape."""
    if not isinstance(sample, dict):
        raise TypeError(f"samples[{i}]: expected a dict with {', '.join(REQUIRED_KEYS)}, got {type(sample).__name__}")
    out = {}
    for key in (*REQUIRED_KEYS, "masked_target"):
        if key not in sample:
            if key == "masked_target":
                continue
            raise KeyError(f"samples[{i}]: missing key {key!r} (each sample needs {', '.join(REQUIRED_KEYS)})")
        arr = np.asarray(sample[key], dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3 or not np.isfinite(arr).all():
            raise ValueError(f"samples[{i}][{key!r}]: expected finite (K, 3) points, got shape {arr.shape}")
        out[key] = arr
    return out


def _row_limits(arrays: Sequence[np.ndarray]):
    """One cube around every point of the row: the same (lo, hi) on x, y and z for all its panels."""
    pts = np.concatenate([a for a in arrays if len(a)]) if any(len(a) for a in arrays) else np.zeros((1, 3))
    center = (pts.max(0) + pts.min(0)) / 2
    half = max(float((pts.max(0) - pts.min(0)).max()) / 2, 1e-6) * 1.05
    return center - half, center + half


def save_reconstruction_png(samples: list, path, dpi: int = 100, point_size: float = 1.0) -> Path:
    """One row per sample: input | visible | reconstruction (red) + visible (grey) [| masked target + visible].

    Each sample dict holds ``input`` (N, 3), ``visible`` (V, 3), ``reconstruction`` (R, 3) and optionally
    ``masked_target`` (R, 3). The image is ``PANEL_INCHES * dpi`` pixels per panel; written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not samples:
        raise ValueError("save_reconstruction_png: no samples to draw")
    rows = [_check_sample(i, s) for i, s in enumerate(samples)]
    with_target = any("masked_target" in r for r in rows)
    ncols = 4 if with_target else 3
    fig = Figure(figsize=(PANEL_INCHES * ncols, PANEL_INCHES * len(rows)), dpi=dpi)
    FigureCanvasAgg(fig)
    grey, red, blue = "0.55", "tab:red", "tab:blue"
    for r, row in enumerate(rows):
        lo, hi = _row_limits(list(row.values()))
        panels = [("input", [(row["input"], blue)]),
                  ("visible", [(row["visible"], grey)]),
                  ("reconstruction + visible", [(row["visible"], grey), (row["reconstruction"], red)])]
        if with_target:
            target = row.get("masked_target", np.zeros((0, 3)))
            panels.append(("masked target + visible", [(row["visible"], grey), (target, red)]))
        for c, (title, layers) in enumerate(panels):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1, projection="3d")
            for pts, color in layers:
                ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], s=point_size, c=color, depthshade=False, linewidths=0)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[2], hi[2])
            ax.set_zlim(lo[1], hi[1])
            ax.set_box_aspect((1, 1, 1))
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
