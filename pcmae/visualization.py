"""Pictures of masked autoencoders: Point-MAE reconstructions (3D panels) and LiDAR occupancy from above (BEV).

matplotlib is imported inside the functions and drawn on its Agg canvas through the ``Figure`` API: importing this
module neither loads matplotlib nor changes its global backend (no ``matplotlib.use``, no pyplot state).

Every picture is a figure; ``figure_to_array`` turns it into the uint8 (H, W, 3) image that the models' ``picture``
methods return (for TensorBoard), ``save_png`` writes a figure or such an image atomically.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from pcmae.io.atomic import atomic_write

REQUIRED_KEYS = ("input", "visible", "reconstruction")
PANEL_INCHES = 3.0
BEV_KEYS = ("visible", "hidden", "predicted")


def new_figure(width_inches: float, height_inches: float, dpi: int):
    """A matplotlib Figure on its own Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_inches, height_inches), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig) -> np.ndarray:
    """Render ``fig`` -> uint8 RGB image (H, W, 3)."""
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def save_png(picture, path) -> Path:
    """Write a Figure or a uint8 image (H, W, 3) as a PNG, atomically."""
    buffer = io.BytesIO()
    if isinstance(picture, np.ndarray):
        if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
            raise ValueError(f"save_png: expected a uint8 (H, W, 3) image, got {picture.dtype} {picture.shape}")
        from matplotlib.image import imsave

        imsave(buffer, picture, format="png")
    else:
        picture.savefig(buffer, format="png", dpi=picture.dpi)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


# --- Point-MAE: input | visible | reconstruction ----------------------------------------------------------------

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


def reconstruction_figure(samples: list, dpi: int = 100, point_size: float = 1.0):
    """One row per sample: input | visible | reconstruction (red) + visible (grey) [| masked target + visible].

    Each sample dict holds ``input`` (N, 3), ``visible`` (V, 3), ``reconstruction`` (R, 3) and optionally
    ``masked_target`` (R, 3); ``PANEL_INCHES * dpi`` pixels per panel.
    """
    if not samples:
        raise ValueError("save_reconstruction_png: no samples to draw")
    rows = [_check_sample(i, s) for i, s in enumerate(samples)]
    with_target = any("masked_target" in r for r in rows)
    ncols = 4 if with_target else 3
    fig = new_figure(PANEL_INCHES * ncols, PANEL_INCHES * len(rows), dpi)
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
    return fig


def save_reconstruction_png(samples: list, path, dpi: int = 100, point_size: float = 1.0) -> Path:
    """``reconstruction_figure`` written atomically as a PNG."""
    return save_png(reconstruction_figure(samples, dpi, point_size), path)


def reconstruction_samples(rec: dict) -> list[dict]:
    """``PointMAE.reconstruct`` output -> one numpy sample dict per cloud for ``reconstruction_figure``."""
    return [{key: rec[key][i].detach().float().cpu().numpy() for key in REQUIRED_KEYS}
            for i in range(len(rec["input"]))]


# --- LiDAR: visible | hidden | predicted occupied, from above -----------------------------------------------------

def bev_figure(panels: list[dict], extent=None, point_size: float = 0.3, dpi: int = 80):
    """One row per sample: [past (aligned) |] visible | hidden (truth) | predicted occupied, top view.

    panels: dicts of numpy (K, 2+) arrays 'visible', 'hidden', 'predicted' (x, y in metres) and optionally 'past'
    (temporal models: the past frame in the current frame); extent: the point cloud range
    (x_min, y_min, z_min, x_max, y_max, z_max) or None.
    """
    if not panels:
        raise ValueError("bev_figure: no panels to draw")
    for i, panel in enumerate(panels):
        for key in BEV_KEYS:
            if key not in panel:
                raise KeyError(f"panel {i} has no {key!r} points")
    keys = (("past",) if all("past" in p for p in panels) else ()) + BEV_KEYS
    fig = new_figure(5 * len(keys), 5 * len(panels), dpi)
    styles = {"past": ("tab:green", "past frame (aligned)"), "visible": ("0.4", "visible"),
              "hidden": ("tab:red", "hidden (truth)"), "predicted": ("tab:blue", "predicted occupied")}
    for r, panel in enumerate(panels):
        vis = np.asarray(panel["visible"])
        for c, key in enumerate(keys):
            ax = fig.add_subplot(len(panels), len(keys), r * len(keys) + c + 1)
            xy = np.asarray(panel[key])
            color, title = styles[key]
            if key not in ("visible", "past") and len(vis):
                ax.scatter(vis[:, 0], vis[:, 1], s=point_size, c="0.85", linewidths=0)
            if len(xy):
                ax.scatter(xy[:, 0], xy[:, 1], s=point_size, c=color, linewidths=0)
            ax.set_title(f"{title} ({len(xy)})")
            ax.set_aspect("equal")
            if extent is not None:
                ax.set_xlim(extent[0], extent[3])
                ax.set_ylim(extent[1], extent[4])
    fig.tight_layout()
    return fig


def save_bev_png(panels: list[dict], path, extent=None, point_size: float = 0.3) -> Path:
    """``bev_figure`` written atomically as a PNG."""
    return save_png(bev_figure(panels, extent, point_size), path)


def occupancy_panels(outputs: dict, batch_size: int) -> list[dict]:
    """``model.predict_occupancy`` outputs -> one BEV panel per sample: voxel centers (x, y) of the visible
    voxels, the hidden occupied voxels, and the query voxels predicted occupied (prob > 0.5)."""
    tokens, mask = outputs["tokens"], outputs["mask"]
    query_batch = outputs["query_coords"][:, 0].long()
    predicted = outputs["prob"] > 0.5
    panels = []
    for b in range(batch_size):
        mine = tokens.batch_idx == b
        panels.append({"visible": tokens.centers[mine & ~mask, :2].float().cpu().numpy(),
                       "hidden": tokens.centers[mine & mask, :2].float().cpu().numpy(),
                       "predicted": outputs["query_centers"][(query_batch == b) & predicted, :2].float().cpu().numpy()})
    return panels
