"""Point-MAE pre-training speed: optimizer steps per second at batch 32 on 1024-point clouds.

Rows: the paper's model (64 groups x 32 points, ViT-S 384 x 12, decoder 4) in float32 and under bf16 autocast,
and the demo's model (32 x 16, 192 x 4). Each row times whole steps (tokenize + forward + backward + AdamW)
and, separately, the parameter-free tokenizer (FPS + kNN), which the original Point-MAE runs as CUDA
extensions (pointnet2_ops, knn_cuda) that have no CPU path at all.

    python -m benchmarks.train [--steps 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pcmae.pretrainers import PointMAE

PAPER = dict(num_groups=64, group_size=32, embed_dim=384, depth=12, num_heads=6, decoder_depth=4,
             decoder_num_heads=6, drop_path_rate=0.1)
DEMO = dict(num_groups=32, group_size=16, embed_dim=192, depth=4, num_heads=3, decoder_depth=2, decoder_num_heads=3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: PointMAE, points: torch.Tensor, steps: int, amp: bool) -> list[float]:
    """Seconds of each of ``steps`` training steps, after one warm-up step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = points.device
    times = []
    for i in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model({"points": points})["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return times


def time_tokenizer(model: PointMAE, points: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        _sync(points.device)
        start = time.perf_counter()
        model.grouper(points)
        _sync(points.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def bench_train(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    batch, num_points = 32, 1024
    points = torch.rand(batch, num_points, 3, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    rows = []
    for name, cfg, amp in (("paper (64x32, 384x12)", PAPER, False), ("paper (64x32, 384x12)", PAPER, True),
                           ("demo (32x16, 192x4)", DEMO, False)):
        torch.manual_seed(0)
        model = PointMAE(**cfg).to(device).train()
        steps = time_steps(model, points, args.steps, amp)
        step_s = statistics.median(steps)
        rows.append({"model": name, "precision": "bf16 autocast" if amp else "float32",
                     "threads": torch.get_num_threads(), "batch": batch,
                     "points": num_points, "s / step": f"{step_s:.2f}", "steps / s": f"{1 / step_s:.2f}",
                     "clouds / s": f"{batch / step_s:.0f}",
                     "tokenizer (FPS + kNN) ms": f"{1e3 * time_tokenizer(model, points, args.steps):.0f}"})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (median)")
    parser.add_argument("--device", default="cpu")
    rows = bench_train(parser.parse_args(argv))
    for r in rows:
        print(r)
    return rows


if __name__ == "__main__":
    main()
