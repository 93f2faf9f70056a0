#!/usr/bin/env python
"""Speed of pcmae against the libraries it could have used, all measured in one run, as markdown tables.

    python tools/benchmark.py [--sections ops,train,voxelize,lidar_step,converters,detector,transformer_bev] [--sizes 1000,8000,100000] [--repeats 3] [--device cpu]

Each time is the median of ``--repeats`` calls after one warm-up call (one call when the warm-up took
longer than ``SLOW_CALL_S``). Sections:
  ops       farthest point sampling, kNN (k=32) and Chamfer-L2 (forward + backward) on uniform random clouds
            in the unit cube, against a plain torch loop, each fpsample variant, scipy's cKDTree, dense cdist;
  train     Point-MAE training steps per second at batch 32 (benchmarks/train.py);
  voxelize  voxelization 10k -> 2M points with fitted exponents, against torch.unique and spconv's
            PointToVoxel (benchmarks/voxelize.py);
  lidar_step  voxel tokenizer + one Voxel-MAE training step on a full KITTI sweep, time and peak memory, for
            the transformer and the spconv backbone (benchmarks/lidar_step.py);
  converters  frames per second per worker of each data converter, 1 and 2 workers (benchmarks/converters.py);
  detector  a training step of each configs/mmdet3d detector on a real sweep, pcmae's encoder next to mmdet3d's own
            SparseEncoder with the BEV maps compared (benchmarks/detector.py; needs make venv-mmdet3d);
  transformer_bev  the transformer BEV encoder's forward + backward time against its token count.

Adding a section: write ``def bench_NAME(args) -> list[dict]`` (one dict per table row, same keys in every
row; ``args`` is the parsed command line, add options in ``parse_args``) and register it in ``SECTIONS``.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for benchmarks/ (not installed)
from benchmarks import converters  # noqa: E402
from benchmarks.detector import bench_detector, bench_transformer_bev  # noqa: E402
from benchmarks.lidar_step import bench_lidar_step  # noqa: E402
from benchmarks.train import bench_train  # noqa: E402
from benchmarks.voxelize import bench_voxelize, fit_exponent  # noqa: E402
from pcmae.ops import chamfer_distance, farthest_point_sample, farthest_point_sample_reference, knn, knn_reference
from pcmae.ops.fps import _bucket_height, auto_backend

try:
    import fpsample
except ImportError:
    fpsample = None
try:
    from scipy.spatial import cKDTree
except ImportError:
    cKDTree = None

SLOW_CALL_S = 2.0
DENSE_LIMIT_BYTES = 2 << 30  # skip dense Chamfer above this matrix size
TORCH_PAIRS_LIMIT_CPU = 4e9  # skip chunked-torch Chamfer above this many point pairs on CPU (~minutes)
KNN_K = 32


# ------------------------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in milliseconds, after one warm-up call."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    warm_up = time.perf_counter() - start
    if warm_up > SLOW_CALL_S:
        return warm_up * 1e3
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def row(op: str, n: int, work: str, impl: str, ms: float | None, same: str = "", note: str = "") -> dict:
    return {"op": op, "N": n, "work": work, "implementation": impl,
            "median ms": "-" if ms is None else f"{ms:.2f}", "= pcmae reference": same, "note": note}


def yes_no(flag: bool) -> str:
    return "yes" if flag else "NO"


# ------------------------------------------------------------------------------------------ section ops

def fps_samples(n: int) -> int:
    """Sample count per cloud size: 512 up to 2k points, 1024 up to 20k, then 4096."""
    return min(n, 512 if n <= 2000 else 1024 if n <= 20000 else 4096)


def fpsample_variants(n: int) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """fpsample's own functions, started at index 0 where they honour it."""
    if fpsample is None:
        return {}
    h = _bucket_height(n)  # the height pcmae's backend='bucket' uses
    return {
        "fpsample fps_sampling (vanilla)": lambda p, m: fpsample.fps_sampling(p, m, start_idx=0),
        "fpsample fps_npdu_sampling": lambda p, m: fpsample.fps_npdu_sampling(p, m, start_idx=0),
        "fpsample fps_npdu_kdtree_sampling": lambda p, m: fpsample.fps_npdu_kdtree_sampling(p, m, start_idx=0),
        "fpsample bucket_fps_kdtree_sampling": lambda p, m: fpsample.bucket_fps_kdtree_sampling(p, m, start_idx=0),
        f"fpsample bucket_fps_kdline_sampling h={h}":
            lambda p, m: fpsample.bucket_fps_kdline_sampling(p, m, h, start_idx=0),
    }


