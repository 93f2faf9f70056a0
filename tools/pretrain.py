#!/usr/bin/env python
"""Pre-train a masked autoencoder from a YAML config.

    python tools/pretrain.py configs/point_mae/demo.yaml [--work-dir DIR] [--resume] [train.epochs=20 ...]
    torchrun --nproc_per_node=4 tools/pretrain.py configs/point_mae/shapenet55.yaml

Writes to the work dir: config.yaml, checkpoint_last.pth (+ per-epoch), metrics.jsonl, log.txt,
tb/ (TensorBoard) and a picture for a few samples: reconstruction.png (objects: input / visible / reconstructed)
or bev.png (LiDAR: visible / hidden / predicted occupied voxels from above).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pcmae.engine.build import build_dataset, build_model, command_line, load_checked_config
from pcmae.engine.config import TrainConfig
from pcmae.engine.rng import seed_everything
from pcmae.engine.distributed import is_main_process
from pcmae.engine.trainer import Trainer
from pcmae.evaluation.bev import save_model_bev
from pcmae.evaluation.reconstruction import save_model_reconstructions


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <work-dir>/checkpoint_last.pth")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    return parser.parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_checked_config(args.config, args.overrides)
    work_dir = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)
    seed_everything(cfg["train"].get("seed", 0))  # model init is part of the seeded run
    model = build_model(cfg["model"])
    train_set = build_dataset(cfg["data"]["train"])
    trainer = Trainer(model, train_set, TrainConfig.from_dict(cfg["train"]), work_dir, config=cfg,
                      collate_fn=getattr(train_set, "collate_fn", None))  # LiDAR sweeps pack without padding
    summary = trainer.fit(resume=args.resume)
    if is_main_process():
        if hasattr(model, "reconstruct"):
            png = save_model_reconstructions(model, train_set, work_dir / "reconstruction.png",
                                             num_samples=trainer.cfg.vis_samples)
            print(f"reconstructions: {png}")
        elif hasattr(model, "predict_occupancy"):
            png = save_model_bev(model, train_set, work_dir / "bev.png", num_samples=min(trainer.cfg.vis_samples, 2))
            print(f"bird's-eye view: {png}")
    return summary


if __name__ == "__main__":
    command_line(main)()
