#!/usr/bin/env python
"""Speed of pcmae against the libraries it could have used, all measured in one run, as markdown tables.

    python tools/benchmark.py [--sections ops,train,voxelize,lidar_step,converters,detector,transformer_bev,odometry,temporal_step] [--sizes 1000,8000,100000] [--voxel-sizes 100000,1000000,2000000] [--threads 1,2] [--repeats 3] [--device cpu]

One timing rule for every pair (benchmarks/timing.py): each implementation is called once to warm up, then
``--repeats`` times, the implementations interleaved call by call, and the median is reported (wall time, and
the process CPU time of the same calls: at 1 thread, the part that does not depend on waiting for a core on a
shared machine). The ops and voxelize sections run once per ``--threads`` value, with that many threads in
torch and in every OpenMP / BLAS runtime of the process (pykdtree's included, via threadpoolctl); fpsample and
spconv's voxelizer are serial C++. Every equality column is computed. Sections:
  ops       farthest point sampling, kNN (k=32) and Chamfer-L2 (forward + backward) on uniform random clouds
            in the unit cube, against a plain torch loop, each fpsample variant, raw pykdtree, scipy's cKDTree,
            dense cdist; Chamfer too big for its reference is checked on sampled points by brute force;
  train     Point-MAE training steps per second at batch 32, pcmae next to an earlier pcmae revision (--before) and
            upstream Point-MAE's model code (--upstream CHECKOUT), interleaved, loss difference computed
            (benchmarks/train.py);
  voxelize  voxelization of 0.1-2M real (tiled KITTI) points with and without a cap, against torch.unique on a
            flat int64 key and spconv's PointToVoxel, same voxels / counts / means computed (benchmarks/voxelize.py);
  lidar_step  voxel tokenizer + one Voxel-MAE training step on a full KITTI sweep, time and peak memory, for
            the transformer and the spconv backbone (benchmarks/lidar_step.py);
  converters  frames per second per worker of each data converter, 1 and 2 workers (benchmarks/converters.py);
  detector  a training step of each configs/mmdet3d detector on a real sweep, pcmae's encoder next to mmdet3d's own
            SparseEncoder with the BEV maps compared (benchmarks/detector.py; needs make venv-mmdet3d);
  transformer_bev  the transformer BEV encoder's forward + backward time against its token count;
  odometry  KISS-ICP poses (--estimate-poses) against the recorded poses of the shared real sequences, and the
            frames' overlap raw / aligned (benchmarks/odometry.py; needs kiss-icp, pyarrow, ouster-sdk);
  temporal_step  a T-MAE step against a Voxel-MAE step on the same real sweep pair, full and half sweep: time,
            peak memory, time per token (benchmarks/temporal_step.py; first --threads value).

Adding a section: write ``def bench_NAME(args) -> list[dict]`` (one dict per table row, same keys in every
row; ``args`` is the parsed command line, add options in ``parse_args``) and register it in ``SECTIONS``.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for benchmarks/ (not installed)
from benchmarks import converters, temporal_step  # noqa: E402
from benchmarks.detector import bench_detector, bench_transformer_bev  # noqa: E402
from benchmarks.lidar_step import bench_lidar_step  # noqa: E402
from benchmarks.odometry import bench_odometry  # noqa: E402
from benchmarks.train import bench_train  # noqa: E402
from benchmarks.timing import median_wall_and_cpu_ms, torch_threads  # noqa: E402
from benchmarks.voxelize import bench_voxelize, format_rows  # noqa: E402
from pcmae.ops import (chamfer_distance, farthest_point_sample, farthest_point_sample_reference, knn,  # noqa: E402
                       knn_reference, nearest_sq_dist)
from pcmae.ops.fps import _bucket_height, auto_backend  # noqa: E402
from pcmae.ops.knn import KDTree  # noqa: E402  (None without pykdtree)

try:
    import fpsample
except ImportError:
    fpsample = None
try:
    from scipy.spatial import cKDTree
except ImportError:
    cKDTree = None

DENSE_LIMIT_BYTES = 2 << 30  # skip dense Chamfer above this matrix size
TORCH_PAIRS_LIMIT_CPU = 4e9  # skip chunked-torch Chamfer above this many point pairs on CPU (~minutes)
KNN_K = 32
CHAMFER_SAMPLES = 2000  # points per cloud checked by brute force when the full reference is too big


# ------------------------------------------------------------------------------------------- timing

def row(op: str, n: int, threads: int, work: str, impl: str, ms: float | None, same: str = "",
        note: str = "", cpu_ms: float | None = None) -> dict:
    return {"op": op, "N": n, "threads": threads, "work": work, "implementation": impl,
            "median ms": "-" if ms is None else f"{ms:.2f}", "CPU ms": "-" if cpu_ms is None else f"{cpu_ms:.2f}",
            "= pcmae reference": same, "note": note}


def yes_no(flag: bool) -> str:
    return "yes" if flag else "NO"


# ------------------------------------------------------------------------------------------ section ops

def fps_samples(n: int) -> int:
    """Sample count per cloud size: 512 up to 2k points, 1024 up to 20k, then 4096."""
    return min(n, 512 if n <= 2000 else 1024 if n <= 20000 else 4096)


def fpsample_variants(n: int) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """fpsample's own functions (serial C++), started at index 0 where they honour it."""
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