def bench_fps(xyz: torch.Tensor, repeats: int) -> list[dict]:
    n, m = xyz.shape[1], fps_samples(xyz.shape[1])
    work, device = f"1 x {n} -> {m} samples", xyz.device
    expected = farthest_point_sample_reference(xyz, m)
    auto = auto_backend(xyz)
    impls = {f"pcmae farthest_point_sample (auto = {auto})": lambda: farthest_point_sample(xyz, m),
             "pcmae reference (torch loop)": lambda: farthest_point_sample_reference(xyz, m)}
    if device.type == "cpu" and fpsample is not None:
        impls["pcmae backend='fpsample' (exact)"] = lambda: farthest_point_sample(xyz, m, backend="fpsample")
        impls["pcmae backend='bucket' (ties may differ)"] = lambda: farthest_point_sample(xyz, m, backend="bucket")
    rows = [row("FPS", n, work, name, time_ms(fn, repeats, device), yes_no(torch.equal(fn().cpu(), expected.cpu())))
            for name, fn in impls.items()]
    if device.type == "cpu":
        cloud = xyz[0].numpy()
        for name, fn in fpsample_variants(n).items():
            picks = torch.from_numpy(fn(cloud, m).astype(np.int64))
            note = f"starts at {int(picks[0])}" if picks[0] != 0 else ""
            rows.append(row("FPS", n, work, name, time_ms(lambda: fn(cloud, m), repeats, device),
                            yes_no(torch.equal(picks, expected[0])), note))
    return rows


def bench_knn(xyz: torch.Tensor, repeats: int) -> list[dict]:
    n, device = xyz.shape[1], xyz.device
    query = xyz[:, farthest_point_sample(xyz, fps_samples(n))[0]]
    work = f"{query.shape[1]} FPS centers, k={KNN_K}"
    ref_dist, ref_idx = knn_reference(query, xyz, KNN_K)
    rows = []

    def same(dist2: torch.Tensor, idx: torch.Tensor) -> str:
        return yes_no(torch.equal(idx.cpu(), ref_idx.cpu()) and torch.equal(dist2.cpu(), ref_dist.cpu()))

    for name, fn in {"pcmae knn (auto)": lambda: knn(query, xyz, KNN_K),
                     "pcmae reference (chunked torch)": lambda: knn_reference(query, xyz, KNN_K)}.items():
        rows.append(row("kNN", n, work, name, time_ms(fn, repeats, device), same(*fn())))
    if cKDTree is not None and device.type == "cpu":
        cloud, centers = xyz[0].numpy(), query[0].numpy()

        def scipy_knn():
            return cKDTree(cloud).query(centers, k=KNN_K, workers=-1)

        dist, idx = scipy_knn()
        same_idx = torch.equal(torch.from_numpy(idx.astype(np.int64))[None], ref_idx)
        rows.append(row("kNN", n, work, "scipy cKDTree (build + query, all cores)", time_ms(scipy_knn, repeats, device),
                        yes_no(same_idx), "distances not squared"))
    return rows


