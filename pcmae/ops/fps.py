"""Farthest point sampling (FPS), exact, with the semantics of pointnet2_ops' ``furthest_point_sample``.

The first pick is index 0; each next pick is the point whose minimum squared distance to the points already
picked is largest; on an exact tie the lowest index wins (``torch.argmax``). Distances are computed in
float32 as ``(dx*dx + dy*dy) + dz*dz`` (float64 inputs stay float64). Once every distinct position has been
picked all distances are 0 and index 0 is repeated (``torch.argmax`` of zeros).

Backends (``backend=``):

* ``"torch"``: :func:`farthest_point_sample_reference`, a loop over samples vectorised over the batch; the
  path for CUDA tensors and for big batches of small clouds.
* ``"fpsample"``: fpsample's vanilla C++ FPS, one cloud at a time, on the cloud in reversed order: fpsample
  breaks ties towards the highest index, so reversing the cloud makes it pick exactly what the reference
  picks, ties and duplicate points included. Faster than the torch loop for one cloud or a small batch
  (measured on 2 cores: 1 x 8192 -> 1024 in 26 ms vs 56 ms), slower for big batches. float32 only.
* ``"pruned"``: :func:`_pruned_fps`, exact FPS over spatial buckets of points (numpy, one cloud at a time):
  a new pick only updates the buckets whose bounding box lies closer to it than their current largest
  distance, and the next pick is read from the per-bucket maxima (ties: lowest index). Same picks as the
  reference, ties and duplicates included, float32 or float64; on large clouds it touches ~2 % of the
  points per sample (100k -> 4096: ~0.5 s against ~1.5 s for fpsample's exact kernel and 1-40 s for the
  torch loop on 2 shared cores).
* ``"bucket"``: fpsample's kd-tree "QuickFPS" (``bucket_fps_kdline``), the fastest. It
  picks the same points as the reference except where two points tie exactly (in float32) for the largest
  distance: there it may take the other one (on random 100k-point clouds this happens in about one cloud
  in four). Never chosen by ``"auto"``.
* ``"auto"`` (default), on CPU: ``"fpsample"`` for float32 batches of at most ``AUTO_FPSAMPLE_MAX_POINTS``
  points in all (B * N), ``"pruned"`` for clouds of at least ``AUTO_PRUNED_MIN_POINTS`` points, ``"torch"``
  otherwise (big batches of small clouds: the loop runs over samples, vectorised over the batch); CUDA:
  ``"torch"``.

Bit-for-bit agreement of the fpsample backends with the reference needs the same float32 operations: an
fpsample build that fuses ``d*d + acc`` into FMA instructions could pick differently on near-ties (the
tests compare them). pointnet2_ops' CUDA kernel also skips points with ``x*x + y*y + z*z <= 1e-3``; that quirk is not copied.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pcmae.ops._checks import check_points, warn_once

try:
    import fpsample
except ImportError:  # optional: CPU speed only
    fpsample = None

BACKENDS = ("auto", "torch", "fpsample", "pruned", "bucket")
# fpsample (one cloud at a time, one core, ~3.4 ns per point and sample) beats the batched torch loop (~60 us
# per sample plus ~2 ns per point of the batch on 2 cores) when the batch has fewer points than about this
AUTO_FPSAMPLE_MAX_POINTS = 1 << 16
# per cloud, from here on the pruned exact FPS beats both (its per-sample cost is ~30 numpy calls, not O(N))
AUTO_PRUNED_MIN_POINTS = 1 << 14
PRUNED_BUCKET_SIZE = 128  # points per bucket (64-256 within 10 % of each other on a 115k KITTI sweep -> 4096)
_BOX_SHRINK = 1 - 1e-5  # box lower bounds shrunk by far more than the float rounding of a squared distance


def _check_num_samples(xyz: torch.Tensor, num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise ValueError(f"num_samples must be an int, got {type(num_samples).__name__}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_samples > xyz.shape[1]:
        raise ValueError(f"num_samples ({num_samples}) is larger than the number of points ({xyz.shape[1]})")


def _distance_dtype(xyz: torch.Tensor) -> torch.dtype:
    return torch.float64 if xyz.dtype == torch.float64 else torch.float32


def farthest_point_sample_reference(xyz: torch.Tensor, num_samples: int) -> torch.Tensor:
    """xyz: (B, N, 3) -> (B, num_samples) int64 indices; pure torch, any device."""
    check_points("xyz", xyz)
    _check_num_samples(xyz, num_samples)
    points = xyz.detach().to(_distance_dtype(xyz))
    batch, n, _ = points.shape
    out = torch.zeros(batch, num_samples, dtype=torch.long, device=points.device)
    if num_samples == 0 or batch == 0:
        return out
    x, y, z = (c.contiguous() for c in points.unbind(-1))  # (B, N) each
    min_dist = torch.full((batch, n), math.inf, dtype=points.dtype, device=points.device)
    rows = torch.arange(batch, device=points.device)
    farthest = torch.zeros(batch, dtype=torch.long, device=points.device)
    for i in range(num_samples):
        out[:, i] = farthest
        picked = points[rows, farthest]  # (B, 3)
        dx = x - picked[:, 0:1]
        dy = y - picked[:, 1:2]
        dz = z - picked[:, 2:3]
        dist = dx * dx + dy * dy
        dist += dz * dz
        torch.minimum(min_dist, dist, out=min_dist)
        farthest = torch.argmax(min_dist, dim=1)
    return out


def _fpsample_exact(cloud: np.ndarray, num_samples: int) -> np.ndarray:
    """cloud: (N, 3) float32 -> reference picks, via fpsample's vanilla FPS on the reversed cloud."""
    n = cloud.shape[0]
    reversed_cloud = np.ascontiguousarray(cloud[::-1])
    picks = fpsample._fps_sampling(reversed_cloud, num_samples, n - 1)
    return (n - 1) - picks.astype(np.int64)


