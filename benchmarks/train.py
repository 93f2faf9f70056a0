"""Point-MAE pre-training speed: optimizer steps per second at batch 32 on 1024-point clouds, side by side.

The paper's model (64 groups x 32 points, ViT-S 384 x 12, decoder 4, mask ratio 0.6, drop path 0.1, AdamW) as
up to three model codes in one process, started from the same weights, timed interleaved step by step at the
same thread count (each: one warm-up step, then the median of ``--steps``):

* ``pcmae``: this checkout's PointMAE;
* ``upstream``: the original Point-MAE model code, built from a checkout given with ``--upstream PATH``
  (benchmarks/upstream_point_mae.py: CPU stand-ins for its CUDA extensions; FPS and kNN are pcmae's in both);
* ``pcmae <rev>``: PointMAE of an earlier pcmae revision (``--before``, default 6dc3b55), read with
  ``git archive`` from this repository.

A step is forward + backward + AdamW on a fixed batch; augmentation is off in every code (upstream runs it in
its training loop, outside the model). The column ``train loss |diff|`` is computed, not asserted: the
train-mode loss of each code on the same batch with the same mask, the same weights and the same torch seed
(so the same drop-path draws), minus pcmae's. ``tokenizer ms`` times the parameter-free FPS + kNN alone.
``CPU s / step`` is the process's CPU time per step (all threads): on a shared machine, the part of a
one-thread step that does not depend on waiting for a core.
Rows for pcmae alone follow: bf16 autocast and the demo model (32 x 16, 192 x 4), at the last thread count.

    python -m benchmarks.train [--threads 1,2] [--steps 3] [--upstream /tmp/upstream_point_mae] [--before 6dc3b55]
        [--device cpu]
"""
from __future__ import annotations

import argparse
import atexit
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import median_ms, median_wall_and_cpu_ms, torch_threads
from pcmae.integrations.point_mae_checkpoint import convert_state_dict
from pcmae.pretrainers import PointMAE

PAPER = dict(num_groups=64, group_size=32, embed_dim=384, depth=12, num_heads=6, decoder_depth=4,
             decoder_num_heads=6, drop_path_rate=0.1)
DEMO = dict(num_groups=32, group_size=16, embed_dim=192, depth=4, num_heads=3, decoder_depth=2, decoder_num_heads=3)
REPO = Path(__file__).resolve().parents[1]
BATCH, NUM_POINTS = 32, 1024


