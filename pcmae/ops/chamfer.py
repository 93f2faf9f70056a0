"""Chamfer distance with bounded memory, as Point-MAE's ``ChamferDistanceL2`` / ``ChamferDistanceL1``.

The nearest neighbours are found without gradient (kd-tree on CPU, chunked torch search elsewhere: never the
full N x M distance matrix), then the distances ``||x - y[idx]||`` are recomputed with torch ops. Their
gradient is the gradient of the dense formulation (the min picks one neighbour), and the backward pass
only touches (B, N, 3) tensors.
"""
from __future__ import annotations

import torch

from pcmae.ops._checks import check_mask, check_points, check_same_batch
from pcmae.ops.knn import DEFAULT_CHUNK_ELEMENTS, nearest_indices, sq_dist_to_indices

REDUCTIONS = ("mean", "none")


def _check_has_valid(name: str, xyz: torch.Tensor, mask: torch.Tensor | None) -> None:
    if xyz.shape[1] == 0:
        raise ValueError(f"{name} has no points (shape {tuple(xyz.shape)})")
    if mask is not None and xyz.shape[0]:
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            clouds = torch.nonzero(empty).flatten().tolist()
            raise ValueError(f"{name}_mask leaves no valid point in cloud(s) {clouds[:10]}; "
                             "every cloud needs at least one")


def nearest_sq_dist(x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None = None, *,
                    backend: str = "auto", chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N, 3), y (B, M, 3), y_mask (B, M) bool (True = valid) ->
    (B, N) squared distance from each x to its nearest valid y (differentiable), (B, N) int64 index into y.
    """
    check_points("x", x)
    check_points("y", y)
    check_same_batch("x", x, "y", y)
    check_mask("y_mask", y_mask, y)
    _check_has_valid("y", y, y_mask)
    return _nearest(x, y, y_mask, backend, chunk_elements)


def _nearest(x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None, backend: str,
             chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_sq_dist` without the input checks."""
    idx = nearest_indices(x, y, 1, y_mask, backend=backend, chunk_elements=chunk_elements)  # (B, N, 1)
    return sq_dist_to_indices(x, y, idx)[..., 0], idx[..., 0]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """values (B, N), mask (B, N) bool | None -> (B,) mean over the valid entries."""
    if mask is None:
        return values.mean(dim=1)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=1)
    return total / mask.sum(dim=1).to(values.dtype)


def _one_way(x: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None, norm: int,
             backend: str, chunk_elements: int) -> torch.Tensor:
    """(B, N) distance term of each x to its nearest valid y: squared (norm=2) or Euclidean (norm=1)."""
    dist2, idx = _nearest(x, y, y_mask, backend, chunk_elements)
    if norm == 2:
        return dist2
    nearest = torch.gather(y, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    return torch.linalg.vector_norm(x - nearest, dim=-1)  # gradient 0 (not NaN) where x == nearest


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, x_mask: torch.Tensor | None = None,
                     y_mask: torch.Tensor | None = None, norm: int = 2, reduction: str = "mean", *,
                     backend: str = "auto", chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """x (B, N, 3), y (B, M, 3), masks (B, N) / (B, M) bool (True = valid point) -> loss.

    norm=2: mean over valid x of min squared distance to y + mean over valid y of min squared distance to x
    (Point-MAE's ChamferDistanceL2). norm=1: (mean sqrt(d_xy) + mean sqrt(d_yx)) / 2 (ChamferDistanceL1).
    reduction="mean" averages the per-cloud values over the batch (a scalar), "none" returns them (B,).
    Masked points neither contribute nor are matched.
    """
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 or 2, got {norm!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_points("x", x)
    check_points("y", y)
    check_same_batch("x", x, "y", y)
    check_mask("x_mask", x_mask, x)
    check_mask("y_mask", y_mask, y)
    _check_has_valid("x", x, x_mask)
    _check_has_valid("y", y, y_mask)
    x_to_y = _masked_mean(_one_way(x, y, y_mask, norm, backend, chunk_elements), x_mask)
    y_to_x = _masked_mean(_one_way(y, x, x_mask, norm, backend, chunk_elements), y_mask)
    per_cloud = x_to_y + y_to_x if norm == 2 else (x_to_y + y_to_x) / 2
    return per_cloud.mean() if reduction == "mean" else per_cloud
