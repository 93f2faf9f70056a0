"""Reconstruction quality of a LiDAR masked autoencoder on sweeps it did not train on.

For each sweep, the model hides voxels with its own masking rule and is asked about query voxels:
the hidden occupied ones (label 1) and sampled empty ones (label 0). Scores:
- occupancy precision / recall / F1 of ``prob > 0.5`` over the queries;
- the same for the trivial baseline: a query is occupied when one of its 26 neighbours is visible;
- Chamfer-L2 (m^2) between the predicted points of the hidden voxels and their real points, next to the
  baseline of putting each hidden voxel's points at its center.
"""
from __future__ import annotations

import torch

from pcmae.ops import chamfer_distance
from pcmae.pretrainers.voxel_targets import neighbour_mean


def precision_recall_f1(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """pred, labels: (Q,) bool / {0, 1}."""
    pred, labels = pred.bool(), labels.bool()
    tp = (pred & labels).sum().item()
    precision = tp / max(pred.sum().item(), 1)
    recall = tp / max(labels.sum().item(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}


def neighbour_baseline(query: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(Q, 4) query voxels -> (Q,) bool: True when any of the 26 neighbours is a visible voxel."""
    ones = torch.ones(len(visible), 1, device=visible.device)
    return neighbour_mean(query, visible, ones)[1] > 0


@torch.no_grad()
def evaluate_sweep(model, points, generator_seed: int = 0) -> dict:
    """Scores for one packed batch of sweeps (see module docstring), the per-query predictions
    (``pred``, ``baseline_pred``, ``labels``) for pooling over sweeps, and the raw outputs for pictures."""
    torch.manual_seed(generator_seed)
    model.eval()
    out = model.predict_occupancy(points)
    tokens, mask, labels = out["tokens"], out["mask"], out["labels"]
    pred = out["prob"] > 0.5
    baseline = neighbour_baseline(out["query_coords"], tokens.coords[~mask])
    result = {"model": precision_recall_f1(pred, labels), "baseline": precision_recall_f1(baseline, labels),
              "num_queries": len(labels), "num_hidden": int(labels.sum()),
              "pred": pred, "baseline_pred": baseline, "labels": labels.bool()}
    real = points.xyz[torch.isin(tokens.point_to_voxel, torch.nonzero(mask).squeeze(1))]
    if model.loss_weights["chamfer"] > 0 and len(real):
        centers = tokens.centers[mask]
        result["chamfer_model"] = chamfer_distance(out["points"].reshape(1, -1, 3), real[None]).item()
        result["chamfer_centers"] = chamfer_distance(centers[None], real[None]).item()
    result["outputs"] = out
    return result


def evaluate_dataset(model, dataset, seeds=(0, 1, 2)) -> dict:
    """Every sweep of ``dataset`` (one at a time) under each seed's mask: precision / recall / F1 pooled over all
    queries (micro average) for the model and the neighbour baseline, and mean Chamfer-L2 (m^2) of the rebuilt
    points next to the voxel-center baseline when the model predicts points."""
    preds, baselines, labels, chamfer, chamfer_centers = [], [], [], [], []
    device = next(model.parameters()).device
    for index in range(len(dataset)):
        points = dataset.collate_fn([dataset[index]])["points"].to(device)
        for seed in seeds:
            r = evaluate_sweep(model, points, generator_seed=seed)
            preds.append(r["pred"].cpu())
            baselines.append(r["baseline_pred"].cpu())
            labels.append(r["labels"].cpu())
            if "chamfer_model" in r:
                chamfer.append(r["chamfer_model"])
                chamfer_centers.append(r["chamfer_centers"])
    labels_all = torch.cat(labels)
    result = {"model": precision_recall_f1(torch.cat(preds), labels_all),
              "baseline": precision_recall_f1(torch.cat(baselines), labels_all),
              "num_sweeps": len(dataset), "seeds": list(seeds), "num_queries": len(labels_all),
              "num_hidden": int(labels_all.sum())}
    if chamfer:
        result["chamfer_model"] = sum(chamfer) / len(chamfer)
        result["chamfer_centers"] = sum(chamfer_centers) / len(chamfer_centers)
    return result
