#!/usr/bin/env python
"""Few-shot classification (Point-BERT / Point-MAE's ModelNet40 protocol): fine-tune on each N-way K-shot fold,
test on the fold's 20 clouds per class, report the mean +- std accuracy over folds.

    python tools/fewshot.py configs/point_mae/fewshot_demo.yaml --pretrained work_dirs/point_mae_demo/checkpoint_last.pth --way 5 --shot 10 --folds 10
    python tools/fewshot.py configs/point_mae/modelnet40_fewshot.yaml --pretrained pretrain.pth --way 10 --shot 20 --folds 10

Each fold is a full fine-tuning run (the config's model and train sections, the encoder from --pretrained, none
for training from scratch) with data.train / data.val set to the fold: way, shot and fold are put into both
dataset sections (ModelNetFewShot reads Point-MAE's folds, SyntheticFewShot draws them from the embedded
objects). Per fold, "last" is the plain accuracy of the final weights on the fold's test clouds; "best" is the
best val/acc over epochs (train.save_best: val/acc), the number Point-MAE reports (its validation set is the
fold's test set). std is the population standard deviation over folds (numpy's default). Runs go to
<work-dir>/<way>way_<shot>shot/fold<i>/, the summary to <work-dir>/<way>way_<shot>shot.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from finetune import pretrained_state  # tools/ is on sys.path when this file runs as a script
from pcmae.engine.build import build_dataset, build_model, command_line, default_work_dir, load_checked_config
from pcmae.engine.checkpoint import atomic_write
from pcmae.engine.config import TrainConfig
from pcmae.engine.rng import seed_everything
from pcmae.engine.trainer import Trainer
from pcmae.evaluation.classification import PROTOCOLS, evaluate_accuracy
from pcmae.registry import ConfigError


def run_fold(cfg: dict, encoder_state, work_dir: Path, protocols, overwrite: bool) -> dict:
    """Fine-tune one fold; {"last": {protocol: accuracy}, "best": (best val/acc, epoch) or None}."""
    seed_everything(cfg["train"].get("seed", 0))
    model = build_model(cfg["model"])
    if encoder_state is not None:
        model.load_encoder_from_pretrainer(encoder_state)
    train_set = build_dataset(cfg["data"]["train"])
    val_set = build_dataset(cfg["data"]["val"], where="data.val")
    trainer = Trainer(model, train_set, TrainConfig.from_dict(cfg["train"]), work_dir, val_dataset=val_set, config=cfg)
    trainer.fit(overwrite=overwrite)
    last = {p: evaluate_accuracy(model, val_set, protocol=p)["accuracy"] for p in protocols}
    best = None
    if trainer.best is not None and trainer.cfg.save_best == "val/acc":
        best = {"accuracy": float(trainer.best[0]), "epoch": int(trainer.best[1])}
    return {"last": last, "best": best, "num_train": len(train_set), "num_test": len(val_set)}


def summarise(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "folds": values.tolist()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--pretrained", help="encoder weights (pcmae pre-training or Point-MAE checkpoint); "
                                             "without it every fold trains from scratch")
    parser.add_argument("--way", type=int, default=5, help="classes per fold (Point-MAE: 5 or 10)")
    parser.add_argument("--shot", type=int, default=10, help="training clouds per class (Point-MAE: 10 or 20)")
    parser.add_argument("--folds", type=int, default=10, help="folds 0..folds-1 (Point-MAE: 10)")
    parser.add_argument("--protocol", nargs="+", default=["plain"], choices=sorted(PROTOCOLS),
                        help="protocols of the final-weights accuracy (default: plain)")
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/<config path below configs/>)")
    parser.add_argument("--overwrite", action="store_true", help="start over in fold folders that hold a run")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    if args.folds < 1:
        raise ConfigError(f"--folds must be >= 1, got {args.folds}")

    episode = f"{args.way}way_{args.shot}shot"
    base = load_checked_config(args.config, args.overrides)
    if base["model"].get("num_classes", 0) < args.way:
        raise ConfigError(f"{args.config}: model.num_classes={base['model'].get('num_classes')} is fewer than "
                          f"--way {args.way}")
    work_dir = default_work_dir(args.config, {"work_dir": args.work_dir} if args.work_dir else base) / episode
    encoder_state = pretrained_state(args.pretrained, base["model"]) if args.pretrained else None

    folds = []
    for fold in range(args.folds):
        fold_keys = [f"data.{s}.{k}={v}" for s in ("train", "val")
                     for k, v in (("way", args.way), ("shot", args.shot), ("fold", fold))]
        cfg = load_checked_config(args.config, [*args.overrides, *fold_keys])
        result = run_fold(cfg, encoder_state, work_dir / f"fold{fold}", args.protocol, args.overwrite)
        folds.append(result)
        best = f", best val/acc {100 * result['best']['accuracy']:.2f} % (epoch {result['best']['epoch']})" \
            if result["best"] else ""
        print(f"fold {fold}: {result['num_train']} train / {result['num_test']} test clouds, last weights "
              + ", ".join(f"{p} {100 * a:.2f} %" for p, a in result["last"].items()) + best, flush=True)

    summary = {"config": str(args.config), "pretrained": args.pretrained, "way": args.way, "shot": args.shot,
               "last": {p: summarise([f["last"][p] for f in folds]) for p in args.protocol}}
    if all(f["best"] for f in folds):
        summary["best"] = summarise([f["best"]["accuracy"] for f in folds])
    print(f"{episode}, {args.folds} folds, accuracy mean +- std over folds:")
    for p, s in summary["last"].items():
        print(f"  last weights, {p}: {100 * s['mean']:.1f} +- {100 * s['std']:.1f} %")
    if "best" in summary:
        print(f"  best epoch (val/acc on the fold's test clouds, as Point-MAE reports): "
              f"{100 * summary['best']['mean']:.1f} +- {100 * summary['best']['std']:.1f} %")
    atomic_write(work_dir.parent / f"{episode}.json",
                 lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return summary


if __name__ == "__main__":
    command_line(main)()
