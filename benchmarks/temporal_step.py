"""T-MAE training step against a Voxel-MAE step on the same current frame, at two sweep sizes: time, peak memory,
time per token and matrix-multiply work, to see how the cost grows with the tokens.

The pair is two consecutive real HDL-64E sweeps, patchwork-plusplus/data/000001.bin (current) and 000000.bin
(past), from ../shared/data (or $PCMAE_SHARED_DATA); no poses come with them, so the past sweep is moved by a
fixed ego motion of PAST_SHIFT_M metres along x (the measured motion between the two, as seen from the current
sensor; it changes which voxels the past frame fills, not how the cost scales). Without them: frames 1 and 0 of a
simulated HDL-64E scene aligned by their poses (pcmae.data.LidarSequence over SimulatedLidarSweeps). Grid: KITTI's
range and its mirror behind the sensor, [-70.4, 70.4] x [-40, 40] x [-3, 1] m, in --voxel m cubes (0.2 by default).
Sizes on that one grid: the whole sweeps ("full"), and their front halves, x >= 0 of both frames ("half", KITTI's
own range).
Models, with the same tokenizer, backbone (lidar_step's transformer) and masking (random 0.7): VoxelMAE;
TemporalMAE (shared encoder, fusion depth 2, patch 64) with its defaults, which include pcmae's reading of the past
at the decoded query voxels; and TemporalMAE without that reading (T-MAE's own design, "encoder fusion only").
A step is forward + backward + AdamW; timing rule of benchmarks/timing.py (one warm-up step, the median of
--repeats steps; wall and process CPU time) at --threads threads; each (model, size) in a fresh process, peak
memory as in benchmarks/lidar_step.py (resident high-water mark during the steps minus the resident size before
them). "tokens" = voxels the step tokenizes: the current frame's (Voxel-MAE), plus the past
frame's (T-MAE); "encoded" = tokens through the encoder: the visible current voxels, plus the whole past frame
(T-MAE); time per token = step time / tokens; matmul GFLOP = the step's matrix-multiply work (counted by
torch.utils.flop_counter), the part of the cost that does not depend on the machine.

    python -m benchmarks.temporal_step [--repeats 3] [--threads 1] [--voxel 0.2]

glibc's malloc returns every block above its mmap threshold (at most 32 MB) to the kernel when it is freed, so
the activations of a large step come back as fresh pages each step (page faults, kernel zeroing): that time grows
faster than the tokens (the work does not: see the GFLOP ratio). The "malloc" column records the MALLOC_*
environment of the run; to keep freed memory in the heap instead, run with

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 python -m benchmarks.temporal_step
"""
from __future__ import annotations

import argparse
import inspect
import multiprocessing as mp
import os
import queue as queue_module

from benchmarks import shared_data_root
from benchmarks.lidar_step import MODELS, _reset_peak, _status_mb

PAST_SHIFT_M = 0.7  # ego motion from 000000 to 000001 along x; the past frame seen from the current sensor: -x
FRAME_PERIOD_S = 0.1  # HDL-64E at 10 Hz
FUSION = {"depth": 2, "num_heads": 4, "patch_size": 64}
KINDS = ("voxel_mae", "temporal_mae", "temporal_mae encoder fusion only")
RANGE = (-70.4, -40.0, -3.0, 70.4, 40.0, 1.0)  # KITTI's range and its mirror behind the sensor
SIZES = ("full", "half")  # the whole sweeps; their front halves (x >= 0)
MASK_SEED = 0


def pair_paths():
    root = shared_data_root() / "patchwork-plusplus" / "data"
    return root / "000001.bin", root / "000000.bin"


