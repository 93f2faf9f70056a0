#!/usr/bin/env python
"""Reconstruction quality of a LiDAR masked autoencoder (VoxelMAE / RadialMAE) on sweeps it did not train on.

    python tools/evaluate.py configs/voxel_mae/kitti_shared.yaml --checkpoint work_dirs/vm/checkpoint_last.pth
    python tools/evaluate.py CONFIG --checkpoint CKPT --sweeps a.bin b.bin --layout kitti --plot bev.png

Each sweep is masked with the model's own rule under each of ``--seeds``; the model is asked about the hidden
occupied voxels and sampled empty ones (pcmae/evaluation/occupancy.py). Printed: occupancy precision / recall /
F1 pooled over all queries for the model and for the trivial baseline (a query is occupied when one of its 26
neighbours is visible), and Chamfer-L2 of the rebuilt points next to "points at voxel centers".
Sweeps: ``--sweeps`` files, else the config's ``data.val`` dataset (tools/pretrain.py does not train on it).
"""
from __future__ import annotations

import argparse
import json

from pcmae.data import LidarSweeps
from pcmae.engine.build import build_dataset, build_model, command_line, load_checked_config
from pcmae.engine.checkpoint import atomic_write, load_checkpoint
from pcmae.evaluation.bev import save_model_bev
from pcmae.evaluation.occupancy import evaluate_dataset


def eval_dataset(cfg: dict, args):
    if args.sweeps:
        return LidarSweeps(sweeps=args.sweeps, layout=args.layout,
                           point_cloud_range=cfg["model"].get("point_cloud_range"))
    if "val" not in cfg["data"]:
        raise SystemExit(f"{args.config}: no sweeps to evaluate; give --sweeps or a 'data.val' dataset")
    return build_dataset(cfg["data"]["val"], where="data.val")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--checkpoint", required=True, help="pcmae checkpoint (tools/pretrain.py output)")
    parser.add_argument("--sweeps", nargs="+", help="sweep files to evaluate on (instead of the config's)")
    parser.add_argument("--layout", help="column layout of --sweeps .bin files: kitti, nuscenes, waymo, xyz")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="mask draws per sweep")
    parser.add_argument("--plot", help="write a bird's-eye-view PNG of the first sweeps here")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)

    cfg = load_checked_config(args.config, args.overrides)
    model = build_model(cfg["model"])
    if not hasattr(model, "predict_occupancy"):
        raise SystemExit(f"{args.config}: model.type {cfg['model'].get('type')} is not a LiDAR occupancy model "
                         f"(VoxelMAE / RadialMAE)")
    model.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    dataset = eval_dataset(cfg, args)
    result = evaluate_dataset(model, dataset, args.seeds)

    print(f"{result['num_sweeps']} sweeps x {len(args.seeds)} masks, {result['num_queries']} query voxels "
          f"({result['num_hidden']} hidden occupied)")
    print("| predictor | precision | recall | F1 |\n|---|---|---|---|")
    for name, key in (("model", "model"), ("visible-neighbour baseline", "baseline")):
        r = result[key]
        print(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")
    if "chamfer_model" in result:
        print(f"Chamfer-L2 of hidden points: model {result['chamfer_model']:.4f} m^2, "
              f"voxel centers {result['chamfer_centers']:.4f} m^2")
    if args.plot:
        print(f"bird's-eye view: {save_model_bev(model, dataset, args.plot, num_samples=min(2, len(dataset)))}")
    if args.output:
        atomic_write(args.output, lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


if __name__ == "__main__":
    command_line(main)()
