#!/usr/bin/env python
"""Linear-SVM probe of a pre-trained encoder's frozen features, against the same encoder at random init.

    python tools/probe.py configs/point_mae/demo.yaml --checkpoint work_dirs/point_mae_demo/checkpoint_last.pth
    python tools/probe.py configs/point_mae/shapenet55.yaml --checkpoint CKPT   # ModelNet40 train -> test

Protocol (pcmae/evaluation/probe.py): features = concat(max, mean) over all tokens of the frozen encoder (nothing
masked, eval mode), standardised with the training set's mean / std; a linear SVM (LinearSVC) whose C is chosen
from {C_GRID} by accuracy on a 20 % stratified validation split of the training set, then refit on the whole
training set; accuracy on the held-out test split; mean +- std (population) over --seeds (default 3 seeds: the
validation split and the SVM's seed). The datasets are the config's ``probe.train`` / ``probe.test``.
"""
from __future__ import annotations

import argparse
import json

import torch

from pcmae.engine.build import build_dataset, build_model, command_line, load_checked_config
from pcmae.engine.checkpoint import atomic_write, load_model_weights
from pcmae.evaluation.probe import C_GRID, linear_probe

__doc__ = __doc__.replace("{C_GRID}", ", ".join(map(str, C_GRID)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--checkpoint", required=True, help="pcmae checkpoint (tools/pretrain.py output)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one probe per seed (validation split, SVM); reported as mean +- std (default: 0 1 2)")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)

    cfg = load_checked_config(args.config, args.overrides)
    if "probe" not in cfg:
        raise SystemExit(f"{args.config}: no 'probe' section (probe.train / probe.test datasets)")
    train_set = build_dataset(cfg["probe"]["train"], where="probe.train")
    test_set = build_dataset(cfg["probe"]["test"], where="probe.test")

    results = {}
    pretrained = build_model(cfg["model"])
    load_model_weights(pretrained, args.checkpoint, cfg["model"]["type"])
    results["pre-trained"] = linear_probe(pretrained, train_set, test_set, args.seeds)
    random_runs = []
    for seed in args.seeds:  # a fresh random init per seed: its spread is part of the baseline
        torch.manual_seed(seed)
        random_runs.append(linear_probe(build_model(cfg["model"]), train_set, test_set, [seed]))
    acc = torch.tensor([r["accuracy"][0] for r in random_runs])
    results["random init"] = {"mean": acc.mean().item(), "std": acc.std(unbiased=False).item(),
                              "accuracy": acc.tolist(), "C": [r["C"][0] for r in random_runs]}

    print(f"linear SVM probe, {len(train_set)} train / {len(test_set)} test clouds, seeds {args.seeds}; features: "
          "concat(max, mean) over all tokens, standardised; C from {" + ", ".join(map(str, C_GRID)) + "} on a 20 % "
          "stratified validation split of the training set")
    print("| encoder | test accuracy (mean +- std) | C per seed |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['mean']:.1f} +- {100 * r['std']:.1f} % | {', '.join(map(str, r['C']))} |")
    if args.output:
        atomic_write(args.output, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return results


if __name__ == "__main__":
    command_line(main)()
