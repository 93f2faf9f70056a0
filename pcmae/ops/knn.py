"""Exact k-nearest-neighbour search: ``knn(query, points, k) -> (dist2, idx)``.

Neighbours come sorted by squared distance, equal distances by index. Distances are computed as
``(dx*dx + dy*dy) + dz*dz`` from the returned indices with torch ops, so they are the same on every backend
and differentiable with respect to ``query`` and ``points``. Only which of several points at exactly the
k-th distance is kept may differ between backends.

Backends (``backend=``): ``"torch"`` (:func:`knn_reference`: squared distances of a chunk of queries to all
points, then ``topk``; memory bounded by ``chunk_elements``; any device), ``"kdtree"`` (pykdtree, CPU, one
cloud at a time) and ``"auto"`` (kdtree on CPU unless the clouds are tiny, torch otherwise).
"""
from __future__ import annotations

import numpy as np
import torch

from pcmae.ops._checks import check_mask, check_points, check_same_batch, warn_once

try:
    from pykdtree.kdtree import KDTree
except ImportError:  # optional: CPU speed only
    KDTree = None

BACKENDS = ("auto", "torch", "kdtree")
# largest (batch x queries x points) block of squared distances the torch search materialises at once
DEFAULT_CHUNK_ELEMENTS = 1 << 22
# below this many query-point pairs per cloud the batched torch search beats building one kd-tree per cloud
AUTO_KDTREE_MIN_PAIRS = 1 << 13


def _search_dtype(xyz: torch.Tensor) -> torch.dtype:
    return torch.float64 if xyz.dtype == torch.float64 else torch.float32