def bench_fps(xyz: torch.Tensor, repeats: int, threads: int) -> list[dict]:
    """Every FPS implementation, same threads, same rule (warm-up + interleaved median), picks compared with the
    reference loop's."""
    n, m = xyz.shape[1], fps_samples(xyz.shape[1])
    work, device = f"1 x {n} -> {m} samples", xyz.device
    auto = auto_backend(xyz)
    impls = {f"pcmae farthest_point_sample (auto = {auto})": lambda: farthest_point_sample(xyz, m),
             "pcmae reference (torch loop)": lambda: farthest_point_sample_reference(xyz, m)}
    notes = {}
    if device.type == "cpu":
        impls["pcmae backend='pruned' (exact)"] = lambda: farthest_point_sample(xyz, m, backend="pruned")
        if fpsample is not None:
            impls["pcmae backend='fpsample' (exact)"] = lambda: farthest_point_sample(xyz, m, backend="fpsample")
            impls["pcmae backend='bucket' (ties may differ)"] = \
                lambda: farthest_point_sample(xyz, m, backend="bucket")
            cloud = xyz[0].numpy()
            for name, fn in fpsample_variants(n).items():
                impls[name] = (lambda f: lambda: torch.from_numpy(f(cloud, m).astype(np.int64))[None])(fn)
                notes[name] = "serial C++"
    expected = farthest_point_sample_reference(xyz, m).cpu()
    times, cpu = median_wall_and_cpu_ms(impls, repeats, device)
    rows = []
    for name, fn in impls.items():
        picks = fn().cpu()
        note = notes.get(name, "")
        if int(picks[0, 0]) != 0:
            note = f"{note}; starts at {int(picks[0, 0])}".lstrip("; ")
        rows.append(row("FPS", n, threads, work, name, times[name], yes_no(torch.equal(picks, expected)), note,
                        cpu[name]))
    return rows


def same_neighbours(dist2: torch.Tensor, idx: torch.Tensor, ref_dist: torch.Tensor, ref_idx: torch.Tensor) -> str:
    """Computed: the same neighbour indices as the reference (sets per query, so the order of exactly equal
    distances does not count) and the largest squared-distance difference."""
    same_idx = torch.equal(idx.long().sort(dim=-1).values, ref_idx.long().sort(dim=-1).values)
    diff = float((dist2.double() - ref_dist.double()).abs().max())
    if torch.equal(idx.long(), ref_idx.long()) and diff == 0:
        return "yes"
    return f"{yes_no(same_idx)} (index sets; max dist2 diff {diff:.1e})"


