"""Bird's-eye-view pictures of LiDAR masking (drawing in :mod:`pcmae.visualization`; kept for the tools)."""
from __future__ import annotations

from pathlib import Path

import torch

from pcmae.visualization import occupancy_panels, save_bev_png, save_png

__all__ = ["occupancy_panels", "save_bev_png", "save_model_bev"]


def save_model_bev(model, dataset, path, num_samples: int = 2, seed: int = 0) -> Path:
    """``model.picture`` of the first ``num_samples`` sweeps of ``dataset`` (mask seeded by ``seed``), as a PNG."""
    from pcmae.engine.device import model_device, move_to_device

    batch = dataset.collate_fn([dataset[i] for i in range(min(num_samples, len(dataset)))])
    with torch.no_grad():
        return save_png(model.picture(move_to_device(batch, model_device(model)), seed=seed), path)