def sq_dist_to_indices(query: torch.Tensor, points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """query (B, M, 3), points (B, N, 3), idx (B, M, k) -> (B, M, k) squared distances, differentiable."""
    batch, m, k = idx.shape
    neighbours = torch.gather(points, 1, idx.reshape(batch, m * k, 1).expand(-1, -1, 3)).view(batch, m, k, 3)
    diff = query.unsqueeze(2) - neighbours
    dx, dy, dz = diff.unbind(-1)
    return dx * dx + dy * dy + dz * dz


def _pairwise_sq_dist(query: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """query (B, c, 3), points (B, N, 3) -> (B, c, N) squared distances, exact per coordinate (no matmul)."""
    q = query.unsqueeze(2)
    p = points.unsqueeze(1)
    dist = (q[..., 0] - p[..., 0]).square_()
    dist += (q[..., 1] - p[..., 1]).square_()
    dist += (q[..., 2] - p[..., 2]).square_()
    return dist


def _search_torch(query: torch.Tensor, points: torch.Tensor, k: int, points_mask: torch.Tensor | None,
                  chunk_elements: int) -> torch.Tensor:
    """(B, M, k) indices of the k nearest valid points, chunked over queries so that no block of squared
    distances exceeds about ``chunk_elements`` (or one row of the batch when that is larger)."""
    batch, m, _ = query.shape
    n = points.shape[1]
    dtype = _search_dtype(query)
    query, points = query.detach().to(dtype), points.detach().to(dtype)
    chunk = max(1, chunk_elements // max(1, batch * n))
    out = torch.empty(batch, m, k, dtype=torch.long, device=query.device)
    for start in range(0, m, chunk):
        dist = _pairwise_sq_dist(query[:, start:start + chunk], points)
        if points_mask is not None:
            dist.masked_fill_(~points_mask.unsqueeze(1), float("inf"))
        if k == 1:
            out[:, start:start + chunk, 0] = dist.argmin(dim=2)
        else:
            out[:, start:start + chunk] = dist.topk(k, dim=2, largest=False, sorted=True).indices
        del dist
    return out


def _search_kdtree(query: torch.Tensor, points: torch.Tensor, k: int,
                   points_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, M, k) indices of the k nearest valid points, with one pykdtree per cloud (CPU)."""
    dtype = _search_dtype(query)
    queries = query.detach().to(dtype).contiguous().numpy()
    clouds = points.detach().to(dtype).contiguous().numpy()
    masks = None if points_mask is None else (~points_mask).contiguous().numpy()
    out = np.empty(queries.shape[:2] + (k,), dtype=np.int64)
    for b in range(queries.shape[0]):
        tree = KDTree(clouds[b])
        mask = None if masks is None else masks[b]
        _, idx = tree.query(queries[b], k=k, sqr_dists=True, mask=mask)
        out[b] = idx.reshape(-1, k)
    return torch.from_numpy(out)


def _sorted_by_distance(dist2: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row of (B, M, k) by distance, equal distances by index."""
    idx, order = idx.sort(dim=-1)
    dist2 = dist2.gather(-1, order)
    order = dist2.detach().sort(dim=-1, stable=True).indices
    return dist2.gather(-1, order), idx.gather(-1, order)


def _check_knn_inputs(query: torch.Tensor, points: torch.Tensor, k: int,
                      points_mask: torch.Tensor | None = None) -> None:
    check_points("query", query)
    check_points("points", points)
    check_same_batch("query", query, "points", points)
    check_mask("points_mask", points_mask, points)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > points.shape[1]:
        raise ValueError(f"k ({k}) is larger than the number of points ({points.shape[1]})")
    if points_mask is not None and points.shape[0] and query.shape[1]:
        valid = points_mask.sum(dim=1)
        if bool((valid < k).any()):
            b = int(torch.nonzero(valid < k)[0, 0])
            raise ValueError(f"cloud {b} has {int(valid[b])} valid points (points_mask), fewer than k={k}")


def knn_reference(query: torch.Tensor, points: torch.Tensor, k: int, *,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """query (B, M, 3), points (B, N, 3) -> dist2 (B, M, k), idx (B, M, k) int64; chunked torch, any device."""
    _check_knn_inputs(query, points, k)
    idx = _search_torch(query, points, k, None, chunk_elements)
    return _sorted_by_distance(sq_dist_to_indices(query, points, idx), idx)


def nearest_indices(query: torch.Tensor, points: torch.Tensor, k: int, points_mask: torch.Tensor | None = None,
                    *, backend: str = "auto", chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """(B, M, k) int64 indices of the k nearest points of each query, no gradient, unordered within a row.

    points_mask: (B, N) bool, True = may be returned. Inputs are assumed checked (see :func:`knn`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    batch, m, _ = query.shape
    if batch == 0 or m == 0:
        return torch.zeros(batch, m, k, dtype=torch.long, device=query.device)
    if backend == "auto":
        on_cpu = query.device.type == "cpu"
        if not on_cpu or m * points.shape[1] < AUTO_KDTREE_MIN_PAIRS:
            backend = "torch"
        elif KDTree is None:
            warn_once("pykdtree", "pykdtree is not installed: knn and chamfer use the slower chunked torch "
                                  "search on CPU (pip install pykdtree)")
            backend = "torch"
        else:
            backend = "kdtree"
    if backend == "torch":
        return _search_torch(query, points, k, points_mask, chunk_elements)
    if KDTree is None:
        raise ImportError("backend='kdtree' needs the pykdtree package: pip install pykdtree")
    if query.device.type != "cpu":
        raise ValueError(f"backend='kdtree' runs on CPU tensors only, got a tensor on {query.device}")
    return _search_kdtree(query, points, k, points_mask)


def knn(query: torch.Tensor, points: torch.Tensor, k: int, *,
        backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """query (B, M, 3), points (B, N, 3) -> dist2 (B, M, k) squared distances, idx (B, M, k) int64 into points.

    Exact k nearest neighbours, ascending by distance (equal distances by index).
    """
    _check_knn_inputs(query, points, k)
    idx = nearest_indices(query, points, k, backend=backend)
    return _sorted_by_distance(sq_dist_to_indices(query, points, idx), idx)
