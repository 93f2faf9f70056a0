"""Farthest point sampling (FPS), exact; ``mode="pointnet2_ops"`` adds the quirks of pointnet2_ops'
``furthest_point_sample`` (near-origin points skipped, its tie order; see below).

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
  ``"torch"``. With ``mode="pointnet2_ops"`` float64 counts as float32 and clouds more than 1e5 across go to
  ``"torch"`` (fpsample cannot cap distances at 1e10).

Bit-for-bit agreement of the fpsample backends with the reference needs the same float32 operations: an
fpsample build that fuses ``d*d + acc`` into FMA instructions could pick differently on near-ties (the
tests compare them).

``mode="pointnet2_ops"`` (every backend; the default ``mode="exact"`` is the behaviour above) reproduces what
the real ``pointnet2_ops.furthest_point_sample`` (the one Point-MAE's README installs) does beyond plain FPS.
Read in erikwijmans/Pointnet2_PyTorch at commit b5ceb6d9, ``pointnet2_ops_lib/pointnet2_ops/_ext-src/``:

* ``src/sampling_gpu.cu`` lines 100-101 (``furthest_point_sampling_kernel``): ``mag = x*x + y*y + z*z;
  if (mag <= 1e-3) continue;``: a point within sqrt(1e-3) = 0.0316 of the ORIGIN is never picked (except index
  0, always the first pick, lines 85-86) and never has its distance updated. If every other point is skipped,
  the kernel picks index 0 again (``besti = 0``, line 90).
* lines 106-109, 59-65 and 115-168: each of T threads keeps the first maximum of the points k = tid (mod T)
  it visits (strict ``>``), then a tree reduction keeps the lower thread on equal values
  (``v2 > v1 ? i2 : i1``), halving T down to 1: on an exact tie the winner is NOT the lowest index but the point
  with the smallest (bit-reversed tid over log2(T) bits, k // T); T = ``opt_n_threads(n)`` =
  min(2^floor(log2 n), 512) (``include/cuda_utils.h`` lines 15-19), 512 for every n >= 512.
* ``src/sampling.cpp`` lines 74-76: the running distances start at 1e10, not infinity (``min(d, 1e10)``:
  distances over 1e10, i.e. points 1e5 apart, tie). Line 68 (``CHECK_IS_FLOAT``): float32 only, so this mode
  computes in float32 whatever the input dtype.

Where it matters: clouds normalised to the unit sphere around their centroid (ModelNet40, ShapeNet55,
ScanObjectNN in Point-MAE) with surface points within 0.0316 of the centroid, and clouds with exact distance
ties (duplicated points, lattices, more samples than distinct points). On the real samples at hand neither
happens and both modes pick the same points: ModelNet40 bathtub_0154 (1024 and 8192 surface points, 64 / 128 /
512 picks), the PCN airplane (796 points) and a KITTI sweep (115k points, 1024 / 4096 picks). nvcc contracts
``a*b + c`` into FMA by default (``--fmad=true``), so the CUDA kernel may round a distance differently from this
float32 transcription: two points whose distances differ in the last bit could swap. This mode matches a plain
transcription of the kernel (tests/test_fps_upstream.py) exactly.
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
MODES = ("exact", "pointnet2_ops")
# pointnet2_ops' furthest_point_sample (see the module docstring): near-origin points are skipped, distances
# start at 1e10, at most 512 threads per cloud
PN2_MIN_MAGNITUDE = 1e-3  # compared in double, as the kernel's ``mag <= 1e-3`` (float mag, double literal)
PN2_START_DISTANCE = 1e10
PN2_MAX_THREADS = 512
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


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def pointnet2_ops_threads(n: int) -> int:
    """Threads per cloud of pointnet2_ops' FPS kernel: ``opt_n_threads(n)`` (cuda_utils.h), same double math."""
    return max(min(1 << int(math.log(n) / math.log(2.0)), PN2_MAX_THREADS), 1)


