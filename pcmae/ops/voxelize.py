"""Voxelization: points -> non-empty voxels, in one sort of an integer key (no Python loop over points).

A point p is kept when ``min <= p < max`` on every axis (evaluated in float64 on the exact values: a point
at x == x_min is inside, one at x == x_max is outside) and its cell ``floor((p - min) / voxel_size)`` lies
in the grid ``round((max - min) / voxel_size)`` (mmdet3d's rule; a range that is not a multiple of the voxel
size loses the partial last cell, as with mmcv's hard voxelization). Voxels come out sorted by
(batch, z, y, x); with ``max_points_per_voxel`` a voxel keeps its first points in input order, as spconv's
``PointToVoxel`` and mmcv's hard voxelization do. The same code runs on CPU and CUDA.

:func:`voxelize` first keeps the points inside the grid with two comparisons per axis in the points' own
dtype (the exact float bounds of "inside" are found once per geometry, see :func:`_inside_bounds`), then
computes float64 cells and sorts keys of those points only (int32 keys when the grid allows: fewer radix
passes). :func:`voxelize_torch_reference` is the plain one-sort version over every point, and
:func:`voxelize_reference` a Python dict; the tests hold all three equal.
"""
from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@dataclass
class Voxels:
    """Result of :func:`voxelize`.

    coords:         (V, 4) int32 (batch, z, y, x), ascending in that order.
    point_to_voxel: (N,) int64 voxel of each input point; -1 = outside the range/grid or over the cap.
    counts:         (V,) int32 points kept in each voxel (<= max_points_per_voxel).
    grid_size:      (X, Y, Z) voxels along each axis.
    batch_size:     B.
    """

    coords: torch.Tensor
    point_to_voxel: torch.Tensor
    counts: torch.Tensor
    grid_size: tuple[int, int, int]
    batch_size: int

    @property
    def num_voxels(self) -> int:
        return self.coords.shape[0]


def _as_floats(value, length: int, name: str) -> list[float]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    try:
        floats = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of {length} numbers, got {value!r}") from None
    if len(floats) != length:
        raise ValueError(f"{name} must have {length} values, got {len(floats)}: {value!r}")
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return floats


def _geometry(voxel_size, point_cloud_range) -> tuple[list[float], list[float], tuple[int, int, int]]:
    """Validated (voxel_size, point_cloud_range) as floats, and the grid (X, Y, Z)."""
    vs = _as_floats(voxel_size, 3, "voxel_size")
    rng = _as_floats(point_cloud_range, 6, "point_cloud_range")
    if min(vs) <= 0:
        raise ValueError(f"voxel_size must be > 0 on every axis, got {vs}")
    for axis, name in enumerate("xyz"):
        if rng[axis] >= rng[axis + 3]:
            raise ValueError(f"point_cloud_range needs {name}_min < {name}_max, got {rng} "
                             "(order: x_min, y_min, z_min, x_max, y_max, z_max)")
    grid = tuple(int(round((rng[a + 3] - rng[a]) / vs[a])) for a in range(3))
    if min(grid) < 1:
        raise ValueError(f"voxel_size {vs} is larger than point_cloud_range {rng}: empty grid")
    if max(grid) > INT32_MAX:
        raise ValueError(f"grid {grid} does not fit int32 voxel coordinates; use a larger voxel_size")
    return vs, rng, grid