def bench_chamfer(xyz: torch.Tensor, other: torch.Tensor, repeats: int) -> list[dict]:
    n, device = xyz.shape[1], xyz.device
    work = f"1 x {n} vs {n}, forward + backward"
    x, y = xyz.clone().requires_grad_(), other.clone().requires_grad_()

    def step(fn):
        def run():
            x.grad = y.grad = None
            loss = fn()
            loss.backward()
            return loss.detach()
        return run

    def dense():
        d = torch.cdist(x, y) ** 2
        return d.min(dim=2).values.mean() + d.min(dim=1).values.mean()

    reference = step(lambda: chamfer_distance(x, y, backend="torch"))
    pairs = 2.0 * n * n
    skip_torch = device.type == "cpu" and pairs > TORCH_PAIRS_LIMIT_CPU
    expected = step(lambda: chamfer_distance(x, y))()
    rows = [row("Chamfer-L2", n, work, "pcmae chamfer_distance (auto)",
                time_ms(step(lambda: chamfer_distance(x, y)), repeats, device), "yes")]
    if skip_torch:
        rows.append(row("Chamfer-L2", n, work, "pcmae backend='torch' (chunked)", None, "",
                        f"skipped ({pairs:.1e} point pairs on CPU)"))
    else:
        close = torch.allclose(reference(), expected, rtol=1e-5, atol=0)
        rows.append(row("Chamfer-L2", n, work, "pcmae backend='torch' (chunked)", time_ms(reference, repeats, device),
                        yes_no(close)))
    dense_bytes = n * n * xyz.element_size()
    if dense_bytes > DENSE_LIMIT_BYTES:
        rows.append(row("Chamfer-L2", n, work, "dense torch.cdist", None, "",
                        f"skipped (would allocate {dense_bytes / 2**30:.1f} GiB)"))
    else:
        close = torch.allclose(step(dense)(), expected, rtol=1e-4, atol=0)
        rows.append(row("Chamfer-L2", n, work, "dense torch.cdist", time_ms(step(dense), repeats, device),
                        yes_no(close), "mm-based distances: equal up to rounding"))
    return rows


def bench_ops(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        xyz = torch.rand(1, n, 3, generator=g).to(device)
        other = torch.rand(1, n, 3, generator=g).to(device)
        rows += bench_fps(xyz, args.repeats)
        rows += bench_knn(xyz, args.repeats)
        rows += bench_chamfer(xyz, other, args.repeats)
    return rows


# ------------------------------------------------------------------------------- sections in benchmarks/

def bench_voxelize_section(args: argparse.Namespace) -> list[dict]:
    """Voxelization 10k -> 2M points (KITTI range, 0.05 x 0.05 x 0.1 m, cap 5), with each method's fitted
    exponent of time ~ N^e."""
    rows = bench_voxelize(args.voxel_sizes, args.repeats, device=args.device)
    out = [{"method": r["method"], "points": r["points"], "voxels": r["voxels"], "ms": f"{1e3 * r['seconds']:.1f}",
            "ns / point": f"{1e9 * r['seconds'] / r['points']:.0f}", "exponent": ""} for r in rows]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        if len(mine) > 1:
            exponent = fit_exponent([r["points"] for r in mine], [r["seconds"] for r in mine])
            out.append({"method": method, "points": "fit", "voxels": "", "ms": "", "ns / point": "",
                        "exponent": f"{exponent:.2f}"})
    return out


def bench_converters_section(args: argparse.Namespace) -> list[dict]:
    """Each data converter on real (or full-size synthetic) frames, 1 and 2 workers."""
    rows = converters.bench_converters(argparse.Namespace(sources=list(converters.SOURCES), workers=[1, 2],
                                                          repeat=2))
    return [{**r, **{k: f"{v:.2f}" for k, v in r.items() if isinstance(v, float)}} for r in rows]


SECTIONS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "ops": bench_ops,
    "train": bench_train,
    "voxelize": bench_voxelize_section,
    "lidar_step": bench_lidar_step,
    "converters": bench_converters_section,
    "detector": bench_detector,
    "transformer_bev": bench_transformer_bev,
}


# ------------------------------------------------------------------------------------------- output

def markdown_table(rows: list[dict]) -> str:
    """Rows with the same keys -> a markdown table (columns in the order of the first row's keys)."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |" for line in cells]
    return "\n".join(lines)


def environment(device: str) -> str:
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    packages = ", ".join(f"{p} {version(p)}" for p in ("fpsample", "pykdtree", "scipy"))
    return (f"{platform.machine()}, {where}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{packages}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--sizes", default="1000,8000,100000", help="comma-separated point counts (ops)")
    parser.add_argument("--voxel-sizes", default="10000,100000,1000000,2000000",
                        help="comma-separated point counts (voxelize)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per row (train)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        args.voxel_sizes = [int(s) for s in args.voxel_sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes / --voxel-sizes must be comma-separated integers, got {args.sizes!r}, "
                     f"{args.voxel_sizes!r}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"Environment: {environment(args.device)}\n")
    for name in args.sections:
        start = time.perf_counter()
        rows = SECTIONS[name](args)
        print(f"## {name} ({time.perf_counter() - start:.0f} s)\n")
        print(markdown_table(rows))
        print()


if __name__ == "__main__":
    main()
