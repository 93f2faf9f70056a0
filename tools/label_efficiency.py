#!/usr/bin/env python
"""Label efficiency: fine-tune a pretrained detector config and its _scratch twin on fractions of the labels.

    python tools/label_efficiency.py configs/mmdet3d/second_kitti.py --pretrained work_dirs/radial_mae_kitti/checkpoint_last.pth \\
        --fractions 0.05 0.1 0.2 1.0 --seeds 0 1 2 [--work-dir DIR] [--max-iters N] [--metric KEY] [key=value ...]

Runs tools/finetune_det.py for every (fraction, seed) with CONFIG and with CONFIG's twin ``<name>_scratch.py``
(same seeds, so the same label subsets and data order), into <work-dir>/{pretrained,scratch}/fraction<F>_seed<S>/;
a run whose finetune_summary.json exists for the same settings is not run again. Then writes
<work-dir>/label_efficiency.{md,json}: per fraction, mean +- sample std over seeds of the main metric (the
config's evaluator's headline, e.g. KITTI moderate 3D AP40, nuScenes NDS; or --metric) for pretrained and scratch,
and of their difference paired by seed.

A GPU-scale protocol: the paper-style grid (4 fractions x 3 seeds x 2 inits) is 24 full mmdet3d schedules. On a CPU
use a tiny --max-iters (the schedule is cut, validation runs at the end) to check the pipeline, not to compare.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

try:
    from pcmae.integrations.mmdet3d import finetune as det
except ImportError as err:  # the mmdet3d stack is missing: say what to install, in one line
    sys.exit(f"error: {err}")
import finetune_det  # noqa: E402
from pcmae.engine.build import command_line  # noqa: E402
from pcmae.io.atomic import atomic_write  # noqa: E402
from pcmae.registry import ConfigError, closest  # noqa: E402

VARIANTS = ("pretrained", "scratch")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="pretrained detector config; its _scratch twin is found by name")
    parser.add_argument("--pretrained", help="checkpoint for the pcmae encoders (default: the config's)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/label_efficiency/<config name>)")
    parser.add_argument("--max-iters", type=int, help="iterations per run instead of the epoch schedule")
    parser.add_argument("--metric", help="metric key to tabulate (default: the evaluator's headline metric)")
    parser.add_argument("overrides", nargs="*", help="mmengine key=value overrides for every run")
    return parser.parse_intermixed_args(argv)


def run_one(config, work_dir: Path, fraction: float, seed: int, args, pretrained) -> dict:
    """finetune_det for one cell, or the summary a previous run with the same settings left."""
    summary_file = work_dir / finetune_det.SUMMARY
    if summary_file.is_file():
        done = json.loads(summary_file.read_text())
        if (done.get("config"), done.get("label_fraction"), done.get("seed"), done.get("max_iters"),
                done.get("overrides"), done.get("pretrained")) == (str(config), fraction, seed, args.max_iters,
                                                                   list(args.overrides), pretrained):
            print(f"label_efficiency: {work_dir} already done")
            return done
    argv = [str(config), "--work-dir", str(work_dir), "--label-fraction", str(fraction), "--seed", str(seed)]
    argv += ["--pretrained", pretrained] if pretrained else []
    argv += ["--max-iters", str(args.max_iters)] if args.max_iters is not None else []
    return finetune_det.main(argv + list(args.overrides))


def metric_of(summary: dict, key: str):
    metrics = summary.get("final_metrics") or {}
    if key not in metrics:
        raise ConfigError(f"{summary.get('work_dir')}: no metric {key!r} in finetune_summary.json"
                          f"{closest(key, metrics)} ({len(metrics)} metrics there)")
    return metrics[key]


def mean_std(values) -> dict:
    values = [v for v in values if v is not None]
    return {"values": values, "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def table(runs: dict, fractions, seeds, key: str) -> list:
    """One row per fraction: pretrained, scratch and their paired difference (mean, sample std over seeds)."""
    rows = []
    for fraction in fractions:
        cells = {v: {seed: metric_of(runs[v, fraction, seed], key) for seed in seeds} for v in VARIANTS}
        deltas = [cells["pretrained"][s] - cells["scratch"][s] for s in seeds
                  if cells["pretrained"][s] is not None and cells["scratch"][s] is not None]
        frames = runs["scratch", fraction, seeds[0]].get("train_frames")
        rows.append({"fraction": fraction, "train_frames": frames,
                     **{v: mean_std(cells[v][s] for s in seeds) for v in VARIANTS}, "delta": mean_std(deltas)})
    return rows


def fmt(cell: dict, sign: bool = False) -> str:
    if cell["mean"] is None:
        return "n/a"
    text = f"{cell['mean']:+.2f}" if sign else f"{cell['mean']:.2f}"
    return text + (f" +- {cell['std']:.2f}" if cell["std"] is not None else "")


def markdown(result: dict) -> str:
    lines = [f"# Label efficiency: {result['config']} vs {result['scratch_config']}", "",
             f"metric: `{result['metric']}`; seeds {result['seeds']} (mean +- sample std; delta paired by seed); "
             f"pretrained: `{result['pretrained']}`" + (f"; --max-iters {result['max_iters']}"
                                                          if result["max_iters"] else ""), "",
             "| labels | frames | pretrained | scratch | delta |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {100 * row['fraction']:g} % | {row['train_frames']} | {fmt(row['pretrained'])} | "
                     f"{fmt(row['scratch'])} | {fmt(row['delta'], sign=True)} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    config = Path(args.config)
    if not config.is_file():
        raise FileNotFoundError(f"config not found: {config}")
    twin = det.scratch_twin(config)
    pretrained = det.set_pretrained(det.load_det_config(config, args.overrides), config, args.pretrained)
    if pretrained is None:
        raise ConfigError(f"{config}: no pcmae encoder with a Pretrained init_cfg; give the pretrained config")
    for fraction in args.fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"--fractions must be in (0, 1], got {fraction}")
    work_dir = Path(args.work_dir or Path("work_dirs") / "label_efficiency" / config.stem)
    runs = {}
    for variant, path in zip(VARIANTS, (config, twin)):
        for fraction in args.fractions:
            for seed in args.seeds:
                run_dir = work_dir / variant / f"fraction{fraction:g}_seed{seed}"
                runs[variant, fraction, seed] = run_one(path, run_dir, fraction, seed, args,
                                                        pretrained if variant == "pretrained" else None)
    first = runs[VARIANTS[0], args.fractions[0], args.seeds[0]]
    key = args.metric or first.get("main_metric")
    if not key:
        raise ConfigError(f"{config}: no headline metric known for its val_evaluator; pass --metric KEY")
    result = {"config": str(config), "scratch_config": str(twin), "pretrained": pretrained,
              "metric": key, "fractions": args.fractions, "seeds": args.seeds, "max_iters": args.max_iters,
              "overrides": list(args.overrides), "rows": table(runs, args.fractions, args.seeds, key),
              "runs": [{"variant": v, "fraction": f, "seed": s, "work_dir": r.get("work_dir"),
                        "value": metric_of(r, key)} for (v, f, s), r in runs.items()]}
    det.write_json(work_dir / "label_efficiency.json", result)
    text = markdown(result)
    md = work_dir / "label_efficiency.md"
    atomic_write(md, lambda f: f.write(text.encode()))
    print(text + f"written: {md}, {md.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    command_line(main)()
