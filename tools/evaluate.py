#!/usr/bin/env python
"""Reconstruction quality of a LiDAR masked autoencoder (VoxelMAE / RadialMAE / TemporalMAE) on sweeps it did not
train on, next to the strongest trivial answers.

    python tools/evaluate.py configs/voxel_mae/kitti_shared.yaml --checkpoint work_dirs/vm/checkpoint_last.pth
    python tools/evaluate.py CONFIG --checkpoint CKPT --sweeps a.bin b.bin --layout kitti --plot bev.png
    python tools/evaluate.py CONFIG --checkpoint CKPT --info-file data/kitti/kitti_infos_val.pkl
    python tools/evaluate.py configs/temporal_mae/demo.yaml --checkpoint T.pth \
        --compare single_frame configs/temporal_mae/demo_single_frame.yaml S.pth

Each sweep is cropped to the model's range and masked with the model's own rule under each of ``--seeds``; the
model is asked about the hidden occupied voxels and sampled empty ones (pcmae/evaluation/occupancy.py). Printed
for the model and the trivial answers (all occupied, none, the occupancy rate of the query's distance ring on the
config's training sweeps, "a neighbour is visible"): precision / recall / F1, AUROC and average precision of the
score (a constant gets 0.5 and the occupied rate), F1 per distance bin, Chamfer-L2 of the rebuilt points next to
"points at voxel centers" and the neighbour copy, and the share of each sweep inside the model's range. The range
prior is fitted on the unaugmented training sweeps with the mask of seed 0 (deterministic), and saved in
``--output``; ``--prior`` reuses it.
Sweeps: ``--sweeps`` files, ``--info-file`` (an mmdet3d-style info file, e.g. a pcmae converter's output), else
the config's ``data.val`` dataset (tools/pretrain.py does not train on it).
Temporal models (TemporalMAE) are evaluated on frame pairs (``LidarSequence``; an ``--info-file`` is paired with
``--gap`` / ``--frame-period``) and get one more baseline, "copy the aligned past frame" (a hidden voxel is
occupied when the past frame has points in it). ``--compare NAME CONFIG CHECKPOINT`` scores other models on the
very same hidden and empty voxels (e.g. a single-frame Voxel-MAE of the same grid and masking).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

from pcmae.data import LidarSequence, LidarSweeps
from pcmae.engine.build import build_dataset, build_model, command_line, load_checked_config
from pcmae.engine.checkpoint import atomic_write, load_model_weights
from pcmae.engine.distributed import pick_device
from pcmae.evaluation.baselines import RangePrior
from pcmae.evaluation.bev import save_model_bev
from pcmae.evaluation.occupancy import evaluate_dataset, fit_range_prior
from pcmae.io import BIN_LAYOUTS

NAMES = {"model": "model", "neighbour": "visible-neighbour baseline", "range_prior": "range prior (train rate)",
         "all_occupied": "all occupied", "none_occupied": "none occupied",
         "copy_past": "copy the aligned past frame"}


def _unaugmented(cfg: dict) -> dict:
    """A dataset config without transforms and crop (evaluation crops to the model's range itself)."""
    cfg = copy.deepcopy(cfg)
    cfg.pop("transforms", None)
    if "point_cloud_range" in cfg:
        cfg["point_cloud_range"] = None
    return cfg


def eval_dataset(cfg: dict, args, model):
    if args.sweeps and args.info_file:
        raise SystemExit("tools/evaluate.py: give --sweeps or --info-file, not both")
    temporal = "past_points" in getattr(model, "context_keys", ())
    if args.info_file and temporal:
        frames = {"type": "LidarSweeps", "info_file": args.info_file, "layout": args.layout,
                  "use_columns": args.use_columns}
        return LidarSequence(frames, gap=args.gap, frame_period=args.frame_period)
    if args.sweeps and temporal:
        raise SystemExit("tools/evaluate.py: a temporal model needs frames with poses: give --info-file (a "
                         "converter's output) or use the config's data.val")
    if args.sweeps:
        raw = [s for s in args.sweeps if Path(s).suffix == ".bin"]
        if raw and args.layout is None:
            raise SystemExit(f"tools/evaluate.py: {raw[0]} is a raw .bin sweep; give --layout (one of "
                             f"{', '.join(BIN_LAYOUTS)}) to say how many columns it has")
        return LidarSweeps(sweeps=args.sweeps, layout=args.layout, use_columns=args.use_columns)
    if args.info_file:
        dataset = LidarSweeps(info_file=args.info_file, layout=args.layout, use_columns=args.use_columns)
        if dataset.layout is None and dataset.num_columns is None and any(
                Path(e["path"]).suffix == ".bin" for e in dataset.entries):
            raise SystemExit(f"tools/evaluate.py: {args.info_file} does not say the columns of its .bin sweeps; "
                             f"give --layout (one of {', '.join(BIN_LAYOUTS)})")
        return dataset
    if "val" not in cfg["data"]:
        raise SystemExit(f"{args.config}: no sweeps to evaluate; give --sweeps, --info-file or a 'data.val' dataset")
    return build_dataset(_unaugmented(cfg["data"]["val"]), where="data.val")


def load_prior(path) -> RangePrior:
    """The "range_prior" {ring_m, rates} of an earlier --output JSON."""
    try:
        saved = json.loads(Path(path).read_text())["range_prior"]
        return RangePrior(saved["ring_m"], saved["rates"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"--prior {path}: not an output of tools/evaluate.py with a range prior "
                         f"({type(err).__name__}: {err})") from None


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def print_result(result: dict) -> None:
    print(f"{result['num_sweeps']} sweeps x {len(result['seeds'])} masks, {result['num_queries']} query voxels "
          f"({result['num_hidden']} hidden occupied, rate {result['occupied_rate']:.3f}); share of points inside "
          f"the model's range: " + ", ".join(f"{v:.3f}" for v in result["inside_range"]["per_sweep"]))
    bins = [row["range_m"] for row in result["predictors"]["model"]["by_range"]]
    bin_names = [f"F1 {lo:g}-{hi:g} m" if math.isfinite(hi) else f"F1 >{lo:g} m" for lo, hi in bins]
    print("| predictor | precision | recall | F1 | AUROC | AP | AUROC, same visible neighbours | "
          + " | ".join(bin_names) + " |")
    print("|---" * (7 + len(bins)) + "|")
    for key in result["predictors"]:
        r = result["predictors"][key]
        cells = [_fmt(r[k]) for k in ("precision", "recall", "f1", "auroc", "ap", "auroc_same_neighbours")]
        cells += [_fmt(row["f1"]) for row in r["by_range"]]
        print(f"| {NAMES.get(key, key)} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{row['num_queries']} ({_fmt(row['occupied_rate'])})"
                       for row in result["predictors"]["model"]["by_range"])
    print(f"queries per distance bin (occupied rate): {counts}")
    if result["chamfer"]:
        print("Chamfer-L2 of the hidden points (m^2): " + ", ".join(
            f"{name} {value:.4f}" for name, value in result["chamfer"].items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--checkpoint", required=True, help="pcmae checkpoint (tools/pretrain.py output)")
    parser.add_argument("--sweeps", nargs="+", help="sweep files to evaluate on (instead of the config's)")
    parser.add_argument("--info-file", help="mmdet3d-style info file (.pkl) of the sweeps to evaluate on")
    parser.add_argument("--layout", choices=sorted(BIN_LAYOUTS),
                        help="column layout of .bin sweeps (--sweeps, or an --info-file that does not say)")
    parser.add_argument("--prior", help="reuse the range prior of an earlier --output JSON of this config (else it is "
                        "fitted on the config's data.train sweeps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="mask draws per sweep")
    parser.add_argument("--compare", nargs=3, action="append", default=[], metavar=("NAME", "CONFIG", "CHECKPOINT"),
                        help="also score this model on the same hidden / query voxels (repeatable)")
    parser.add_argument("--use-columns", type=int, help="read only the first K columns of each sweep (x, y, z first), "
                        "e.g. 3 for a model of x, y, z on files with intensity")
    parser.add_argument("--gap", type=int, default=1, help="temporal models on --info-file: frames back to the past")
    parser.add_argument("--frame-period", type=float, help="temporal models on --info-file: seconds per frame, "
                        "for logs without timestamps")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when present")
    parser.add_argument("--plot", help="write a bird's-eye-view PNG of the first sweeps here")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)

    cfg = load_checked_config(args.config, args.overrides)
    model = build_model(cfg["model"])
    if not hasattr(model, "predict_occupancy"):
        raise SystemExit(f"{args.config}: model.type {cfg['model'].get('type')} is not a LiDAR occupancy model "
                         f"(VoxelMAE / RadialMAE / TemporalMAE)")
    load_model_weights(model, args.checkpoint, expected_type=cfg["model"].get("type"))
    model.to(pick_device(args.device)).eval()
    compare = {}
    for name, config, checkpoint in args.compare:
        other_cfg = load_checked_config(config, [])
        compare[name] = build_model(other_cfg["model"])
        load_model_weights(compare[name], checkpoint, expected_type=other_cfg["model"].get("type"))
        compare[name].to(pick_device(args.device)).eval()
    dataset = eval_dataset(cfg, args, model)
    pc_range = model.tokenizer.pc_range.tolist()
    if args.prior:
        prior = load_prior(args.prior)
    else:
        prior = fit_range_prior(model, build_dataset(_unaugmented(cfg["data"]["train"]), where="data.train"),
                                pc_range)
    result = evaluate_dataset(model, dataset, pc_range, prior, args.seeds, compare=compare)
    print_result(result)
    if args.plot:
        print(f"bird's-eye view: {save_model_bev(model, dataset, args.plot, num_samples=min(2, len(dataset)))}")
    if args.output:
        atomic_write(args.output, lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


if __name__ == "__main__":
    command_line(main)()