def _bucket_height(n: int) -> int:
    """kd-line tree height for fpsample's bucket FPS (fastest measured: 3-5 at 1k points, 5-6 at 8k, 8 at 100k)."""
    log_n = math.log2(max(n, 2))
    return int(min(max(round(log_n / 2), 1), math.floor(log_n)))


def _tree_slot_of_first_point(cloud: np.ndarray, height: int) -> int:
    """Where point 0 lands in fpsample's kd-tree point array.

    fpsample's bucket functions reorder the points while building their tree and then read ``start_idx``
    from the reordered array. Replaying the build along the branch that holds point 0 (split on the widest
    box side at the float32 mean, Hoare partition) gives the slot to pass so that sampling starts at 0.
    """
    columns = np.ascontiguousarray(cloud.T)  # (3, n)
    ids = np.arange(cloud.shape[0])
    pos0, left, depth = 0, 0, 0
    while ids.shape[0] > 1 and depth < height:
        n = ids.shape[0]
        span = columns.max(axis=1) - columns.min(axis=1)
        dim, best = 0, np.float32(0)
        for d in range(3):  # first strictly widest side, as fpsample does
            if span[d] > best:
                dim, best = d, span[d]
        values = columns[dim]
        split = np.add.accumulate(values, dtype=np.float32)[-1] / np.float32(n)  # sequential float32 sum
        low = values < split
        n_low = int(np.count_nonzero(low))
        if n_low == 0:
            cut = 1
        elif n_low == n:
            cut = n - 1
        else:
            cut = n_low
            high_in_front = np.flatnonzero(~low[:n_low])
            low_at_back = np.flatnonzero(low[n_low:])[::-1] + n_low
            perm = np.arange(n)
            perm[high_in_front] = low_at_back
            perm[low_at_back] = high_in_front
            ids, columns = ids[perm], columns[:, perm]
            pos0 = int(perm[pos0])
        if pos0 < cut:
            ids, columns = ids[:cut], columns[:, :cut]
        else:
            ids, columns = ids[cut:], columns[:, cut:]
            left, pos0 = left + cut, pos0 - cut
        depth += 1
    return left + pos0


def _fpsample_bucket(cloud: np.ndarray, num_samples: int) -> np.ndarray:
    """cloud: (N, 3) float32 -> FPS picks started at 0 via fpsample's bucket kd-line FPS."""
    if cloud.shape[0] < 4:
        return _fpsample_exact(cloud, num_samples)
    height = _bucket_height(cloud.shape[0])
    slot = _tree_slot_of_first_point(cloud, height)
    picks = fpsample._bucket_fps_kdline_sampling(cloud, num_samples, height, slot).astype(np.int64)
    if picks[0] != 0:
        raise RuntimeError(
            f"fpsample {getattr(fpsample, '__version__', '?')} built its kd-tree differently than expected "
            "(the sample did not start at index 0); use backend='fpsample' or 'torch'")
    return picks


