#!/usr/bin/env python
"""Fine-tune an mmdet3d detector (configs/mmdet3d/) from pcmae pre-training, with mmdet3d's own runner.

    python tools/finetune_det.py configs/mmdet3d/second_kitti.py --pretrained work_dirs/radial_mae_kitti/checkpoint_last.pth
    python tools/finetune_det.py configs/mmdet3d/second_kitti_scratch.py --label-fraction 0.1 --seed 1
    python tools/finetune_det.py CONFIG [--work-dir DIR] [--max-iters N] [train_dataloader.batch_size=2 ...]

``--pretrained`` sets the checkpoint of every pcmae encoder (type Pcmae*) with a Pretrained init_cfg (a pcmae
pre-training checkpoint or an exported file); without it the config's ``pretrained`` path is used. Scratch
configs take no checkpoint. ``--label-fraction`` trains on a seeded subset of the training frames; ``--max-iters``
replaces the epoch schedule by N iterations (validation at the end). key=value overrides are mmengine's
(``a.b=1``, ``a.b=[1,2]``), checked: an unknown key is an error; ``+a.b=1`` adds a key.
Writes mmdet3d's logs and checkpoints to the work dir, then <work-dir>/finetune_summary.json: config,
pretrained path, fraction, seed, the metrics of every validation (the last one as ``final_metrics``) and the
loss curve of every iteration.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

try:
    from pcmae.integrations.mmdet3d import finetune as det
except ImportError as err:  # the mmdet3d stack is missing: say what to install, in one line
    sys.exit(f"error: {err}")
from pcmae.engine.build import command_line  # noqa: E402

SUMMARY = "finetune_summary.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="mmengine detector config (configs/mmdet3d/*.py)")
    parser.add_argument("--pretrained", help="checkpoint for the pcmae encoders (default: the config's)")
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    parser.add_argument("--label-fraction", type=float, default=1.0, help="fraction of training frames kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run and of the label subset")
    parser.add_argument("--max-iters", type=int, help="train this many iterations instead of the epoch schedule")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides, e.g. train_dataloader.batch_size=2 (+key=value adds a key)")
    return parser.parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = det.load_det_config(args.config, args.overrides)
    pretrained = det.set_pretrained(cfg, args.config, args.pretrained)
    work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(args.config).stem)
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=args.seed)
    # mmengine keeps one message hub / logger / visualizer per name in the process: a fresh name for each run
    cfg.experiment_name = f"{Path(args.config).stem}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:8]}"
    if cfg.get("visualizer"):
        cfg.visualizer["name"] = cfg.experiment_name
    kept, total = det.label_subset(cfg, args.label_fraction, args.seed)
    if args.max_iters is not None:
        det.limit_iterations(cfg, args.max_iters)

    import torch
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class MetricsRecorder(Hook):
        """Keeps the metrics of every validation."""

        def __init__(self):
            self.history = []

        def after_val_epoch(self, runner, metrics=None):
            self.history.append({"epoch": runner.epoch, "iter": runner.iter,
                                 "metrics": {k: det.to_float(v) for k, v in (metrics or {}).items()}})

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # mmdet3d's spconv encoders give wrong results with more CPU threads
        det.use_cpu_rotate_iou()  # KittiMetric's rotated IoU is a CUDA kernel
    runner = Runner.from_cfg(cfg)
    recorder = MetricsRecorder()
    runner.register_hook(recorder, priority="LOWEST")
    runner.train()

    scalars = runner.message_hub.log_scalars
    losses = {key[len("train/"):]: [det.to_float(v) for v in buffer.data[0]]
              for key, buffer in scalars.items() if key.startswith("train/") and "loss" in key}
    final = recorder.history[-1]["metrics"] if recorder.history else {}
    main_key = det.main_metric_key(cfg)
    summary = {
        "config": str(args.config), "pretrained": pretrained, "label_fraction": args.label_fraction,
        "train_frames": kept, "train_frames_total": total, "seed": args.seed, "max_iters": args.max_iters,
        "overrides": list(args.overrides), "work_dir": str(work_dir), "iterations": runner.iter,
        "main_metric": main_key, "main_metric_value": final.get(main_key) if main_key else None,
        "final_metrics": final, "validations": recorder.history, "loss_curve": losses,
    }
    det.write_json(work_dir / SUMMARY, summary)
    shown = f"{main_key} {final.get(main_key)}" if main_key in final else f"{len(final)} metrics"
    print(f"finetune_det: {runner.iter} iterations, {shown}; summary: {work_dir / SUMMARY}")
    return summary


if __name__ == "__main__":
    command_line(main)()
