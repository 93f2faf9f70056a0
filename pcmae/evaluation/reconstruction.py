"""Pictures of what a masked autoencoder rebuilds (drawing in :mod:`pcmae.visualization`; kept for the tools)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import default_collate

from pcmae.visualization import save_png


def save_model_reconstructions(model, dataset, path: Path, num_samples: int = 4, seed: int = 0) -> Path:
    """``model.picture`` of the first ``num_samples`` items of ``dataset`` (input / visible / rebuilt), as a PNG."""
    from pcmae.engine.device import model_device, move_to_device

    batch = default_collate([dataset[i] for i in range(min(num_samples, len(dataset)))])
    with torch.no_grad():
        return save_png(model.picture(move_to_device(batch, model_device(model)), seed=seed), path)