def pointnet2_ops_order(n: int) -> np.ndarray:
    """(n,) int64 permutation: the points in the order in which pointnet2_ops' kernel prefers them on an exact
    tie (smallest (bit-reversed thread, k // threads) first, thread = k mod threads); starts with index 0."""
    threads = pointnet2_ops_threads(n)
    bits = threads.bit_length() - 1
    k = np.arange(n, dtype=np.int64)
    tid = k % threads
    reversed_tid = np.zeros(n, dtype=np.int64)
    for bit in range(bits):
        reversed_tid |= ((tid >> bit) & 1) << (bits - 1 - bit)
    return np.lexsort((k // threads, reversed_tid))


def pointnet2_ops_skipped(xyz: torch.Tensor) -> torch.Tensor:
    """(..., N, 3) float32 -> (..., N) bool: the points pointnet2_ops never picks (float32 ``x*x + y*y + z*z``,
    compared in double with 1e-3, as sampling_gpu.cu line 100-101)."""
    x, y, z = xyz.unbind(-1)
    magnitude = x * x + y * y
    magnitude += z * z
    return magnitude.double() <= PN2_MIN_MAGNITUDE


def farthest_point_sample_reference(xyz: torch.Tensor, num_samples: int, *, mode: str = "exact") -> torch.Tensor:
    """xyz: (B, N, 3) -> (B, num_samples) int64 indices; pure torch, any device. ``mode``: see the module."""
    check_points("xyz", xyz)
    _check_num_samples(xyz, num_samples)
    _check_mode(mode)
    upstream = mode == "pointnet2_ops"
    points = xyz.detach().to(torch.float32 if upstream else _distance_dtype(xyz))
    batch, n, _ = points.shape
    out = torch.zeros(batch, num_samples, dtype=torch.long, device=points.device)
    if num_samples == 0 or batch == 0:
        return out
    start = PN2_START_DISTANCE if upstream else math.inf
    if upstream:  # the loop's lowest-position rule on the kernel's tie order = the kernel's tie rule
        order = torch.from_numpy(pointnet2_ops_order(n)).to(points.device)
        points = points[:, order]
    x, y, z = (c.contiguous() for c in points.unbind(-1))  # (B, N) each
    min_dist = torch.full((batch, n), start, dtype=points.dtype, device=points.device)
    if upstream:
        min_dist[pointnet2_ops_skipped(points)] = -math.inf  # never picked, never updated
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
        farthest = torch.argmax(min_dist, dim=1)  # all -inf (every point skipped): 0, as the kernel
    return order[out] if upstream else out


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


def _pruned_fps(cloud: np.ndarray, num_samples: int, bucket_size: int = PRUNED_BUCKET_SIZE,
                start: float = np.inf) -> np.ndarray:
    """cloud: (N, 3) float32 or float64 -> (num_samples,) int64: the reference's picks, started at index 0.

    Points are grouped into buckets of ``bucket_size`` consecutive points along a Morton curve, each bucket
    in ascending index order, stored as (K, 3, S) with the bucket boxes. Per sample: the squared distance
    from the new pick to each box (a lower bound for its points); only buckets where that bound is below
    the bucket's largest current distance get their distances updated; then the next pick is the largest
    bucket maximum (the lowest index among equal ones). ``start``: the distances before the first pick.
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
    dist = np.full((k, bucket_size), start, dtype=cloud.dtype)  # min distance to the picks so far
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


def _sample_pointnet2_ops(cloud: np.ndarray, num_samples: int, sample_one) -> np.ndarray:
    """cloud: (N, 3) float32 -> pointnet2_ops' picks via ``sample_one`` (an exact lowest-index FPS) run on the
    points it can pick, index 0 first, in the kernel's tie order (see the module docstring)."""
    order = pointnet2_ops_order(cloud.shape[0])
    skipped = pointnet2_ops_skipped(torch.from_numpy(cloud)).numpy()
    keep = ~skipped[order]
    keep[0] = True  # index 0 is the first pick even when it is skipped
    idx = order[keep]
    picks = np.zeros(num_samples, dtype=np.int64)  # past idx.size picks every candidate is at distance 0: 0 again
    count = min(num_samples, idx.size)
    if count > 1:
        subset = np.ascontiguousarray(cloud[idx])
        if sample_one is _pruned_fps:
            picks[:count] = _pruned_fps(subset, count, start=PN2_START_DISTANCE)
        else:
            picks[:count] = sample_one(subset, count)
    if skipped[0]:  # the subset's 0 wins only once all candidates are at 0: the kernel then takes the first
        later = picks[1:]
        later[later == 0] = 1 if idx.size > 1 else 0
    return idx[picks]


def _exceeds_start_distance(xyz: torch.Tensor) -> bool:
    """Whether two points of a cloud may lie more than sqrt(1e10) apart (the fpsample kernels do not cap
    distances at 1e10 as pointnet2_ops does)."""
    span = (xyz.amax(dim=1) - xyz.amin(dim=1)).double()
    return bool(((span * span).sum(-1) >= PN2_START_DISTANCE * (1 - 1e-6)).any())


def _fps_numpy(xyz: torch.Tensor, num_samples: int, sample_one, mode: str = "exact") -> torch.Tensor:
    upstream = mode == "pointnet2_ops"
    keep64 = xyz.dtype == torch.float64 and sample_one is _pruned_fps and not upstream
    clouds = xyz.detach().to(torch.float64 if keep64 else torch.float32).contiguous().numpy()
    if upstream:
        picks = [_sample_pointnet2_ops(np.ascontiguousarray(c), num_samples, sample_one) for c in clouds]
    else:
        picks = [sample_one(np.ascontiguousarray(cloud), num_samples) for cloud in clouds]
    return torch.from_numpy(np.stack(picks)).to(torch.long)


def auto_backend(xyz: torch.Tensor, mode: str = "exact") -> str:
    """The backend ``backend="auto"`` runs for these points: "fpsample", "pruned" or "torch"."""
    batch, n, _ = xyz.shape
    if xyz.device.type != "cpu":
        return "torch"
    if n >= AUTO_PRUNED_MIN_POINTS:
        return "pruned"
    if (xyz.dtype == torch.float64 and mode == "exact") or batch * n > AUTO_FPSAMPLE_MAX_POINTS:
        return "torch"
    if mode == "pointnet2_ops" and _exceeds_start_distance(xyz):
        return "torch"
    if fpsample is None:
        warn_once("fpsample", "fpsample is not installed: farthest_point_sample uses the slower torch "
                              "loop on CPU (pip install fpsample)")
        return "torch"
    return "fpsample"


def farthest_point_sample(xyz: torch.Tensor, num_samples: int, *, backend: str = "auto",
                          mode: str = "exact") -> torch.Tensor:
    """xyz: (B, N, 3) -> (B, num_samples) int64 indices of the farthest point sample started at index 0.

    ``mode="exact"``: plain FPS (ties: lowest index). ``mode="pointnet2_ops"``: what pointnet2_ops'
    ``furthest_point_sample`` picks (near-origin points skipped, its tie order, float32; module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_mode(mode)
    check_points("xyz", xyz)
    _check_num_samples(xyz, num_samples)
    batch = xyz.shape[0]
    if num_samples == 0 or batch == 0:
        return torch.zeros(batch, num_samples, dtype=torch.long, device=xyz.device)
    if backend == "auto":
        backend = auto_backend(xyz, mode)
    if backend == "torch":
        return farthest_point_sample_reference(xyz, num_samples, mode=mode)
    if backend == "pruned":
        if xyz.device.type != "cpu":
            raise ValueError(f"backend='pruned' runs on CPU tensors only, got a tensor on {xyz.device}")
        return _fps_numpy(xyz, num_samples, _pruned_fps, mode)
    if fpsample is None:
        raise ImportError(f"backend={backend!r} needs the fpsample package: pip install fpsample")
    if xyz.device.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on CPU tensors only, got a tensor on {xyz.device}")
    if xyz.dtype == torch.float64 and mode == "exact":
        raise ValueError(f"backend={backend!r} computes in float32; use backend='torch' for float64 points")
    if mode == "pointnet2_ops" and _exceeds_start_distance(xyz):
        raise ValueError(f"backend={backend!r} cannot cap distances at 1e10 as pointnet2_ops does (points over "
                         "1e5 apart); use backend='torch' or 'pruned'")
    sample_one = _fpsample_exact if backend == "fpsample" else _fpsample_bucket
    return _fps_numpy(xyz, num_samples, sample_one, mode)
