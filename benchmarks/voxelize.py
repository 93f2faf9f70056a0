"""Voxelization speed on real LiDAR at 0.1-2M points: pcmae ``voxelize`` against what users write instead.

Methods, all on the same points, same torch threads, same timing rule (benchmarks/timing.py: one warm-up
call each, then the median of ``repeats`` calls, interleaved):

* ``pcmae.voxelize``: the default kernel (crop in the points' dtype, float64 cells of the kept points, one
  radix sort of 32-bit keys); ``pcmae voxelize_torch_reference``: the one-sort kernel it replaced;
* ``torch.unique (flat int64 key)``: the few lines users write: float32 cells, a range mask, a flat int64 key
  ``(z * Y + y) * X + x``, ``torch.unique(key, return_inverse=True, return_counts=True)``; no cap;
* ``spconv PointToVoxel``: spconv's C++ hash-table voxelizer (serial loop), with the cap; capacity = N points.

Work per call: the voxels and each point's voxel ("voxelize ms"; "voxelize CPU ms" is the process CPU time of
the same calls, all threads: at 1 thread the part that does not depend on waiting for a core), then also the mean of the kept points of each
voxel (``+ mean ms``: pcmae and torch.unique with a scatter mean, spconv from its padded (V, cap, C) array).
The equality columns are computed against ``pcmae.voxelize``: same set of voxels, same point count in each,
same per-voxel means (max |difference| over the common voxels).

Points: the KITTI sweeps in ../shared/data (7 real HDL-64E sweeps, ~120k points each), each copy turned by a
random yaw about the sensor and jittered by 1 cm, concatenated up to N points (one batch sample, as an
aggregated multi-sweep cloud); KITTI's range (0, -40, -3, 70.4, 40, 1) and SECOND's 0.05 x 0.05 x 0.1 m voxels,
cap 5. Without the shared data: uniform random points in that range (said in the "points from" line).

    python -m benchmarks.voxelize [--sizes 100000 1000000 2000000] [--repeats 5] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks import shared_data_root
from benchmarks.timing import median_wall_and_cpu_ms, torch_threads
from pcmae.ops.segment import segment_reduce
from pcmae.ops.voxelize import grid_size_of, voxelize, voxelize_torch_reference

KITTI_RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
KITTI_VOXEL = (0.05, 0.05, 0.1)
CAP = 5
MEAN_TOLERANCE = 1e-4  # float32 sums in another order


def kitti_sweep_files() -> list[Path]:
    root = shared_data_root() / "openpcdet" / "data" / "kitti"
    return sorted(root.glob("*/velodyne/*.bin"))


def random_points(n: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """(n, 4) x, y, z, intensity; uniform over the KITTI range grown by 5% per side, so a few points crop."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(KITTI_RANGE[:3]), torch.tensor(KITTI_RANGE[3:])
    pad = 0.05 * (hi - lo)
    xyz = torch.rand(n, 3, generator=g) * (hi - lo + 2 * pad) + (lo - pad)
    return torch.cat([xyz, torch.rand(n, 1, generator=g)], dim=1).to(device)