def bench_knn(xyz: torch.Tensor, repeats: int, threads: int) -> list[dict]:
    n, device = xyz.shape[1], xyz.device
    query = xyz[:, farthest_point_sample(xyz, fps_samples(n))[0]]
    work = f"{query.shape[1]} FPS centers, k={KNN_K}"
    ref_dist, ref_idx = knn_reference(query, xyz, KNN_K)
    impls = {"pcmae knn (auto)": lambda: knn(query, xyz, KNN_K),
             "pcmae reference (chunked torch)": lambda: knn_reference(query, xyz, KNN_K)}
    notes = {}
    if device.type == "cpu":
        cloud, centers = xyz[0].numpy(), query[0].numpy()
        if KDTree is not None:
            def raw_pykdtree():
                dist2, idx = KDTree(cloud).query(centers, k=KNN_K, sqr_dists=True)
                return torch.from_numpy(dist2)[None], torch.from_numpy(idx.astype(np.int64))[None]

            impls["pykdtree (build + query, raw)"] = raw_pykdtree
            notes["pykdtree (build + query, raw)"] = "what pcmae's kdtree backend wraps"
        if cKDTree is not None:
            def scipy_knn():
                dist, idx = cKDTree(cloud).query(centers, k=KNN_K, workers=threads)
                return torch.from_numpy(dist * dist)[None], torch.from_numpy(idx.astype(np.int64))[None]

            impls["scipy cKDTree (build + query)"] = scipy_knn
            notes["scipy cKDTree (build + query)"] = "distances squared after the query"
    times, cpu = median_wall_and_cpu_ms(impls, repeats, device)
    return [row("kNN", n, threads, work, name, times[name], same_neighbours(*fn(), ref_dist, ref_idx),
                notes.get(name, ""), cpu[name]) for name, fn in impls.items()]


def sampled_nearest_check(x: torch.Tensor, y: torch.Tensor, samples: int, seed: int) -> str:
    """Chamfer too big for the reference: the nearest squared distance of ``samples`` random points of each cloud,
    by brute force over the whole other cloud, against pcmae's (the terms the loss averages), computed."""
    g = torch.Generator().manual_seed(seed)
    worst, mismatches = 0.0, 0
    for a, b in ((x, y), (y, x)):
        pick = torch.randperm(a.shape[1], generator=g)[:samples].to(a.device)
        sub = a.detach()[:, pick]
        got, _ = nearest_sq_dist(sub, b.detach())
        expected = knn_reference(sub, b.detach(), 1)[0][..., 0]
        mismatches += int((got != expected).sum())
        worst = max(worst, float((got - expected).abs().max()))
    return f"{yes_no(mismatches == 0)} (2 x {samples} sampled points, max diff {worst:.1e})"


