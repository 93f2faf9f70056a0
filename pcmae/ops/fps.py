"""Farthest point sampling (FPS), exact, with the semantics of pointnet2_ops' ``furthest_point_sample``.

The first pick is index 0; each next pick is the point whose minimum squared distance to the points already
picked is largest; on an exact tie the lowest index wins (``torch.argmax``). Distances are computed in
float32 as ``(dx*dx + dy*dy) + dz*dz`` (float64 inputs stay float64). Once every distinct position has been
picked all distances are 0 and index 0 is repeated (``torch.argmax`` of zeros).

Backends (``backend=``):

* ``"torch"``: :func:`farthest_point_sample_reference`, a loop over samples vectorised over the batch; the
  path for CUDA tensors and float64.
* ``"fpsample"``: fpsample's vanilla C++ FPS, one cloud at a time, on the cloud in reversed order: fpsample
  breaks ties towards the highest index, so reversing the cloud makes it pick exactly what the reference
  picks, ties and duplicate points included. Faster than the torch loop for one cloud or a small batch
  (measured on 2 cores: 1 x 8192 -> 1024 in 26 ms vs 56 ms), slower for big batches.
* ``"bucket"``: fpsample's kd-tree "QuickFPS" (``bucket_fps_kdline``), 10-30x faster on large clouds. It
  picks the same points as the reference except where two points tie exactly (in float32) for the largest
  distance: there it may take the other one (on random 100k-point clouds this happens in about one cloud
  in four). Never chosen by ``"auto"``.
* ``"auto"`` (default): ``"fpsample"`` for float32 CPU batches of at most ``AUTO_FPSAMPLE_MAX_POINTS`` points
  in all (B * N); ``"torch"`` otherwise (CUDA, float64, big clouds or batches; the torch loop uses every core).

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

BACKENDS = ("auto", "torch", "fpsample", "bucket")
# fpsample (one cloud at a time, one core, ~3.4 ns per point and sample) beats the batched torch loop (~60 us
# per sample plus ~2 ns per point of the batch on 2 cores) when the batch has fewer points than about this
AUTO_FPSAMPLE_MAX_POINTS = 1 << 16


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


def _fps_numpy(xyz: torch.Tensor, num_samples: int, sample_one) -> torch.Tensor:
    clouds = xyz.detach().to(torch.float32).contiguous().numpy()
    picks = [sample_one(np.ascontiguousarray(cloud), num_samples) for cloud in clouds]
    return torch.from_numpy(np.stack(picks)).to(torch.long)


def auto_backend(xyz: torch.Tensor) -> str:
    """The backend ``backend="auto"`` runs for these points: "fpsample" or "torch"."""
    batch, n, _ = xyz.shape
    on_cpu_float32 = xyz.device.type == "cpu" and xyz.dtype != torch.float64
    if not on_cpu_float32 or batch * n > AUTO_FPSAMPLE_MAX_POINTS:
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
    if fpsample is None:
        raise ImportError(f"backend={backend!r} needs the fpsample package: pip install fpsample")
    if xyz.device.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on CPU tensors only, got a tensor on {xyz.device}")
    if xyz.dtype == torch.float64:
        raise ValueError(f"backend={backend!r} computes in float32; use backend='torch' for float64 points")
    sample_one = _fpsample_exact if backend == "fpsample" else _fpsample_bucket
    return _fps_numpy(xyz, num_samples, sample_one)