def tiled_sweeps(n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(n, 4) float32 points from the real KITTI sweeps (each copy turned by a random yaw, jittered by 1 cm),
    and where they came from; uniform random points when the shared data is absent."""
    files = kitti_sweep_files()
    if not files:
        return random_points(n, seed), f"uniform random (no KITTI sweeps under {shared_data_root()})"
    from pcmae.io import load_points

    sweeps = [torch.from_numpy(load_points(f, layout="kitti")) for f in files]
    g = torch.Generator().manual_seed(seed)
    parts, total, i = [], 0, 0
    while total < n:
        sweep = sweeps[i % len(sweeps)].clone()
        yaw = float(torch.rand((), generator=g)) * 2 * math.pi
        c, s = math.cos(yaw), math.sin(yaw)
        x, y = sweep[:, 0].clone(), sweep[:, 1]
        sweep[:, 0] = c * x - s * y
        sweep[:, 1] = s * x + c * y
        sweep[:, :3] += 0.01 * torch.randn(len(sweep), 3, generator=g)
        parts.append(sweep)
        total += len(sweep)
        i += 1
    return torch.cat(parts)[:n].contiguous(), f"{len(files)} real KITTI sweeps, tiled ({i} copies)"


# ------------------------------------------------------------------------------------------------ methods
# Each method gives (voxelize: () -> raw output, with_mean: () -> (keys (V,), counts (V,), means (V, C))).
# keys are the flat voxel keys ((batch * Z + z) * Y + y) * X + x, ascending.

def _flat_key(zyx: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(V, 3) z, y, x (one sample) -> (V,) int64 ((z * Y + y) * X + x)."""
    gx, gy, _ = grid
    zyx = zyx.long()
    return (zyx[:, 0] * gy + zyx[:, 1]) * gx + zyx[:, 2]


def pcmae_method(points: torch.Tensor, cap: int | None, kernel=voxelize):
    batch_idx = torch.zeros(len(points), dtype=torch.long, device=points.device)
    grid = grid_size_of(KITTI_VOXEL, KITTI_RANGE)

    def run():
        return kernel(points, batch_idx, KITTI_VOXEL, KITTI_RANGE, cap, 1)

    def with_mean():
        vox = run()
        kept = vox.point_to_voxel >= 0
        means = segment_reduce(points[kept], vox.point_to_voxel[kept], vox.num_voxels, "mean")
        return _flat_key(vox.coords[:, 1:], grid), vox.counts, means

    return run, with_mean


def unique_flat_key_method(points: torch.Tensor):
    """What users write with torch.unique (float32 cells, no cap)."""
    device = points.device
    lo = torch.tensor(KITTI_RANGE[:3], device=device)
    hi = torch.tensor(KITTI_RANGE[3:], device=device)
    size = torch.tensor(KITTI_VOXEL, device=device)
    gx, gy, gz = grid = grid_size_of(KITTI_VOXEL, KITTI_RANGE)
    grid_t = torch.tensor(grid, device=device)

    def run():
        xyz = points[:, :3]
        cell = torch.floor((xyz - lo) / size).long()
        inside = ((xyz >= lo) & (xyz < hi) & (cell < grid_t)).all(dim=1)
        cell = cell[inside]
        key = (cell[:, 2] * gy + cell[:, 1]) * gx + cell[:, 0]
        keys, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
        return inside, keys, inverse, counts

    def with_mean():
        inside, keys, inverse, counts = run()
        features = points[inside]
        index = inverse[:, None].expand_as(features)
        means = features.new_zeros(len(keys), features.shape[1]).scatter_reduce_(0, index, features, "mean",
                                                                                 include_self=False)
        return keys, counts, means

    return run, with_mean


def spconv_method(points: torch.Tensor, cap: int) -> tuple[Callable, Callable] | None:
    """spconv's PointToVoxel, or None without spconv. It preallocates (max_num_voxels, cap, C) and silently drops
    voxels past max_num_voxels, so the capacity is N (every point its own voxel)."""
    try:
        with warnings.catch_warnings():  # spconv's build helper warns about a deprecated locale call
            warnings.simplefilter("ignore", DeprecationWarning)
            from spconv.pytorch.utils import PointToVoxel  # voxelization only: no pcmae workaround needed
    except ImportError:
        return None
    grid = grid_size_of(KITTI_VOXEL, KITTI_RANGE)
    gen = PointToVoxel(vsize_xyz=list(KITTI_VOXEL), coors_range_xyz=list(KITTI_RANGE),
                       num_point_features=points.shape[1], max_num_voxels=len(points),
                       max_num_points_per_voxel=cap, device=points.device)

    def run():
        return gen.generate_voxel_with_id(points)

    def with_mean():
        voxels, coords, counts, _ = run()
        means = voxels.sum(dim=1) / counts[:, None].to(voxels.dtype)  # padding rows are zeros
        keys = _flat_key(coords, grid)
        order = torch.argsort(keys)  # spconv numbers voxels in order of first appearance
        return keys[order], counts[order], means[order]

    return run, with_mean


# ------------------------------------------------------------------------------------------------ compare

def compare(got, expected) -> dict[str, str]:
    """Equality columns of one method's (keys, counts, means) against pcmae.voxelize's, computed."""
    keys, counts, means = (t.cpu() for t in got)
    ref_keys, ref_counts, ref_means = (t.cpu() for t in expected)
    common = torch.isin(keys, ref_keys)
    ref_common = torch.isin(ref_keys, keys)
    extra, missing = int((~common).sum()), int((~ref_common).sum())
    same_set = "yes" if extra == missing == 0 else f"no: {extra} extra, {missing} missing of {len(ref_keys)}"
    diff_counts = int((counts[common].long() != ref_counts[ref_common].long()).sum())
    same_counts = "yes" if diff_counts == 0 else f"no: {diff_counts} voxels differ"
    diff = (means[common].double() - ref_means[ref_common].double()).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    same_means = f"{'yes' if worst <= MEAN_TOLERANCE else 'no'} (max diff {worst:.1e})"
    return {"same voxels": same_set, "same counts": same_counts, "same means": same_means}


def bench_voxelize(sizes: Sequence[int] = (100_000, 1_000_000, 2_000_000), repeats: int = 5,
                   threads: Sequence[int | None] = (1, 2), device="cpu") -> list[dict]:
    """One row per (cap setting, size, threads, method) with both times and the equality columns."""
    rows = []
    for n in sizes:
        points, source = tiled_sweeps(n)
        points = points.to(device)
        for cap in (CAP, None):
            methods = {"pcmae.voxelize": pcmae_method(points, cap),
                       "pcmae voxelize_torch_reference": pcmae_method(points, cap, voxelize_torch_reference)}
            if cap is None:
                methods["torch.unique (flat int64 key)"] = unique_flat_key_method(points)
            else:
                spconv = spconv_method(points, cap)
                if spconv is not None:
                    methods["spconv PointToVoxel"] = spconv
            for t in threads:
                with torch_threads(t) as used:
                    voxelize_ms, voxelize_cpu = median_wall_and_cpu_ms({k: m[0] for k, m in methods.items()},
                                                                       repeats, device)
                    mean_ms = median_wall_and_cpu_ms({k: m[1] for k, m in methods.items()}, repeats, device)[0]
                    results = {k: m[1]() for k, m in methods.items()}
                for name in methods:
                    rows.append({"cap": cap or "none", "points": n, "threads": used, "method": name,
                                 "voxels": len(results[name][0]), "voxelize ms": voxelize_ms[name],
                                 "voxelize CPU ms": voxelize_cpu[name], "+ mean ms": mean_ms[name],
                                 **compare(results[name], results["pcmae.voxelize"]), "points from": source})
    return rows


def fit_exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(size): ~1 for linear time."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def format_rows(rows: list[dict]) -> list[dict]:
    """Rows for a markdown table (times as text, ns per point added, the data source left out)."""
    times = ("voxelize ms", "voxelize CPU ms", "+ mean ms")
    return [{**{k: v for k, v in r.items() if k not in (*times, "points from")},
             **{k: f"{r[k]:.1f}" for k in times}, "ns / point": f"{1e6 * r['voxelize ms'] / r['points']:.0f}"}
            for r in rows]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    rows = bench_voxelize(args.sizes, args.repeats, args.threads, device=args.device)
    print(f"device {args.device}; points from: {rows[0]['points from'] if rows else '-'}")
    table = format_rows(rows)
    columns = list(table[0]) if table else []
    print(" | ".join(columns))
    for r in table:
        print(" | ".join(str(r[c]) for c in columns))
    return rows


if __name__ == "__main__":
    main()
