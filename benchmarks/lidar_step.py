"""One LiDAR pre-training step on a full sweep: voxel tokenizer, then forward + backward + AdamW, for both
backbones (patch-attention transformer, spconv SparseEncoder), time and peak memory.

The sweep is KITTI 000000 from ../shared/data (or $PCMAE_SHARED_DATA) when present, else a simulated HDL-64E
sweep; SECOND's grid (0.05 x 0.05 x 0.1 m in [0, 70.4] x [-40, 40] x [-3, 1]). Each backbone runs in a fresh
process; peak memory is the resident-set high-water mark during the steps (VmHWM, reset after set-up) minus
the resident size before them.

    python -m benchmarks.lidar_step [--repeats 3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from pathlib import Path

from benchmarks import shared_data_root

KITTI_RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
SECOND_VOXEL = (0.05, 0.05, 0.1)
MODELS = {
    "transformer": dict(tokenizer={"type": "pointnet", "embed_dim": 128},
                        backbone={"type": "transformer", "embed_dim": 128, "depth": 4, "num_heads": 4,
                                  "patch_size": 64, "decoder_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4}),
    "sparse_conv": dict(tokenizer={"type": "mean"}, backbone={"type": "sparse_conv", "decoder_dim": 128}),
}


def kitti_sweep_path() -> Path:
    return shared_data_root() / "openpcdet" / "data" / "kitti" / "training" / "velodyne" / "000000.bin"


def load_sweep():
    """(points (N, 4) float32 tensor, description)."""
    import torch

    path = kitti_sweep_path()
    if path.is_file():
        from pcmae.io import load_points
        return torch.from_numpy(load_points(path, layout="kitti")), f"KITTI {path.name}"
    from pcmae.data import SimulatedLidarSweeps
    points = SimulatedLidarSweeps(num_frames=1, beams="hdl64")[0]["points"][:, :4]
    return points, "simulated HDL-64E (KITTI sweep not found)"


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc, in MB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def _reset_peak() -> None:
    """Start VmHWM again from the current size (Linux >= 4.0), so imports and set-up do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _measure(name: str, repeats: int, queue) -> None:
    import torch

    from pcmae.pretrainers import VoxelMAE
    from pcmae.structures import PointBatch

    points, source = load_sweep()
    batch = {"points": PointBatch.from_list([points])}
    torch.manual_seed(0)
    model = VoxelMAE(point_channels=4, voxel_size=SECOND_VOXEL, point_cloud_range=KITTI_RANGE,
                     max_points_per_voxel=5, **MODELS[name])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _reset_peak()
    before = _status_mb("VmRSS")
    token_times, step_times = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.no_grad():
            tokens = model.tokenizer(batch["points"])
        token_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - start)
    threads = f"{torch.get_num_threads()}" + (" (spconv calls: 1, race workaround)" if name == "sparse_conv" else "")
    queue.put({"backbone": name, "threads": threads, "sweep": source, "points": len(points),
               "voxels": len(tokens.coords),
               "tokenizer ms": f"{1e3 * statistics.median(token_times[1:]):.0f}",
               "train step s": f"{statistics.median(step_times[1:]):.2f}",
               "peak memory MB": f"{_status_mb('VmHWM') - before:.0f}"})


def bench_lidar_step(args: argparse.Namespace) -> list[dict]:
    from pcmae.backbones.spconv_compat import spconv_available

    rows = []
    ctx = mp.get_context("spawn")
    for name in MODELS:
        if name == "sparse_conv" and not spconv_available():
            rows.append({"backbone": name, "sweep": "skipped: spconv not installed"})
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(name, args.repeats, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    rows = bench_lidar_step(parser.parse_args(argv))
    for r in rows:
        print(r)
    return rows


if __name__ == "__main__":
    main()
