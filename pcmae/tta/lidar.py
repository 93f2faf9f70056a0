"""A LiDAR masked autoencoder (Voxel-MAE / R-MAE) adapting to a stream of sweeps with its own masked loss.

Each incoming sweep is first scored (hidden-voxel occupancy under seeded masks, as ``tools/evaluate.py``) with the
weights adapted on the sweeps BEFORE it, then the model takes ``steps`` steps of its own pre-training loss on it:
predict-then-adapt, so no score is measured on a sweep the weights have already reconstructed. The source model
(no adaptation) is scored on the same sweeps and masks, next to the trivial answers.
"""
from __future__ import annotations

import copy
import time

import torch

from pcmae.engine.device import model_device
from pcmae.evaluation.metrics import score_metrics
from pcmae.evaluation.occupancy import evaluate_sweep, sweep_batches


def lidar_stream(model, dataset, point_cloud_range, steps: int = 1, lr: float = 1e-4, seeds=(0, 1, 2),
                 adapt: bool = True, seed: int = 0) -> dict:
    """Score every sweep of ``dataset`` in order (pooled over the stream), adapting after each when ``adapt``.
    Returns {"per_sweep": [{index, loss, f1, auroc, ..., adapt_ms, score_ms}], "pooled": {predictor: metrics}};
    ``model`` is adapted in place (pass a copy to keep the source). ``seed`` seeds torch's global RNG, from which the model's training
    forward draws its masks: the same stream adapts the same way in every run."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr) if adapt else None
    pooled: dict[str, list] = {"labels": [], "prob": [], "neighbour": []}
    per_sweep = []
    for index, (batch, _) in enumerate(sweep_batches(dataset, point_cloud_range, model_device(model))):
        start = time.perf_counter()
        mine = {key: [] for key in pooled}
        for mask_seed in seeds:
            r = evaluate_sweep(model, batch, mask_seed)
            for key in pooled:
                mine[key].append(r[key])
                pooled[key].append(r[key])
        scored = time.perf_counter()
        sweep_prob, sweep_labels = torch.cat(mine["prob"]), torch.cat(mine["labels"])
        loss = None
        if adapt:
            model.train()
            for _ in range(steps):
                out = model(batch)
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                optimizer.step()
                loss = out["loss"].item() if loss is None else loss
            model.eval()
        per_sweep.append({"index": index, "loss": loss, **score_metrics(sweep_prob, sweep_prob > 0.5, sweep_labels),
                          "score_ms": 1000 * (scored - start),
                          "adapt_ms": 1000 * (time.perf_counter() - scored)})
    labels, prob, neighbour = (torch.cat(pooled[k]) for k in ("labels", "prob", "neighbour"))
    scores = {"model": (prob, prob > 0.5), "neighbour": (neighbour, neighbour > 0),
              "all_occupied": (torch.ones_like(prob), torch.ones_like(labels))}
    return {"per_sweep": per_sweep, "num_queries": len(labels), "occupied_rate": labels.float().mean().item(),
            "pooled": {name: score_metrics(score, pred, labels) for name, (score, pred) in scores.items()}}


def source_and_adapted(model, dataset, point_cloud_range, **kwargs) -> dict:
    """The same stream scored by the source model and by a copy adapting along it: {"source": ..., "adapted": ...}."""
    source = lidar_stream(model, dataset, point_cloud_range, adapt=False, **kwargs)
    adapted = lidar_stream(copy.deepcopy(model), dataset, point_cloud_range, adapt=True, **kwargs)
    return {"source": source, "adapted": adapted}


class CorruptedSweeps:
    """Sweeps of ``dataset`` with a LiDAR corruption (``pcmae.data.corruptions.LIDAR_CORRUPTIONS``) applied to each,
    seeded per sweep; ``ring_column``: the ring index column, if the sweeps have one."""

    def __init__(self, dataset, corruption: str, severity: int, seed: int = 0, ring_column: int | None = None):
        from pcmae.data.corruptions import LIDAR_CORRUPTIONS

        if corruption not in LIDAR_CORRUPTIONS:
            raise ValueError(f"unknown LiDAR corruption {corruption!r}; known: {', '.join(LIDAR_CORRUPTIONS)}")
        self.dataset, self.fn, self.severity, self.seed = dataset, LIDAR_CORRUPTIONS[corruption], severity, seed
        self.ring_column = ring_column
        self.collate_fn = dataset.collate_fn

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        item["points"] = self.fn(torch.as_tensor(item["points"]), self.severity, generator, self.ring_column)
        return item
