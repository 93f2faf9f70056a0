"""Voxelization speed: pcmae ``voxelize`` (one stable sort of a 64-bit key) vs ``torch.unique(dim=0)`` vs spconv's
``PointToVoxel`` (a hash table in C++; only when spconv is installed), on uniform random points in KITTI's
range (0, -40, -3, 70.4, 40, 1) with 0.05 x 0.05 x 0.1 m voxels, cap 5 points per voxel (SECOND's setting).

    python -m benchmarks.voxelize [--sizes 10000 100000 1000000] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch

from pcmae.ops.voxelize import grid_size_of, voxelize

KITTI_RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
KITTI_VOXEL = (0.05, 0.05, 0.1)


def random_points(n: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """(n, 4) x, y, z, intensity; uniform over the KITTI range grown by 5% per side, so a few points crop."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(KITTI_RANGE[:3]), torch.tensor(KITTI_RANGE[3:])
    pad = 0.05 * (hi - lo)
    xyz = torch.rand(n, 3, generator=g) * (hi - lo + 2 * pad) + (lo - pad)
    return torch.cat([xyz, torch.rand(n, 1, generator=g)], dim=1).to(device)


def unique_dim0_voxelize(points: torch.Tensor, batch_idx: torch.Tensor, voxel_size, pc_range):
    """Baseline: integer cells -> torch.unique over (batch, z, y, x) rows. No cap. -> (coords, inverse, counts)."""
    grid = torch.tensor(grid_size_of(voxel_size, pc_range), device=points.device)
    lo = torch.tensor(pc_range[:3], device=points.device)
    hi = torch.tensor(pc_range[3:], device=points.device)
    cell = torch.floor((points[:, :3] - lo) / torch.tensor(voxel_size, device=points.device)).long()
    inside = ((points[:, :3] >= lo) & (points[:, :3] < hi) & (cell < grid)).all(dim=1)
    rows = torch.cat([batch_idx[inside, None], cell[inside].flip(1)], dim=1)
    return torch.unique(rows, dim=0, return_inverse=True, return_counts=True)


def spconv_point_to_voxel(n_max: int, max_points_per_voxel: int, device) -> Callable | None:
    """spconv's PointToVoxel for one sweep, or None without spconv. It preallocates
    (max_num_voxels, max_points_per_voxel, C) and silently drops voxels past max_num_voxels, so the
    capacity is set to n_max (every point its own voxel) to get the same voxels as the others."""
    try:
        with warnings.catch_warnings():  # spconv's build helper warns about a deprecated locale call
            warnings.simplefilter("ignore", DeprecationWarning)
            from spconv.pytorch.utils import PointToVoxel  # voxelization only: no pcmae workaround needed
    except ImportError:
        return None
    gen = PointToVoxel(vsize_xyz=list(KITTI_VOXEL), coors_range_xyz=list(KITTI_RANGE), num_point_features=4,
                       max_num_voxels=n_max, max_num_points_per_voxel=max_points_per_voxel,
                       device=torch.device(device))
    return lambda pts: gen.generate_voxel_with_id(pts)


def time_call(fn: Callable[[], object], repeats: int, device) -> tuple[float, object]:
    """Best of `repeats` wall times after one warm-up call, and the last result."""
    result = fn()
    best = math.inf
    for _ in range(repeats):
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_voxelize(sizes: Sequence[int] = (10_000, 100_000, 1_000_000, 2_000_000), repeats: int = 3,
                   max_points_per_voxel: int = 5, device="cpu") -> list[dict]:
    """One row per (method, size): {"method", "points", "voxels", "seconds"}."""
    rows = []
    p2v = spconv_point_to_voxel(max(sizes), max_points_per_voxel, device)
    for n in sizes:
        pts = random_points(n, device=device)
        bidx = torch.zeros(n, dtype=torch.long, device=device)
        t, vox = time_call(lambda: voxelize(pts, bidx, KITTI_VOXEL, KITTI_RANGE, max_points_per_voxel, 1),
                           repeats, device)
        rows.append({"method": "pcmae.voxelize (sort)", "points": n, "voxels": vox.num_voxels, "seconds": t})
        t, out = time_call(lambda: unique_dim0_voxelize(pts, bidx, KITTI_VOXEL, KITTI_RANGE), repeats, device)
        rows.append({"method": "torch.unique(dim=0)", "points": n, "voxels": len(out[0]), "seconds": t})
        if p2v is not None:
            t, out = time_call(lambda: p2v(pts), repeats, device)
            rows.append({"method": "spconv.PointToVoxel", "points": n, "voxels": len(out[1]), "seconds": t})
    return rows


def fit_exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(size): ~1 for linear time."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 2_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    rows = bench_voxelize(args.sizes, args.repeats, device=args.device)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'method':<24}{'points':>10}{'voxels':>10}{'ms':>10}{'ns/point':>10}")
    for r in rows:
        print(f"{r['method']:<24}{r['points']:>10}{r['voxels']:>10}{r['seconds'] * 1e3:>10.2f}"
              f"{r['seconds'] * 1e9 / r['points']:>10.1f}")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        if len(mine) > 1:
            print(f"{method}: time ~ N^{fit_exponent([r['points'] for r in mine], [r['seconds'] for r in mine]):.2f}")
    return rows


if __name__ == "__main__":
    main()