def load_pair():
    """(current (N, 4) float32, past (M, 4) float32 in the current sensor frame, description)."""
    import torch

    current_path, past_path = pair_paths()
    if current_path.is_file() and past_path.is_file():
        from pcmae.io import load_points
        current = torch.from_numpy(load_points(current_path, layout="kitti"))
        past = torch.from_numpy(load_points(past_path, layout="kitti")).clone()
        past[:, 0] -= PAST_SHIFT_M
        return current, past, (f"KITTI HDL-64E {current_path.name} + {past_path.name} "
                               f"(past moved {-PAST_SHIFT_M} m along x)")
    from pcmae.data import LidarSequence
    item = LidarSequence({"type": "SimulatedLidarSweeps", "num_frames": 2, "beams": "hdl64"}, gap=1)[0]
    return (item["points"][:, :4], item["past_points"][:, :4],
            "simulated HDL-64E frames 1 + 0, aligned by pose (patchwork-plusplus sweeps not found)")


def make_batch(current, past, size: str) -> dict:
    """Both frames ("full") or their points with x >= 0 ("half") -> a one-sample LidarSequence batch."""
    import torch

    from pcmae.structures import PointBatch
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if size == "half":
        current, past = current[current[:, 0] >= 0], past[past[:, 0] >= 0]
    return {"points": PointBatch.from_list([current]), "past_points": PointBatch.from_list([past]),
            "dt": torch.tensor([FRAME_PERIOD_S], dtype=torch.float32)}


def build_model(kind: str, voxel: float, point_cloud_range):
    import torch

    from pcmae.pretrainers import TemporalMAE, VoxelMAE
    torch.manual_seed(0)
    common = dict(point_channels=4, voxel_size=(voxel,) * 3, point_cloud_range=point_cloud_range,
                  max_points_per_voxel=5, masking={"type": "random", "ratio": 0.7}, **MODELS["transformer"])
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
    if kind == "voxel_mae":
        return VoxelMAE(**common)
    extra = encoder_fusion_only(TemporalMAE) if kind == "temporal_mae encoder fusion only" else {}
    return TemporalMAE(share_encoder=True, fusion=FUSION, **extra, **common)


def encoder_fusion_only(temporal_mae_class) -> dict:
    """TemporalMAE keywords of T-MAE's own design, the past read by the encoder-side fusion only: no reading of the
    past at the decoded query voxels (past_at_queries: false; query_fusion depth 0 before that keyword existed)."""
    if "past_at_queries" in inspect.signature(temporal_mae_class).parameters:
        return {"past_at_queries": False}
    return {"query_fusion": {"depth": 0}}


def count_tokens(model, batch: dict) -> dict:
    """Current voxels, visible (encoded) current voxels, past voxels of the batch under ``model``'s grid."""
    import torch

    with torch.no_grad():
        current = model.tokenizer(batch["points"])
        past = model.tokenizer(batch["past_points"])
        mask = model.draw_mask(current, torch.Generator().manual_seed(MASK_SEED))
    return {"current": len(current.coords), "visible": int((~mask).sum()), "past": len(past.coords)}


def _measure(kind: str, size: str, args: argparse.Namespace, queue) -> None:
    try:
        queue.put(measure(kind, size, args))
    except BaseException as error:  # the parent reports it instead of waiting forever
        queue.put({"error": f"{kind} {size}: {type(error).__name__}: {error}"})


def measure(kind: str, size: str, args: argparse.Namespace) -> dict:
    """One (model, size) row, in the calling process."""
    import torch

    from benchmarks.timing import median_wall_and_cpu_ms, torch_threads

    current, past, source = load_pair()
    batch = make_batch(current[::args.every], past[::args.every], size)
    model = build_model(kind, args.voxel, args.range)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch_threads(args.threads) as threads:
        tokens = count_tokens(model, batch)
        _reset_peak()
        before = _status_mb("VmRSS")
        wall, cpu = median_wall_and_cpu_ms({"step": step}, args.repeats)
        peak = _status_mb("VmHWM") - before
        flops = matmul_flops(model, batch)
    past = 0 if kind == "voxel_mae" else tokens["past"]
    return {"model": kind, "size": size, "threads": threads, "sweep": source, "malloc": malloc_setting(),
            "points (current + past)": f"{len(batch['points'].xyz)} + {len(batch['past_points'].xyz)}",
            "current voxels": tokens["current"], "visible voxels": tokens["visible"],
            "past voxels": past,
            "tokens": tokens["current"] + past, "encoded": tokens["visible"] + past,
            "step s": wall["step"] / 1e3, "step CPU s": cpu["step"] / 1e3, "peak MB": peak, "flops": flops}


