#!/usr/bin/env python
"""Pre-train a masked autoencoder from a YAML config.

    python tools/pretrain.py configs/point_mae/demo.yaml [--work-dir DIR] [train.epochs=20 ...]
    python tools/pretrain.py configs/point_mae/demo.yaml --resume            # continue checkpoint_last.pth
    python tools/pretrain.py configs/voxel_mae/kitti.yaml --load-from other/checkpoint_best.pth
    torchrun --nproc_per_node=4 tools/pretrain.py configs/point_mae/shapenet55.yaml train.sync_bn=true

Writes to the work dir (default ``work_dirs/<config path below configs/>``): config.yaml, checkpoint_last.pth,
per-epoch / best checkpoints (train.max_keep_ckpts, train.save_best), metrics.jsonl, log.txt, tb/ (TensorBoard,
with pictures every train.vis_interval steps) and picture.png: the model's own drawing of a few training samples
(objects: input / visible / reconstructed; LiDAR: visible / hidden / predicted occupied voxels from above).
The config's data.val, when present, is validated every train.val_interval epochs.
"""
from __future__ import annotations

import argparse

from pcmae.engine.build import (add_run_arguments, build_dataset, build_model, check_run_arguments, command_line,
                                default_work_dir, load_checked_config)
from pcmae.engine.checkpoint import load_model_weights
from pcmae.engine.config import TrainConfig
from pcmae.engine.distributed import is_main_process
from pcmae.engine.rng import seed_everything
from pcmae.engine.trainer import Trainer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (see configs/)")
    add_run_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    return parser.parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_run_arguments(args)
    cfg = load_checked_config(args.config, args.overrides)
    work_dir = default_work_dir(args.config, {"work_dir": args.work_dir} if args.work_dir else cfg)
    seed_everything(cfg["train"].get("seed", 0))  # model init is part of the seeded run
    model = build_model(cfg["model"])
    if args.load_from:
        load_model_weights(model, args.load_from, cfg["model"]["type"])
    train_set = build_dataset(cfg["data"]["train"])
    val_set = build_dataset(cfg["data"]["val"], where="data.val") if "val" in cfg["data"] else None
    collate = getattr(train_set, "collate_fn", None)  # LiDAR sweeps pack without padding
    trainer = Trainer(model, train_set, TrainConfig.from_dict(cfg["train"]), work_dir, val_dataset=val_set,
                      config=cfg, collate_fn=collate, picture_dataset=train_set)
    summary = trainer.fit(resume=args.resume, overwrite=args.overwrite)
    if is_main_process() and trainer.picture_batch is not None:
        print(f"picture: {trainer.save_picture(work_dir / 'picture.png')}")
    return summary


if __name__ == "__main__":
    command_line(main)()