def grid_size_of(voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> tuple[int, int, int]:
    """(X, Y, Z) voxels of the grid, ``round((max - min) / voxel_size)``; validates both arguments."""
    return _geometry(voxel_size, point_cloud_range)[2]


def _check_inputs(points: torch.Tensor, batch_idx: torch.Tensor, max_points_per_voxel,
                  batch_size) -> tuple[int, int | None]:
    """Validates the tensors; -> (batch size, the one sample id when all points share it, else None)."""
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be a (N, C>=3) tensor, got {getattr(points, 'shape', type(points))}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    if not isinstance(batch_idx, torch.Tensor) or batch_idx.shape != points.shape[:1]:
        raise ValueError(f"batch_idx must be a ({points.shape[0]},) tensor, got {getattr(batch_idx, 'shape', None)}")
    if batch_idx.is_floating_point() or batch_idx.dtype == torch.bool:
        raise ValueError(f"batch_idx must be an integer tensor, got {batch_idx.dtype}")
    if batch_idx.device != points.device:
        raise ValueError(f"batch_idx is on {batch_idx.device} but points are on {points.device}")
    if points.numel() and not all(math.isfinite(v) for v in torch.aminmax(points)):  # one pass; NaN propagates
        bad = (~torch.isfinite(points)).any(dim=1).nonzero()[:, 0]
        raise ValueError(f"points contain NaN or inf in {len(bad)} of {len(points)} rows "
                         f"(first row {int(bad[0])})")
    if max_points_per_voxel is not None and (isinstance(max_points_per_voxel, bool)
                                             or not isinstance(max_points_per_voxel, int)
                                             or max_points_per_voxel < 1):
        raise ValueError(f"max_points_per_voxel must be None or an int >= 1, got {max_points_per_voxel!r}")
    lowest, highest = (int(v) for v in torch.aminmax(batch_idx)) if len(batch_idx) else (0, -1)
    needed = highest + 1
    if lowest < 0:
        raise ValueError(f"batch_idx must be >= 0, got {lowest}")
    only_sample = lowest if lowest == highest else None  # every point in one sample: no per-point batch ids
    if batch_size is None:
        return needed, only_sample
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < needed:
        raise ValueError(f"batch_size must be an int >= max(batch_idx) + 1 = {needed}, got {batch_size!r}")
    return batch_size, only_sample


def voxelize(points: torch.Tensor, batch_idx: torch.Tensor, voxel_size: Sequence[float],
             point_cloud_range: Sequence[float], max_points_per_voxel: int | None = None,
             batch_size: int | None = None) -> Voxels:
    """Group points into non-empty voxels.

    points: (N, C) float, x, y, z first; batch_idx: (N,) int sample of each point (any order);
    voxel_size: (vx, vy, vz) metres; point_cloud_range: (x_min, y_min, z_min, x_max, y_max, z_max);
    max_points_per_voxel: keep at most this many points per voxel (the first ones in input order);
    batch_size: B (default max(batch_idx) + 1; samples without points simply have no voxel).
    """
    voxel_size, point_cloud_range, grid = _geometry(voxel_size, point_cloud_range)
    batch_size, only_sample = _check_inputs(points, batch_idx, max_points_per_voxel, batch_size)
    gx, gy, gz = grid
    if batch_size * gx * gy * gz > INT64_MAX:
        raise ValueError(f"batch_size {batch_size} x grid {grid} overflows the int64 voxel key")
    device = points.device
    xyz = points[:, :3] if points.dtype in (torch.float32, torch.float64) else points[:, :3].float()  # exact
    inside = None
    for axis in range(3):  # column by column: no (N, 3) temporaries, no reduction over a size-3 dim
        low, high = _inside_bounds(point_cloud_range[axis], point_cloud_range[axis + 3], voxel_size[axis],
                                   grid[axis], xyz.dtype)
        column = xyz[:, axis]
        inside = column >= low if inside is None else inside.logical_and_(column >= low)
        inside.logical_and_(column < high)
    kept = torch.nonzero(inside).squeeze(1)  # (M,) rows inside the grid, ascending
    # key = ((batch * Z + z) * Y + y) * X + x, int32 when the grid allows (a radix sort of half the passes)
    key_dtype = torch.int32 if batch_size * gx * gy * gz <= INT32_MAX else torch.int64
    kept_xyz = (points if xyz.dtype == points.dtype else xyz).index_select(0, kept)  # (M, >=3): whole rows, fast
    # (M,) float64 columns with scalar operands (vectorised, no (M, 3) broadcasting); the key is built in float64,
    # exact below 2**53, and converted once
    exact_in_float64 = batch_size * gx * gy * gz < 2**53
    key = _cells(kept_xyz[:, 2], point_cloud_range[2], voxel_size[2])  # cells lie in [0, grid): by the bounds
    if not exact_in_float64:
        key = key.long()
    for axis in (1, 0):
        cell = _cells(kept_xyz[:, axis], point_cloud_range[axis], voxel_size[axis])
        key.mul_(grid[axis]).add_(cell if exact_in_float64 else cell.long())
    batch_offset = gz * gy * gx
    if only_sample is not None:  # one sample (a single sweep): no per-point batch ids to gather
        key = key.to(key_dtype).add_(only_sample * batch_offset)
    else:
        key = key.to(key_dtype).add_(batch_idx.index_select(0, kept).to(key_dtype).mul_(batch_offset))
    # stable: equal keys keep input order (kept is ascending), so the cap below keeps each voxel's first points
    sorted_key, order = torch.sort(key, stable=True)
    _, voxel_of_sorted, counts = torch.unique_consecutive(sorted_key, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # sorted position of each voxel's first point
    voxel_of_kept = voxel_of_sorted
    if max_points_per_voxel is not None:
        rank = torch.arange(len(order), device=device) - first.index_select(0, voxel_of_sorted)
        voxel_of_kept = torch.where(rank < max_points_per_voxel, voxel_of_sorted, -1)
        counts = counts.clamp(max=max_points_per_voxel)
    point_to_voxel = torch.full((points.shape[0],), -1, dtype=torch.long, device=device)
    point_to_voxel.scatter_(0, kept.index_select(0, order), voxel_of_kept)
    first_kept = order.index_select(0, first)  # (V,) position in kept of each voxel's first point
    coords = torch.empty((len(first), 4), dtype=torch.int32, device=device)
    if only_sample is not None:
        coords[:, 0] = only_sample
    else:
        coords[:, 0] = batch_idx.index_select(0, kept.index_select(0, first_kept))
    first_xyz = kept_xyz.index_select(0, first_kept)
    for axis in range(3):  # the cells of V points again, instead of keeping 3 x (M,) cells
        coords[:, 3 - axis] = _cells(first_xyz[:, axis], point_cloud_range[axis], voxel_size[axis])
    return Voxels(coords, point_to_voxel, counts.int(), grid, batch_size)


def _cells(column: torch.Tensor, low: float, size: float) -> torch.Tensor:
    """(M,) coordinates -> (M,) float64 ``floor((p - low) / size)``, computed in float64 (on a copy)."""
    return column.to(torch.float64, copy=True).sub_(low).div_(size).floor_()


_FLOAT_BITS = {torch.float32: ("<f", "<I", 32), torch.float64: ("<d", "<Q", 64)}


def _float_of_rank(rank: int, dtype: torch.dtype) -> float:
    """The float of ``dtype`` at position ``rank`` in the ordered set of its values (0 = zero, negative below)."""
    float_code, uint_code, bits = _FLOAT_BITS[dtype]
    pattern = rank if rank >= 0 else (-rank) | (1 << (bits - 1))
    return struct.unpack(float_code, struct.pack(uint_code, pattern))[0]


def _first_float_where(predicate, dtype: torch.dtype) -> float:
    """Smallest finite ``dtype`` value where a monotone ``predicate`` holds (+inf when none)."""
    float_code, uint_code, _ = _FLOAT_BITS[dtype]
    infinity = struct.unpack(uint_code, struct.pack(float_code, math.inf))[0]  # rank of +inf
    low, high = -infinity, infinity
    while low < high:  # predicate(rank high) holds (or high is +inf)
        mid = (low + high) // 2
        if predicate(_float_of_rank(mid, dtype)):
            high = mid
        else:
            low = mid + 1
    return _float_of_rank(low, dtype)


@functools.lru_cache(maxsize=256)
def _inside_bounds(low: float, high: float, size: float, cells: int, dtype: torch.dtype) -> tuple[float, float]:
    """(a, b) values of ``dtype`` with: a <= p < b  <=>  low <= p < high and 0 <= floor((p - low) / size) < cells.

    The float64 cell of p is monotone in p, so "inside" is an interval of the values of ``dtype``; a bisection
    over that ordered set, with the same float64 operations as :func:`voxelize`, finds its ends.
    """
    def reaches(p: float, k: int) -> bool:  # floor(q) >= k  <=>  q >= k  for an integer k
        return (p - low) / size >= k

    first_in = _first_float_where(lambda p: p >= low and reaches(p, 0), dtype)
    first_out = _first_float_where(lambda p: p >= high or reaches(p, cells), dtype)
    return first_in, first_out


def voxelize_torch_reference(points: torch.Tensor, batch_idx: torch.Tensor, voxel_size: Sequence[float],
                             point_cloud_range: Sequence[float], max_points_per_voxel: int | None = None,
                             batch_size: int | None = None) -> Voxels:
    """:func:`voxelize` as one stable sort of the keys of all points (outside ones last): same arguments, same
    result; simpler and slower (float64 cells, (N, 3) temporaries and a 64-bit sort of every point)."""
    voxel_size, point_cloud_range, grid = _geometry(voxel_size, point_cloud_range)
    batch_size, _ = _check_inputs(points, batch_idx, max_points_per_voxel, batch_size)
    gx, gy, gz = grid
    if batch_size * gx * gy * gz > INT64_MAX:
        raise ValueError(f"batch_size {batch_size} x grid {grid} overflows the int64 voxel key")
    device = points.device
    f64 = dict(dtype=torch.float64, device=device)
    lo = torch.tensor(point_cloud_range[:3], **f64)
    hi = torch.tensor(point_cloud_range[3:], **f64)
    xyz = points[:, :3].to(torch.float64)
    cell = torch.floor((xyz - lo) / torch.tensor(voxel_size, **f64))
    grid_t = torch.tensor(grid, **f64)
    inside = ((xyz >= lo) & (xyz < hi) & (cell < grid_t)).all(dim=1)
    cell = torch.minimum(cell.clamp_(min=0), grid_t - 1, out=cell).long()  # clamped: far points cannot overflow
    key = ((batch_idx.long() * gz + cell[:, 2]) * gy + cell[:, 1]) * gx + cell[:, 0]
    # outside points get a key past every real voxel, so they sort to the end and are cut off
    key = torch.where(inside, key, batch_size * gx * gy * gz)
    # stable: equal keys keep input order, so the cap below keeps each voxel's first points
    sorted_key, order = torch.sort(key, stable=True)
    num_inside = int(inside.sum())
    sorted_key, order = sorted_key[:num_inside], order[:num_inside]
    voxel_key, voxel_of_sorted, counts = torch.unique_consecutive(sorted_key, return_inverse=True,
                                                                  return_counts=True)
    voxel_of_kept = voxel_of_sorted
    if max_points_per_voxel is not None:
        first = torch.cumsum(counts, 0) - counts  # sorted position of each voxel's first point
        rank = torch.arange(num_inside, device=device) - first[voxel_of_sorted]
        voxel_of_kept = torch.where(rank < max_points_per_voxel, voxel_of_sorted, -1)
        counts = counts.clamp(max=max_points_per_voxel)
    point_to_voxel = torch.full((points.shape[0],), -1, dtype=torch.long, device=device)
    point_to_voxel[order] = voxel_of_kept
    return Voxels(_decode(voxel_key, grid), point_to_voxel, counts.int(), grid, batch_size)


def _decode(key: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(V,) linear keys -> (V, 4) int32 (batch, z, y, x), contiguous."""
    gx, gy, gz = grid
    coords = torch.empty((len(key), 4), dtype=torch.int32, device=key.device)
    coords[:, 3] = key % gx
    rest = key // gx
    coords[:, 2] = rest % gy
    rest = rest // gy
    coords[:, 1] = rest % gz
    coords[:, 0] = rest // gz
    return coords


def voxel_centers(voxels: Voxels | torch.Tensor, voxel_size: Sequence[float],
                  point_cloud_range: Sequence[float]) -> torch.Tensor:
    """(V, 3) float32 x, y, z metres of the voxel centers, from Voxels or (V, 4) (batch, z, y, x) coords."""
    coords = voxels.coords if isinstance(voxels, Voxels) else voxels
    f64 = dict(dtype=torch.float64, device=coords.device)
    zyx = coords[:, 1:].to(torch.float64)
    size = torch.tensor(_as_floats(voxel_size, 3, "voxel_size"), **f64)
    lo = torch.tensor(_as_floats(point_cloud_range, 6, "point_cloud_range")[:3], **f64)
    return ((zyx.flip(1) + 0.5) * size + lo).float()


def voxelize_reference(points: torch.Tensor, batch_idx: torch.Tensor, voxel_size: Sequence[float],
                       point_cloud_range: Sequence[float], max_points_per_voxel: int | None = None,
                       batch_size: int | None = None) -> Voxels:
    """Plain Python version of :func:`voxelize` (a dict over points); for tests on small clouds."""
    vs = [float(v) for v in voxel_size]
    rng = [float(v) for v in point_cloud_range]
    grid = [int(round((rng[a + 3] - rng[a]) / vs[a])) for a in range(3)]
    members: dict[tuple[int, int, int, int], list[int]] = {}
    for i, (row, b) in enumerate(zip(points[:, :3].tolist(), batch_idx.tolist())):
        if not all(rng[a] <= row[a] < rng[a + 3] for a in range(3)):
            continue
        cell = [math.floor((row[a] - rng[a]) / vs[a]) for a in range(3)]
        if any(cell[a] >= grid[a] for a in range(3)):
            continue
        members.setdefault((int(b), cell[2], cell[1], cell[0]), []).append(i)
    point_to_voxel = [-1] * len(points)
    keys = sorted(members)
    counts = []
    for v, key in enumerate(keys):
        kept = members[key][:max_points_per_voxel]
        counts.append(len(kept))
        for i in kept:
            point_to_voxel[i] = v
    if batch_size is None:
        batch_size = int(batch_idx.max()) + 1 if len(batch_idx) else 0
    return Voxels(torch.tensor(keys, dtype=torch.int32).reshape(-1, 4), torch.tensor(point_to_voxel, dtype=torch.long),
                  torch.tensor(counts, dtype=torch.int32), tuple(grid), batch_size)
