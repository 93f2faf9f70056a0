"""Bird's-eye-view pictures of LiDAR masking: visible, hidden and predicted voxels."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pcmae.io.atomic import atomic_write  # noqa: E402


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


def occupancy_panels(outputs: dict, batch_size: int) -> list[dict]:
    """``model.predict_occupancy`` outputs -> one BEV panel per sample: voxel centers (x, y) of the visible
    voxels, the hidden occupied voxels, and the query voxels predicted occupied (prob > 0.5)."""
    tokens, mask = outputs["tokens"], outputs["mask"]
    query_batch = outputs["query_coords"][:, 0].long()
    predicted = outputs["prob"] > 0.5
    panels = []
    for b in range(batch_size):
        mine = tokens.batch_idx == b
        panels.append({"visible": tokens.centers[mine & ~mask, :2].cpu().numpy(),
                       "hidden": tokens.centers[mine & mask, :2].cpu().numpy(),
                       "predicted": outputs["query_centers"][(query_batch == b) & predicted, :2].cpu().numpy()})
    return panels


def save_model_bev(model, dataset, path, num_samples: int = 2, seed: int = 0) -> Path:
    """Mask the first ``num_samples`` sweeps of ``dataset`` with the model's own rule (seeded) and draw
    visible / hidden / predicted occupied voxels from above."""
    import torch

    batch = dataset.collate_fn([dataset[i] for i in range(min(num_samples, len(dataset)))])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    outputs = model.predict_occupancy(batch["points"].to(device))
    model.train(was_training)
    pc_range = model.tokenizer.pc_range.tolist()
    return save_bev_png(occupancy_panels(outputs, batch["points"].batch_size), path, extent=pc_range)
