"""Reconstruction quality of a LiDAR masked autoencoder on sweeps it did not train on, next to the trivial answers.

For each sweep (cropped to the model's range), the model hides voxels with its own masking rule and is asked
about query voxels: the hidden occupied ones (label 1) and sampled empty ones (label 0). Every predictor gives a
score per query (``pcmae.evaluation.baselines``):
  model          the predicted occupancy probability (occupied when > 0.5);
  neighbour      share of the 26 neighbours that are visible (occupied when > 0);
  range_prior    occupancy rate of the query's distance ring on the training sweeps (occupied when > 0.5);
  all_occupied / none_occupied   constant 1 / 0;
  copy_past      (sequences: a LidarSequence dataset) the query voxel holds points of the aligned past frame;
  <name>         each model of ``compare`` (e.g. a single-frame Voxel-MAE next to a T-MAE), asked about exactly the
                 same hidden and empty voxels (same grid, masking rule and seed; checked).
Scores pooled over all queries: precision / recall / F1 (thresholded), AUROC and average precision (a constant
gets 0.5 and the occupied rate: only these two say whether a score ranks queries), F1 per distance bin, and the
AUROC among queries with the same number of visible neighbours (what a score knows beyond the neighbour baseline,
which gets 0.5 there).
Chamfer-L2 (m^2, the two directions summed) of each hidden-voxel point guess against the real hidden points: the
model's rebuilt points (models with a point head), one point at each voxel center, and the neighbour copy.
"""
from __future__ import annotations

import math

import torch

from pcmae.data.lidar_transforms import in_range_mask
from pcmae.engine.device import model_device, move_to_device
from pcmae.evaluation.baselines import (RangePrior, neighbour_copy_points, neighbour_fraction, ring_distance,
                                        voxel_point_offsets)
from pcmae.evaluation.metrics import precision_recall_f1, score_metrics, stratified_auroc
from pcmae.ops import chamfer_distance
from pcmae.pretrainers.voxel_targets import is_occupied

RANGE_BINS = (0.0, 10.0, 20.0, 30.0, 40.0, math.inf)  # metres, horizontal distance of the query voxel
PRIOR_RING_M = 2.0
PREDICTORS = ("model", "neighbour", "range_prior", "all_occupied", "none_occupied")
__all__ = ["RANGE_BINS", "PREDICTORS", "evaluate_dataset", "evaluate_sweep", "fit_range_prior",
           "neighbour_baseline", "precision_recall_f1", "sweep_batches"]


def neighbour_baseline(query: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(Q, 4) query voxels -> (Q,) bool: True when any of the 26 neighbours is a visible voxel."""
    return neighbour_fraction(query, visible) > 0


def sweep_batches(dataset, point_cloud_range, device):
    """Each item of ``dataset`` cropped to the range (its past frame too, for sequences): (collated batch on
    ``device``, share of its points kept)."""
    for index in range(len(dataset)):
        item = dict(dataset[index])
        points = torch.as_tensor(item["points"])
        keep = in_range_mask(points, point_cloud_range)
        if not keep.any():
            raise ValueError(f"sweep {index} ({item.get('lidar_path', '?')}): none of its {len(points)} points is "
                             f"inside the model's point_cloud_range {list(point_cloud_range)}")
        item["points"] = points[keep]
        if "past_points" in item:
            past = torch.as_tensor(item["past_points"])
            item["past_points"] = past[in_range_mask(past, point_cloud_range)]
        yield move_to_device(dataset.collate_fn([item]), device), keep.float().mean().item()


def _queries(model, batch: dict, seed: int) -> dict:
    points = batch["points"]
    generator = torch.Generator(device=points.points.device).manual_seed(seed)
    context = {}
    for key in getattr(model, "context_keys", ()):
        if key not in batch:
            raise ValueError(f"{type(model).__name__} needs '{key}' in each item: evaluate it on a LidarSequence "
                             f"dataset")
        context[key] = batch[key]
    return model.predict_occupancy(points, generator=generator, **context)


def copy_past_baseline(query_coords: torch.Tensor, past_points, model) -> torch.Tensor:
    """(Q,) bool: the query voxel (model's grid) holds points of the aligned past frame (PointBatch)."""
    lo, size = model.tokenizer.pc_range[:3], model.tokenizer.voxel_size
    xyz = past_points.xyz
    past_coords = torch.cat([past_points.batch_idx[:, None],
                             torch.floor((xyz - lo) / size).long().flip(-1)], dim=1)
    return is_occupied(query_coords, past_coords, model.grid_size())


@torch.no_grad()
def fit_range_prior(model, dataset, point_cloud_range, seeds=(0,), ring_m: float = PRIOR_RING_M) -> RangePrior:
    """The ``RangePrior`` of the queries the model draws (mask and empty voxels, seeded) on every sweep of
    ``dataset`` (the training sweeps, without augmentation), rings of ``ring_m`` metres up to the range's corner."""
    model.eval()
    distances, labels = [], []
    for batch, _ in sweep_batches(dataset, point_cloud_range, model_device(model)):
        for seed in seeds:
            out = _queries(model, batch, seed)
            distances.append(ring_distance(out["query_centers"]).cpu())
            labels.append(out["labels"].cpu())
    lo, hi = point_cloud_range[:2], point_cloud_range[3:5]
    corner = max(math.hypot(x, y) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]))
    return RangePrior.fit(torch.cat(distances), torch.cat(labels), ring_m, corner)


