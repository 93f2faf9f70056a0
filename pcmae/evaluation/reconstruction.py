"""Pictures of what a masked autoencoder rebuilds."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import default_collate

from pcmae.engine.visualize import save_reconstruction_png


@torch.no_grad()
def save_model_reconstructions(model, dataset, path: Path, num_samples: int = 4) -> Path:
    """Run ``model.reconstruct`` on the first ``num_samples`` items and draw input / visible / rebuilt."""
    batch = default_collate([dataset[i] for i in range(min(num_samples, len(dataset)))])
    was_training = model.training
    model.eval()
    rec = model.reconstruct(batch["points"])
    model.train(was_training)
    samples = [{key: rec[key][i].cpu().numpy() for key in ("input", "visible", "reconstruction")}
               for i in range(len(rec["input"]))]
    save_reconstruction_png(samples, path)
    return Path(path)