class Side:
    """One model code: a model, its optimizer, one training step, and its loss for a given mask."""

    def __init__(self, name: str, model: torch.nn.Module, loss_fn: Callable, masked_loss_fn: Callable,
                 tokenizer: Callable, amp: bool = False):
        self.name, self.model, self.loss_fn, self.masked_loss_fn = name, model, loss_fn, masked_loss_fn
        self.tokenizer, self.amp = tokenizer, amp
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step(self, points: torch.Tensor) -> None:
        with torch.autocast(points.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss_fn(points)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def pcmae_side(name: str, cls: type, cfg: dict, state: dict | None, device, amp: bool = False) -> Side:
    """A PointMAE (this checkout's or an earlier revision's class), weights from ``state`` when given."""
    model = cls(**cfg, augment="none")
    if state is not None:
        model.load_state_dict(state, strict=True)
    model = model.to(device).train()

    def masked_loss(points, mask):
        latent, mask, groups = model.forward_encoder(points, mask)
        return model.forward_loss(model.forward_decoder(latent, groups.centers, mask), groups.neighborhoods, mask)

    return Side(name, model, lambda points: model({"points": points})["loss"], masked_loss, model.grouper, amp)


def upstream_side(checkout: str, cfg: dict, device) -> Side:
    """Upstream's Point_MAE from ``checkout``; its forward draws the mask from numpy's global RNG."""
    from benchmarks.upstream_point_mae import build_upstream, load_upstream

    model = build_upstream(load_upstream(checkout), **cfg).to(device).train()

    def masked_loss(points, mask):  # ``mask`` was drawn by upstream_mask right after np.random.seed(MASK_SEED)
        np.random.seed(MASK_SEED)
        return model(points)

    return Side("upstream Point-MAE", model, model, masked_loss, model.group_divider)


MASK_SEED = 0


def load_pcmae_class(rev: str) -> type:
    """PointMAE as of git revision ``rev`` of this repository (its pcmae package imported from a temporary
    copy; ``sys.modules`` restored afterwards)."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "pcmae"], check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or str(e).encode()
        raise RuntimeError(f"--before {rev}: cannot read pcmae at that revision with git archive in {REPO}: "
                           f"{detail.decode(errors='replace').strip()}") from None
    root = tempfile.mkdtemp(prefix=f"pcmae_{rev}_")
    atexit.register(shutil.rmtree, root, True)  # kept while the process runs (the old code may import lazily)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    saved = {k: m for k, m in sys.modules.items() if k == "pcmae" or k.startswith("pcmae.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, root)
    try:
        from pcmae.pretrainers import PointMAE as Old  # the copy at ``rev``
        return Old
    finally:
        sys.path.remove(root)
        for k in [k for k in sys.modules if k == "pcmae" or k.startswith("pcmae.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def build_sides(args: argparse.Namespace, device) -> list[Side]:
    """pcmae, then upstream (if --upstream), then pcmae at --before (unless 'none'), all with one set of weights."""
    torch.manual_seed(0)
    sides, state = [], None
    upstream = getattr(args, "upstream", None)
    if upstream:
        up = upstream_side(upstream, PAPER, device)
        state = convert_state_dict({k: v.cpu() for k, v in up.model.state_dict().items()})[0]
    pcmae = pcmae_side("pcmae", PointMAE, PAPER, state, device)
    sides.append(pcmae)
    if upstream:
        sides.append(up)
    before = getattr(args, "before", "6dc3b55")
    if before and before != "none":
        state = {k: v.cpu() for k, v in pcmae.model.state_dict().items()}
        sides.append(pcmae_side(f"pcmae {before}", load_pcmae_class(before), PAPER, state, device))
    return sides


def loss_differences(sides: list[Side], points: torch.Tensor) -> list[float]:
    """|train-mode loss - pcmae's| per side: same batch, mask, weights and torch seed (drop-path draws)."""
    names = [s.name for s in sides]
    if "upstream Point-MAE" in names:
        from benchmarks.upstream_point_mae import upstream_mask
        np.random.seed(MASK_SEED)
        mask = upstream_mask(sides[names.index("upstream Point-MAE")].model, points)
    else:
        from pcmae.masking import random_mask
        mask = random_mask(points.shape[0], PAPER["num_groups"], 0.6, points.device,
                           torch.Generator(points.device).manual_seed(MASK_SEED))
    losses = []
    with torch.no_grad():
        for side in sides:
            torch.manual_seed(1)
            losses.append(float(side.masked_loss_fn(points, mask)))
    return [abs(loss - losses[0]) for loss in losses]


def bench_train(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    points = torch.rand(BATCH, NUM_POINTS, 3, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    threads = getattr(args, "threads", None) or [None]
    sides = build_sides(args, device)
    diffs = loss_differences(sides, points)
    rows = []
    for t in threads:
        with torch_threads(t) as n:
            step_ms, cpu_ms = median_wall_and_cpu_ms({s.name: (lambda s=s: s.step(points)) for s in sides},
                                                     args.steps, device)
            token_ms = median_ms({s.name: (lambda s=s: s.tokenizer(points)) for s in sides}, args.steps, device)
        rates = {name: 1e3 / ms for name, ms in step_ms.items()}
        for side, diff in zip(sides, diffs):
            rows.append(_row("paper (64x32, 384x12)", side.name, "float32", n, step_ms[side.name],
                             cpu_ms[side.name], rates, f"{diff:.1e}", token_ms[side.name]))
    del sides
    with torch_threads(threads[-1]) as n:
        for name, cfg, amp in (("paper (64x32, 384x12)", PAPER, True), ("demo (32x16, 192x4)", DEMO, False)):
            torch.manual_seed(0)
            side = pcmae_side("pcmae", PointMAE, cfg, None, device, amp)
            wall, cpu = median_wall_and_cpu_ms({"step": lambda: side.step(points)}, args.steps, device)
            token = median_ms({"tok": lambda: side.tokenizer(points)}, args.steps, device)["tok"]
            rows.append(_row(name, "pcmae", "bf16 autocast" if amp else "float32", n, wall["step"], cpu["step"],
                             {}, "-", token))
    return rows


def _row(model: str, code: str, precision: str, threads: int, ms: float, cpu_ms: float, rates: dict, diff: str,
         token_ms: float) -> dict:
    rate = 1e3 / ms
    ratio = {other: f"{rate / r:.2f}x" for other, r in rates.items()}
    return {"model": model, "code": code, "precision": precision, "threads": threads, "batch": BATCH,
            "points": NUM_POINTS, "s / step": f"{ms / 1e3:.2f}", "CPU s / step": f"{cpu_ms / 1e3:.2f}",
            "steps / s": f"{rate:.3f}",
            "clouds / s": f"{BATCH * rate:.1f}", "vs upstream": ratio.get("upstream Point-MAE", "-"),
            "vs pcmae before": next((v for k, v in ratio.items() if k.startswith("pcmae ")), "-"),
            "train loss |diff|": diff, "tokenizer (FPS + kNN) ms": f"{token_ms:.0f}"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (median)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, same for every code")
    parser.add_argument("--upstream", default=None, help="path of a Point-MAE checkout (github.com/Pang-Yatian/"
                                                         "Point-MAE); its model code is timed next to pcmae's")
    parser.add_argument("--before", default="6dc3b55", help="earlier pcmae git revision to time ('none': skip)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if not args.threads or min(args.threads) < 1 or args.steps < 1:
        parser.error("--threads needs counts >= 1 and --steps >= 1")
    return args


def main(argv=None) -> list[dict]:
    rows = bench_train(parse_args(argv))
    for r in rows:
        print(r)
    return rows


if __name__ == "__main__":
    main()
