#!/usr/bin/env python
"""Fine-tune a classifier (ModelNet40, ScanObjectNN, ...) from a pre-trained encoder.

    python tools/finetune.py configs/point_mae/modelnet40_finetune.yaml --pretrained work_dirs/shapenet55/checkpoint_last.pth
    python tools/finetune.py configs/point_mae/scanobjectnn_pb_t50_rs.yaml --pretrained pretrain.pth  # Point-MAE's file

``--pretrained`` takes a pcmae checkpoint or a checkpoint released by Point-MAE's authors. After training,
the accuracy on ``data.val`` is printed and written to <work-dir>/eval.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pcmae.engine.build import build_dataset, build_model, command_line, load_checked_config
from pcmae.engine.checkpoint import load_checkpoint
from pcmae.engine.config import TrainConfig
from pcmae.engine.rng import seed_everything
from pcmae.engine.distributed import is_main_process
from pcmae.engine.trainer import Trainer
from pcmae.evaluation.classification import evaluate_accuracy
from pcmae.integrations.point_mae_checkpoint import convert_point_mae_file


def pretrained_state(path) -> dict:
    """pcmae state dict from a pcmae checkpoint, or from a Point-MAE release converted on the fly."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(ckpt, dict) and "base_model" in ckpt:
        return convert_point_mae_file(path)[1]
    return load_checkpoint(path)["model"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--pretrained", help="encoder weights (pcmae or Point-MAE checkpoint)")
    parser.add_argument("--work-dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)

    cfg = load_checked_config(args.config, args.overrides)
    work_dir = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)
    seed_everything(cfg["train"].get("seed", 0))  # model init is part of the seeded run
    model = build_model(cfg["model"])
    if args.pretrained and not args.resume:
        model.load_encoder_from_pretrainer(pretrained_state(args.pretrained))
    train_set = build_dataset(cfg["data"]["train"])
    trainer = Trainer(model, train_set, TrainConfig.from_dict(cfg["train"]), work_dir, config=cfg)
    trainer.fit(resume=args.resume)
    if is_main_process() and "val" in cfg["data"]:
        result = evaluate_accuracy(model, build_dataset(cfg["data"]["val"], where="data.val"))
        print(f"accuracy {100 * result['accuracy']:.2f} %, class mean {100 * result['class_mean_accuracy']:.2f} %")
        (work_dir / "eval.json").write_text(json.dumps(result, indent=2))
        return result


if __name__ == "__main__":
    command_line(main)()
