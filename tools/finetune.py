#!/usr/bin/env python
"""Fine-tune a classifier (ModelNet40, ScanObjectNN, ...) or a part segmenter (ShapeNetPart) from a pre-trained encoder.

    python tools/finetune.py configs/point_mae/modelnet40_finetune.yaml --pretrained work_dirs/point_mae/shapenet55/checkpoint_last.pth
    python tools/finetune.py configs/point_mae/scanobjectnn_pb_t50_rs.yaml --pretrained pretrain.pth  # Point-MAE's file
    python tools/finetune.py CONFIG --pretrained P train.layer_decay=0.75 --protocol plain vote
    python tools/finetune.py configs/point_mae/shapenetpart.yaml --pretrained pretrain.pth  # instance / class mIoU

``--pretrained`` takes a pcmae pre-training checkpoint or a checkpoint released by Point-MAE's authors (both read
weights-only: no code in a file is run). ``data.val`` is evaluated every ``train.val_interval`` epochs (logged as
val/acc; ``train.save_best: val/acc`` keeps checkpoint_best.pth). After training, the accuracy of the last and of
the best weights under each ``--protocol`` (plain; vote = Point-MAE's ModelNet40 voting) is printed and written
to <work-dir>/eval.json. The model class's ``evaluation`` attribute picks the scores (``EVALUATIONS``): a part
segmenter gets instance and class mIoU (pcmae/evaluation/segmentation.py) instead of accuracy.
"""
from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import dataclass
from typing import Callable

from pcmae.engine.build import (add_run_arguments, build_dataset, build_model, check_run_arguments, command_line,
                                default_work_dir, load_checked_config)
from pcmae.engine.checkpoint import CheckpointError, atomic_write, load_checkpoint, load_model_weights
from pcmae.engine.config import TrainConfig
from pcmae.engine.distributed import is_main_process
from pcmae.engine.rng import seed_everything
from pcmae.engine.trainer import BEST_CHECKPOINT, Trainer
from pcmae.evaluation import segmentation
from pcmae.evaluation.classification import PROTOCOLS, evaluate_accuracy
from pcmae.integrations.point_mae_checkpoint import NotPointMAEError, convert_point_mae_file
from pcmae.registry import MODELS, ConfigError


def pretrained_state(path, model_cfg: dict) -> dict:
    """pcmae state dict from a pcmae checkpoint, or from a Point-MAE release converted on the fly (weights-only).

    A Point-MAE file does not store its number of groups: it is converted with the fine-tuning config's
    ``model_cfg`` (num_groups, group_size, num_heads), and what its shapes reveal (width, depth, the group size of
    a pre-training file) must agree with that config: one CheckpointMismatchError line naming both values if not."""
    try:
        return load_checkpoint(path)["model"]
    except CheckpointError as err:
        pcmae_error = err
    values = {name: p.default for name, p in inspect.signature(MODELS.get(model_cfg["type"])).parameters.items()
              if p.default is not inspect.Parameter.empty}  # the class defaults where the config is silent
    values.update(model_cfg)
    encoder_cfg = {k: values[k] for k in ("num_groups", "group_size", "num_heads", "embed_dim", "depth") if k in values}
    try:
        return convert_point_mae_file(path, config=encoder_cfg)[1]
    except NotPointMAEError:
        raise pcmae_error from None  # neither format: the pcmae reader's line says why


@dataclass(frozen=True)
class Evaluation:
    """How a fine-tuned model is scored: ``evaluate(model, dataset, protocol=p) -> dict``, the protocols it knows,
    and ``describe(result) -> str`` (one line)."""
    evaluate: Callable
    protocols: tuple
    describe: Callable


# chosen by the model class's ``evaluation`` attribute (default "classification")
EVALUATIONS = {
    "classification": Evaluation(evaluate_accuracy, tuple(PROTOCOLS), lambda r: (
        f"accuracy {100 * r['accuracy']:.2f} %, class mean {100 * r['class_mean_accuracy']:.2f} %")),
    "part_segmentation": Evaluation(segmentation.evaluate_part_segmentation, segmentation.PROTOCOLS,
                                    segmentation.describe),
}

ALL_PROTOCOLS = sorted({p for e in EVALUATIONS.values() for p in e.protocols})


def evaluation_of(model) -> Evaluation:
    return EVALUATIONS[getattr(type(model), "evaluation", "classification")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--pretrained", help="encoder weights (pcmae pre-training or Point-MAE checkpoint)")
    add_run_arguments(parser)
    parser.add_argument("--protocol", nargs="+", default=["plain"], choices=ALL_PROTOCOLS,
                        help="evaluation protocols of the final accuracy (default: plain)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    check_run_arguments(args)

    cfg = load_checked_config(args.config, args.overrides)
    work_dir = default_work_dir(args.config, {"work_dir": args.work_dir} if args.work_dir else cfg)
    seed_everything(cfg["train"].get("seed", 0))  # model init is part of the seeded run
    model = build_model(cfg["model"])
    evaluation = evaluation_of(model)
    unknown = [p for p in args.protocol if p not in evaluation.protocols]
    if unknown:
        raise ConfigError(f"--protocol {' '.join(unknown)}: {cfg['model']['type']} is scored by "
                          f"{', '.join(evaluation.protocols)} only")
    if args.load_from:
        load_model_weights(model, args.load_from, cfg["model"]["type"])
    elif args.pretrained and not args.resume:
        model.load_encoder_from_pretrainer(pretrained_state(args.pretrained, cfg["model"]), source=args.pretrained)
    train_set = build_dataset(cfg["data"]["train"])
    val_set = build_dataset(cfg["data"]["val"], where="data.val") if "val" in cfg["data"] else None
    trainer = Trainer(model, train_set, TrainConfig.from_dict(cfg["train"]), work_dir, val_dataset=val_set,
                      config=cfg)
    trainer.fit(resume=args.resume, overwrite=args.overwrite)
    if not (is_main_process() and val_set is not None):
        return None
    result = {"last": {p: evaluation.evaluate(model, val_set, protocol=p) for p in args.protocol}}
    if (work_dir / BEST_CHECKPOINT).is_file():
        best = build_model(cfg["model"]).to(trainer.device)
        state = load_model_weights(best, work_dir / BEST_CHECKPOINT, cfg["model"]["type"])
        result["best"] = {p: evaluation.evaluate(best, val_set, protocol=p) for p in args.protocol}
        result["best"]["epoch"] = state["epoch"]
    for weights, by_protocol in result.items():
        for protocol in args.protocol:
            print(f"{weights} weights, {protocol}: {evaluation.describe(by_protocol[protocol])}")
    atomic_write(work_dir / "eval.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


if __name__ == "__main__":
    command_line(main)()