@torch.no_grad()
def evaluate_sweep(model, batch: dict, seed: int = 0, compare: dict | None = None) -> dict:
    """One collated batch (on the model's device) under the mask of ``seed`` -> per-query tensors on the CPU
    ("labels" bool, "prob", "neighbour", "distance", "copy_past" for sequences, each compared model's probability
    under its name), "chamfer" {guess: m^2} and the raw "outputs"."""
    model.eval()
    points = batch["points"]
    out = _queries(model, batch, seed)
    tokens, mask = out["tokens"], out["mask"]
    visible_coords = tokens.coords[~mask]
    result = {"labels": out["labels"].bool().cpu(), "prob": out["prob"].float().cpu(),
              "neighbour": neighbour_fraction(out["query_coords"], visible_coords).cpu(),
              "distance": ring_distance(out["query_centers"]).cpu(), "chamfer": {}, "outputs": out}
    if "past_points" in batch:
        result["copy_past"] = copy_past_baseline(out["query_coords"], batch["past_points"], model).float().cpu()
    for name, other in (compare or {}).items():
        other.eval()
        theirs = _queries(other, batch, seed)
        if not (torch.equal(theirs["query_coords"], out["query_coords"]) and torch.equal(theirs["mask"], mask)):
            raise ValueError(f"compared model {name!r} drew other hidden / query voxels than the evaluated model "
                             f"under seed {seed}: give both the same voxel grid, range and masking rule")
        result[name] = theirs["prob"].float().cpu()
    hidden_ids = torch.nonzero(mask).squeeze(1)
    real = points.xyz[torch.isin(tokens.point_to_voxel, hidden_ids)]
    if len(real) and len(hidden_ids):
        centers = tokens.centers[mask]
        offsets = voxel_point_offsets(points.xyz, tokens.point_to_voxel, tokens.centers)[~mask]
        guesses = {"centers": centers,
                   "neighbour_copy": neighbour_copy_points(tokens.coords[mask], centers, visible_coords, offsets)}
        if "points" in out:
            guesses["model"] = out["points"].reshape(-1, 3)
        for name, guess in guesses.items():
            result["chamfer"][name] = chamfer_distance(guess[None].float(), real[None].float()).item()
    return result


def _by_range(pred, labels, distance, bins) -> list:
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (distance >= lo) & (distance < hi)
        row = {"range_m": [lo, hi], "num_queries": int(sel.sum()),
               "occupied_rate": labels[sel].float().mean().item() if sel.any() else float("nan")}
        row["f1"] = precision_recall_f1(pred[sel], labels[sel])["f1"] if sel.any() else float("nan")
        rows.append(row)
    return rows


def evaluate_dataset(model, dataset, point_cloud_range, prior: RangePrior, seeds=(0, 1, 2),
                     range_bins=RANGE_BINS, compare: dict | None = None) -> dict:
    """Every sweep of ``dataset`` (uncropped items; one at a time, cropped to ``point_cloud_range``) under each
    seed's mask: the metrics of every predictor (``PREDICTORS``, "copy_past" for sequence datasets, and each model
    of ``compare`` {name: model}) pooled over all queries (micro average) and per distance bin, the mean Chamfer-L2
    of each point guess, and the share of each sweep inside the range."""
    compare = dict(compare or {})
    clash = [name for name in compare if name in PREDICTORS or name == "copy_past"]
    if clash:
        raise ValueError(f"compared model names {clash} clash with the built-in predictors")
    pooled, chamfer, inside = {}, {}, []
    for batch, share in sweep_batches(dataset, point_cloud_range, model_device(model)):
        inside.append(share)
        for seed in seeds:
            r = evaluate_sweep(model, batch, seed, compare)
            for k, v in r.items():
                if isinstance(v, torch.Tensor):
                    pooled.setdefault(k, []).append(v)
            for name, value in r["chamfer"].items():
                chamfer.setdefault(name, []).append(value)
    pooled = {k: torch.cat(v) for k, v in pooled.items()}
    labels, prob, neighbour, distance = (pooled[k] for k in ("labels", "prob", "neighbour", "distance"))
    prior_score = prior(distance).float()
    neighbour_count = torch.round(neighbour * 26).long()
    scores = {"model": (prob, prob > 0.5), "neighbour": (neighbour, neighbour > 0),
              "range_prior": (prior_score, prior_score > 0.5),
              "all_occupied": (torch.ones_like(prob), torch.ones_like(labels)),
              "none_occupied": (torch.zeros_like(prob), torch.zeros_like(labels))}
    if "copy_past" in pooled:
        scores["copy_past"] = (pooled["copy_past"], pooled["copy_past"] > 0.5)
    for name in compare:
        scores[name] = (pooled[name], pooled[name] > 0.5)
    predictors = {}
    for name, (score, pred) in scores.items():
        predictors[name] = {**score_metrics(score, pred, labels),
                            "auroc_same_neighbours": stratified_auroc(score, labels, neighbour_count),
                            "by_range": _by_range(pred, labels, distance, list(range_bins))}
    result = {"num_sweeps": len(inside), "seeds": list(seeds), "num_queries": len(labels),
              "num_hidden": int(labels.sum()), "occupied_rate": labels.float().mean().item(),
              "predictors": predictors, "inside_range": {"per_sweep": inside, "mean": sum(inside) / len(inside)},
              "chamfer": {name: sum(v) / len(v) for name, v in chamfer.items()}, "range_prior": prior.to_dict(),
              # the thresholded scores under their earlier names, for existing readers
              "model": predictors["model"], "baseline": predictors["neighbour"]}
    return result