def matmul_flops(model, batch: dict) -> int:
    """Matrix-multiply FLOPs of one forward + backward (torch's FlopCounterMode: mm, addmm, bmm; the CPU attention
    kernel inside the 64-token patches is not counted), gradients cleared after."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def malloc_setting() -> str:
    """The glibc malloc environment this process started with ("default" when none is set)."""
    return " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")) or "default"


def bench_temporal_step(args: argparse.Namespace) -> list[dict]:
    """Rows for each size and model, each measured in a fresh process (unless args.in_process), with the computed
    ratio columns."""
    ctx = mp.get_context("spawn")
    raw = {}
    for size in SIZES:
        for kind in KINDS:
            raw[kind, size] = measure(kind, size, args) if args.in_process else run_fresh(ctx, kind, size, args)
    return [format_row(raw, kind, size) for size in SIZES for kind in KINDS]


def run_fresh(ctx, kind: str, size: str, args: argparse.Namespace) -> dict:
    """``measure`` in a new process; its error, or its death without a result, raised here as one line."""
    results = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, size, args, results))
    proc.start()
    while True:
        try:
            result = results.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"benchmarks.temporal_step: the {kind} {size} process exited with code "
                                   f"{proc.exitcode} before reporting (out of memory?)") from None
    proc.join()
    if "error" in result:
        raise RuntimeError(f"benchmarks.temporal_step: {result['error']}")
    return result


def section(args: argparse.Namespace) -> list[dict]:
    """tools/benchmark.py's temporal_step section: its --repeats, the first of its --threads, the default grid."""
    return bench_temporal_step(argparse.Namespace(repeats=args.repeats, threads=args.threads[0], voxel=0.2,
                                                  range=list(RANGE), every=1, in_process=False))


def format_row(raw: dict, kind: str, size: str) -> dict:
    """One measured row plus: time per token, T-MAE / Voxel-MAE time and memory at this size, and full / half
    time against full / half tokens (equal for a cost linear in tokens)."""
    r = raw[kind, size]
    single = raw["voxel_mae", size]
    full, half = raw[kind, "full"], raw[kind, "half"]
    return {**{k: r[k] for k in ("model", "size", "threads", "points (current + past)", "current voxels",
                                 "visible voxels", "past voxels", "tokens", "encoded")},
            "step s": f"{r['step s']:.3f}", "step CPU s": f"{r['step CPU s']:.3f}", "peak MB": f"{r['peak MB']:.0f}",
            "us / token": f"{1e6 * r['step s'] / r['tokens']:.1f}", "matmul GFLOP": f"{r['flops'] / 1e9:.1f}",
            "time / Voxel-MAE": f"{r['step s'] / single['step s']:.2f}",
            "peak / Voxel-MAE": f"{r['peak MB'] / max(single['peak MB'], 1e-9):.2f}",
            "full / half: time vs tokens": f"{full['step s'] / half['step s']:.2f} vs "
                                           f"{full['tokens'] / half['tokens']:.2f}",
            "full / half GFLOP": f"{full['flops'] / half['flops']:.2f}",
            "malloc": r["malloc"], "sweep": r["sweep"]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads, same for every row")
    parser.add_argument("--voxel", type=float, default=0.2, help="voxel edge, metres")
    parser.add_argument("--range", type=float, nargs=6, default=list(RANGE),
                        metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"), help="point cloud range, metres")
    parser.add_argument("--every", type=int, default=1, help="keep every k-th point of both frames (quick checks)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every row in this process (quick check; peak memory not comparable between rows)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or args.every < 1 or not args.voxel > 0:
        parser.error("--repeats, --threads and --every must be >= 1, --voxel > 0")
    return args


def main(argv=None) -> list[dict]:
    rows = bench_temporal_step(parse_args(argv))
    for r in rows:
        print(r)
    return rows


if __name__ == "__main__":
    main()