def _spatial_order(cloud: np.ndarray) -> np.ndarray:
    """(N,) permutation of an (N, 3) cloud along a Morton (z-order) curve of a 1024^3 grid over its box."""
    low = cloud.min(axis=0).astype(np.float64)
    span = np.maximum(cloud.max(axis=0) - low, 1e-30)
    cell = np.clip(((cloud - low) / span * 1023).astype(np.int64), 0, 1023)
    code = np.zeros(cloud.shape[0], dtype=np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cell[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def _pruned_fps(cloud: np.ndarray, num_samples: int, bucket_size: int = PRUNED_BUCKET_SIZE) -> np.ndarray:
    """cloud: (N, 3) float32 or float64 -> (num_samples,) int64: the reference's picks, started at index 0.

    Points are grouped into buckets of ``bucket_size`` consecutive points along a Morton curve, each bucket
    in ascending index order, stored as (K, 3, S) with the bucket boxes. Per sample: the squared distance
    from the new pick to each box (a lower bound for its points); only buckets where that bound is below
    the bucket's largest current distance get their distances updated; then the next pick is the largest
    bucket maximum (the lowest index among equal ones).
    """
    n = cloud.shape[0]
    out = np.zeros(num_samples, dtype=np.int64)
    if num_samples == 0:
        return out
    order = _spatial_order(cloud)
    k = -(-n // bucket_size)
    order = order[np.lexsort((order, np.arange(n) // bucket_size))]  # ascending index inside each bucket
    pad = k * bucket_size - n
    ids = np.concatenate([order, np.full(pad, order[-1])]).reshape(k, bucket_size)  # (K, S) point index
    buckets = np.ascontiguousarray(cloud[ids].transpose(0, 2, 1))  # (K, 3, S)
    dist = np.full((k, bucket_size), np.inf, dtype=cloud.dtype)  # min distance to the picks so far
    if pad:
        dist[-1, bucket_size - pad:] = -np.inf  # padding repeats a point; it can never be picked
    low, high = buckets.min(axis=2).astype(np.float64), buckets.max(axis=2).astype(np.float64)  # (K, 3)
    center, half = np.ascontiguousarray(((low + high) / 2).T), np.ascontiguousarray(((high - low) / 2).T)
    best = np.full(k, np.inf)  # largest distance in each bucket (float64 copies of exact values)
    best_id = ids[:, 0].copy()  # its point index (lowest among equal)
    rows = np.arange(k)
    gap = np.empty((3, k))
    pick = 0
    for i in range(num_samples):
        out[i] = pick
        point = cloud[pick]
        np.subtract(center, point.astype(np.float64)[:, None], out=gap)
        np.abs(gap, out=gap)
        gap -= half
        np.maximum(gap, 0.0, out=gap)
        gap *= gap
        bound = gap[0] + gap[1]
        bound += gap[2]
        bound *= _BOX_SHRINK
        near = np.flatnonzero(bound < best)
        if near.size:
            diff = buckets[near] - point[None, :, None]  # (k, 3, S) in the cloud's dtype
            diff *= diff
            d = diff[:, 0]
            d += diff[:, 1]
            d += diff[:, 2]  # (dx*dx + dy*dy) + dz*dz, as the reference
            d = np.minimum(dist[near], d, out=d)
            dist[near] = d
            arg = d.argmax(axis=1)  # first maximum: the lowest index of the bucket
            best[near] = d[rows[:near.size], arg]
            best_id[near] = ids[near, arg]
        top = np.flatnonzero(best == best.max())
        pick = int(best_id[top].min()) if top.size > 1 else int(best_id[top[0]])
    return out


def _fps_numpy(xyz: torch.Tensor, num_samples: int, sample_one) -> torch.Tensor:
    dtype = torch.float64 if (xyz.dtype == torch.float64 and sample_one is _pruned_fps) else torch.float32
    clouds = xyz.detach().to(dtype).contiguous().numpy()
    picks = [sample_one(np.ascontiguousarray(cloud), num_samples) for cloud in clouds]
    return torch.from_numpy(np.stack(picks)).to(torch.long)


def auto_backend(xyz: torch.Tensor) -> str:
    """The backend ``backend="auto"`` runs for these points: "fpsample", "pruned" or "torch"."""
    batch, n, _ = xyz.shape
    if xyz.device.type != "cpu":
        return "torch"
    if n >= AUTO_PRUNED_MIN_POINTS:
        return "pruned"
    if xyz.dtype == torch.float64 or batch * n > AUTO_FPSAMPLE_MAX_POINTS:
        return "torch"
    if fpsample is None:
        warn_once("fpsample", "fpsample is not installed: farthest_point_sample uses the slower torch "
                              "loop on CPU (pip install fpsample)")
        return "torch"
    return "fpsample"


def farthest_point_sample(xyz: torch.Tensor, num_samples: int, *, backend: str = "auto") -> torch.Tensor:
    """xyz: (B, N, 3) -> (B, num_samples) int64 indices of the farthest point sample started at index 0."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_points("xyz", xyz)
    _check_num_samples(xyz, num_samples)
    batch = xyz.shape[0]
    if num_samples == 0 or batch == 0:
        return torch.zeros(batch, num_samples, dtype=torch.long, device=xyz.device)
    if backend == "auto":
        backend = auto_backend(xyz)
    if backend == "torch":
        return farthest_point_sample_reference(xyz, num_samples)
    if backend == "pruned":
        if xyz.device.type != "cpu":
            raise ValueError(f"backend='pruned' runs on CPU tensors only, got a tensor on {xyz.device}")
        return _fps_numpy(xyz, num_samples, _pruned_fps)
    if fpsample is None:
        raise ImportError(f"backend={backend!r} needs the fpsample package: pip install fpsample")
    if xyz.device.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on CPU tensors only, got a tensor on {xyz.device}")
    if xyz.dtype == torch.float64:
        raise ValueError(f"backend={backend!r} computes in float32; use backend='torch' for float64 points")
    sample_one = _fpsample_exact if backend == "fpsample" else _fpsample_bucket
    return _fps_numpy(xyz, num_samples, sample_one)