def bench_chamfer(xyz: torch.Tensor, other: torch.Tensor, repeats: int, threads: int) -> list[dict]:
    n, device = xyz.shape[1], xyz.device
    work = f"1 x {n} vs {n}, forward + backward"
    x, y = xyz.clone().requires_grad_(), other.clone().requires_grad_()

    def step(fn):
        def run():
            x.grad = y.grad = None
            loss = fn()
            loss.backward()
            return loss.detach(), x.grad.clone(), y.grad.clone()
        return run

    def dense():
        d = torch.cdist(x, y) ** 2
        return d.min(dim=2).values.mean() + d.min(dim=1).values.mean()

    def close(got, want, rtol: float) -> str:
        """Loss and both gradients against the reference's, computed: the loss's relative difference, and the
        points whose gradient differs by more than rtol of the largest gradient (another nearest neighbour)."""
        loss, grads = got[0], got[1:]
        loss_diff = float((loss - want[0]).abs() / want[0].abs().clamp_min(1e-30))
        scale = max(float(w.abs().max()) for w in want[1:])
        differ = sum(int(((g - w).abs() > rtol * scale).any(dim=-1).sum()) for g, w in zip(grads, want[1:]))
        total = sum(g.shape[0] * g.shape[1] for g in grads)
        ok = loss_diff <= rtol and differ == 0
        return f"{yes_no(ok)} (loss rel diff {loss_diff:.1e}; {differ} of {total} point gradients differ)"

    auto = step(lambda: chamfer_distance(x, y))
    reference = step(lambda: chamfer_distance(x, y, backend="torch"))
    impls, notes = {"pcmae chamfer_distance (auto)": auto}, {}
    pairs = 2.0 * n * n
    run_reference = not (device.type == "cpu" and pairs > TORCH_PAIRS_LIMIT_CPU)
    if run_reference:
        impls["pcmae backend='torch' (chunked)"] = reference
    dense_bytes = n * n * xyz.element_size()
    if dense_bytes <= DENSE_LIMIT_BYTES:
        impls["dense torch.cdist"] = step(dense)
        notes["dense torch.cdist"] = "mm-based distances: equal up to rounding"
    times, cpu = median_wall_and_cpu_ms(impls, repeats, device)
    expected = reference() if run_reference else None
    rows = []
    for name, fn in impls.items():
        if name == "pcmae backend='torch' (chunked)":
            same = "(is the reference)"
        elif expected is not None:
            same = close(fn(), expected, 1e-5 if name.startswith("pcmae") else 1e-3)
        elif name.startswith("pcmae"):
            same = sampled_nearest_check(x, y, CHAMFER_SAMPLES, seed=n)
        else:
            same = "not checked"
        rows.append(row("Chamfer-L2", n, threads, work, name, times[name], same, notes.get(name, ""), cpu[name]))
    if not run_reference:
        rows.append(row("Chamfer-L2", n, threads, work, "pcmae backend='torch' (chunked)", None, "",
                        f"skipped ({pairs:.1e} point pairs on CPU)"))
    if dense_bytes > DENSE_LIMIT_BYTES:
        rows.append(row("Chamfer-L2", n, threads, work, "dense torch.cdist", None, "",
                        f"skipped (would allocate {dense_bytes / 2**30:.1f} GiB)"))
    return rows


def bench_ops(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for threads in args.threads:
        with torch_threads(threads) as used:
            for n in args.sizes:
                g = torch.Generator().manual_seed(n)
                xyz = torch.rand(1, n, 3, generator=g).to(device)
                other = torch.rand(1, n, 3, generator=g).to(device)
                rows += bench_fps(xyz, args.repeats, used)
                rows += bench_knn(xyz, args.repeats, used)
                rows += bench_chamfer(xyz, other, args.repeats, used)
    return rows


# ------------------------------------------------------------------------------- sections in benchmarks/

def bench_voxelize_section(args: argparse.Namespace) -> list[dict]:
    """Voxelization of tiled real KITTI sweeps (KITTI range, 0.05 x 0.05 x 0.1 m, cap 5 and no cap), pcmae against
    torch.unique on a flat key and spconv's PointToVoxel, same threads, equality columns computed."""
    return format_rows(bench_voxelize(args.voxel_sizes, args.repeats, args.threads, device=args.device))


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
    "odometry": bench_odometry,
    "temporal_step": temporal_step.section,
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
    parser.add_argument("--voxel-sizes", default="100000,1000000,2000000",
                        help="comma-separated point counts (voxelize)")
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts; ops and voxelize run once per value (same for all sides)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per row (train)")
    parser.add_argument("--upstream", default=None,
                        help="Point-MAE checkout whose model code the train section times next to pcmae's")
    parser.add_argument("--before", default="6dc3b55", help="earlier pcmae revision the train section times "
                                                            "('none': skip)")
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
        args.threads = [int(s) for s in args.threads.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes / --voxel-sizes / --threads must be comma-separated integers, got {args.sizes!r}, "
                     f"{args.voxel_sizes!r}, {args.threads!r}")
    if not args.threads or min(args.threads) < 1:
        parser.error("--threads needs counts >= 1")
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
