#!/usr/bin/env python
"""Test-time adaptation of a point-cloud classifier on a stream: for each incoming sample, adapt, then predict.

    python tools/tta.py configs/mate/demo.yaml --checkpoint CKPT --corruption gaussian --severity 5
    python tools/tta.py configs/mate/demo.yaml --checkpoint CKPT --folder incoming/ --timeout 30 tta.protocol=online
    python tools/tta.py configs/mate/demo.yaml --checkpoint CKPT --files a.ply b.off c.npy
    python tools/tta.py configs/mate/demo.yaml --checkpoint CKPT --bag drive.bag --topic /points
    python tools/tta.py configs/mate/demo.yaml --checkpoint CKPT --table      # every corruption x every method
    python tools/tta.py configs/mate/demo.yaml --checkpoint CKPT --alignment --limit 32   # will the step help?
    python tools/tta.py configs/voxel_mae/demo.yaml --checkpoint CKPT --info-file radiate/folder_infos_all.pkl

The ``tta:`` section of the config (pcmae.tta.TTAConfig: method source | bn | tent | mate, protocol standard |
online | stride, steps, copies, lr, bn_stats, ...) says how; ``key=value`` overrides it. Without --files /
--folder / --bag the stream is the config's ``data.val`` set, corrupted with ``--corruption`` at ``--severity``
(pcmae.data.CorruptedObjects; a ``ModelNet40C`` data.val reads the released corrupted files instead). Writes
``<work dir>/tta/metrics.jsonl`` (one line per sample: prediction, label, rolling accuracy, adaptation loss, reset,
latency in ms) and ``accuracy.png`` (rolling accuracy over the stream).
A LiDAR masked autoencoder (VoxelMAE / RadialMAE checkpoint) adapts on sweeps instead (pcmae.tta.lidar): the
config's ``data.val`` or ``--info-file``, optionally with ``--lidar-corruption``; each sweep is scored (hidden-voxel
F1 / AUROC / AP under 3 seeded masks) with the weights adapted on the sweeps before it, next to the source model
and the trivial answers. ``--table``: accuracy and ms per sample of source-only, BN-adapt, BN-stream (MATE's
BatchNorm statistics without its gradient step), TENT, MATE-standard, MATE-online and MATE-online stride 4 on
each corruption named by ``--corruption a,b,...`` (default: all 15) at ``--severity``, and their mean.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
from pathlib import Path

from pcmae.engine.build import build_dataset, build_model, command_line, default_work_dir, load_checked_config
from pcmae.engine.checkpoint import load_model_weights
from pcmae.io.atomic import atomic_write
from pcmae.registry import DATASETS
from pcmae.tta import StreamAdapter, TTAConfig, dataset_source, files_source, folder_source, run_stream

TABLE_RUNS = {"source-only": {"method": "source"}, "BN-adapt": {"method": "bn"},
              "BN-stream": {"method": "bn", "bn_stats": "stream", "protocol": "online"},
              "TENT": {"method": "tent", "protocol": "online"},
              "MATE-standard": {"method": "mate", "protocol": "standard"},
              "MATE-online": {"method": "mate", "protocol": "online"},
              "MATE-online stride 4": {"method": "mate", "protocol": "stride", "stride": 4}}


def stream_of(args, cfg: dict, corruption: str | None):
    if args.files:
        return files_source(args.files, layout=args.layout)
    if args.folder:
        return folder_source(args.folder, layout=args.layout, timeout_s=args.timeout)
    if args.bag:
        from data_converters.rosbag import iter_clouds
        from pcmae.tta import StreamSample

        return (StreamSample(f"{args.bag}:{args.topic}[{i}]", cloud) for i, cloud in iter_clouds(Path(args.bag),
                                                                                                 args.topic))
    if "val" not in cfg["data"]:
        raise SystemExit(f"{args.config}: no stream given (--files / --folder / --bag) and no data.val set")
    if corruption is None:
        return dataset_source(build_dataset(cfg["data"]["val"], where="data.val"), limit=args.limit)
    return shifting_stream(args, cfg["data"]["val"], corruption.split(","))


def shifting_stream(args, val: dict, corruptions: list[str]):
    """data.val seen through each corruption in turn: ``--limit`` items each (all of them for one corruption),
    successive corruptions on successive items, so the stream meets one shift after another on new objects."""
    def corrupted(corruption: str) -> dict:
        if getattr(DATASETS.get(val["type"]), "sets_corruption", False):  # released corrupted files (ModelNet40C)
            return {**val, "corruption": corruption, "severity": args.severity}
        return {"type": "CorruptedObjects", "dataset": val, "corruption": corruption, "severity": args.severity,
                "seed": args.seed}

    datasets = [build_dataset(corrupted(corruption), where="data.val") for corruption in corruptions]
    if len(corruptions) == 1:
        return dataset_source(datasets[0], limit=args.limit, name=corruptions[0])
    if args.limit is None:
        raise SystemExit("tools/tta.py: several --corruption names need --limit (items per corruption)")
    if len(corruptions) * args.limit > len(datasets[0]):
        raise SystemExit(f"tools/tta.py: {len(corruptions)} corruptions x --limit {args.limit} items need "
                         f"data.val.num_samples >= {len(corruptions) * args.limit}, it has {len(datasets[0])}")
    return itertools.chain.from_iterable(
        dataset_source(dataset, limit=args.limit, start=k * args.limit, name=corruption)
        for k, (corruption, dataset) in enumerate(zip(corruptions, datasets)))


def load_model(model_cfg: dict, checkpoint):
    """The config's model with the checkpoint's weights (checked against the config's model type)."""
    model = build_model(copy.deepcopy(model_cfg))
    load_model_weights(model, checkpoint, expected_type=model_cfg.get("type"))
    return model


def table_corruptions(args) -> list[str]:
    """``--corruption a,b,...`` or all 15 of ModelNet40-C (the rows of --table and --alignment)."""
    from pcmae.data.corruptions import OBJECT_CORRUPTIONS

    return args.corruption.split(",") if args.corruption else list(OBJECT_CORRUPTIONS)


def adapt_stream(source_model, tta_cfg: TTAConfig, samples, log=print) -> list[dict]:
    """A copy of ``source_model`` adapted along ``samples``: the records, with rolling accuracy."""
    adapter = StreamAdapter(copy.deepcopy(source_model), tta_cfg)
    records, correct, labelled = [], 0, 0
    for record in run_stream(adapter, samples, log):
        if record.get("correct") is not None:
            correct, labelled = correct + record["correct"], labelled + 1
            record["rolling_acc"] = correct / labelled
        records.append(record)
    return records


def summary(records: list[dict]) -> dict:
    done = [r for r in records if "skipped" not in r]
    labelled = [r for r in done if r.get("correct") is not None]
    return {"samples": len(done), "skipped": len(records) - len(done), "resets": sum(r["reset"] for r in done),
            "accuracy": sum(r["correct"] for r in labelled) / len(labelled) if labelled else None,
            "ms_per_sample": sum(r["latency_ms"] for r in done) / max(len(done), 1)}


def save_outputs(records: list[dict], out_dir: Path) -> None:
    from pcmae.visualization import new_figure, save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(out_dir / "metrics.jsonl", lambda f: f.write(lines.encode()))
    points = [(r["index"], r["rolling_acc"]) for r in records if "rolling_acc" in r]
    if points:
        fig = new_figure(6, 3, 100)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_xlabel("sample")
        ax.set_ylabel("rolling accuracy")
        ax.set_ylim(0, 1)
        fig.tight_layout()
        save_png(fig, out_dir / "accuracy.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--checkpoint", required=True, help="the trained model (tools/pretrain.py output)")
    parser.add_argument("--files", nargs="+", help="point-cloud files, in stream order")
    parser.add_argument("--folder", help="a folder being written to: its files, then new ones as they arrive")
    parser.add_argument("--timeout", type=float, default=10.0, help="--folder: stop after this many idle seconds")
    parser.add_argument("--bag", help="a ROS1 / ROS2 bag; --topic: its PointCloud2 topic")
    parser.add_argument("--topic")
    parser.add_argument("--layout", help="column layout of .bin files")
    parser.add_argument("--corruption", help="corrupt the data.val stream (pcmae.data.corruptions); a,b,c: one "
                        "after another, --limit items each (a stream whose shift changes)")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="at most this many samples of data.val")
    parser.add_argument("--info-file", help="LiDAR models: the sweeps to adapt on (a converter's output)")
    parser.add_argument("--use-columns", type=int, help="LiDAR models: read only the first K columns of each sweep")
    parser.add_argument("--lidar-corruption", help="LiDAR models: corrupt each sweep (beam_drop, fog, snow, ...)")
    parser.add_argument("--ring-column", type=int, help="LiDAR models: the ring column for --lidar-corruption")
    parser.add_argument("--table", action="store_true", help="every corruption x every method (the README table)")
    parser.add_argument("--alignment", action="store_true", help="instead of adapting: the cosine between the "
                        "method's adaptation gradient and the true label's gradient on each sample (source weights)")
    parser.add_argument("--work-dir", help="default: the config's work dir")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. tta.protocol=standard")
    args = parser.parse_intermixed_args(argv)
    if args.bag and not args.topic:
        raise SystemExit("tools/tta.py: --bag needs --topic")

    cfg = load_checked_config(args.config, args.overrides)
    out_dir = Path(args.work_dir or default_work_dir(args.config, cfg)) / "tta"
    base = dict(cfg.get("tta") or {})
    model = load_model(cfg["model"], args.checkpoint)  # read once; every run adapts a copy
    if hasattr(model, "predict_occupancy"):  # a LiDAR masked autoencoder
        return lidar_main(args, cfg, model.eval(), base, out_dir)
    if args.alignment:
        return alignment_main(args, cfg, model, TTAConfig.from_dict(base), out_dir)
    if not args.table:
        tta_cfg = TTAConfig.from_dict(base)
        records = adapt_stream(model, tta_cfg, stream_of(args, cfg, args.corruption))
        save_outputs(records, out_dir)
        result = summary(records)
        print(json.dumps({"method": tta_cfg.method, "protocol": tta_cfg.protocol, **result}))
        return result
    table = {}
    for corruption in table_corruptions(args):
        for name, run in TABLE_RUNS.items():
            tta_cfg = TTAConfig.from_dict({**base, **run})
            table.setdefault(corruption, {})[name] = summary(adapt_stream(
                model, tta_cfg, stream_of(args, cfg, corruption), log=None))
        print(corruption, {k: round(v["accuracy"], 3) for k, v in table[corruption].items()}, flush=True)
    print_table(table, args.severity)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "table.json", lambda f: f.write(json.dumps(table, indent=2).encode()))
    return table


def alignment_main(args, cfg: dict, model, tta_cfg: TTAConfig, out_dir: Path) -> dict:
    """Per corruption (``--corruption a,b`` or all 15): mean cosine between the adaptation gradient and the true
    label's gradient, the share of samples where it is positive, and the mean cosine of Adam's first step."""
    import statistics

    adapter = StreamAdapter(model, tta_cfg)
    result = {}
    print("| corruption | cos(adaptation gradient, label gradient) | > 0 | cos(Adam's first step, label gradient) |")
    print("|---|---|---|---|")
    for corruption in table_corruptions(args):
        cosines = [adapter.alignment(s.points, s.label) for s in stream_of(args, cfg, corruption)]
        grad = [c["gradient"] for c in cosines]
        r = result[corruption] = {"gradient": statistics.fmean(grad), "positive": sum(c > 0 for c in grad) / len(grad),
                                  "adam_step": statistics.fmean(c["adam_step"] for c in cosines),
                                  "samples": len(cosines)}
        print(f"| {corruption} | {r['gradient']:+.3f} | {100 * r['positive']:.0f} % | {r['adam_step']:+.3f} |",
              flush=True)
    means = {k: statistics.fmean(r[k] for r in result.values()) for k in ("gradient", "positive", "adam_step")}
    print(f"| mean | {means['gradient']:+.3f} | {100 * means['positive']:.0f} % | {means['adam_step']:+.3f} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "alignment.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def lidar_main(args, cfg: dict, model, base: dict, out_dir: Path) -> dict:
    """Source vs adapted-along-the-stream hidden-voxel scores of a LiDAR masked autoencoder (``model``, eval mode)."""
    from pcmae.data import LidarSweeps
    from pcmae.tta.lidar import CorruptedSweeps, source_and_adapted

    if args.info_file:
        dataset = LidarSweeps(info_file=args.info_file, layout=args.layout, use_columns=args.use_columns)
    else:
        val = dict(cfg["data"]["val"])
        val.pop("transforms", None)
        dataset = build_dataset(val, where="data.val")
    if args.lidar_corruption:
        dataset = CorruptedSweeps(dataset, args.lidar_corruption, args.severity, args.seed, args.ring_column)
    tta_cfg = TTAConfig.from_dict(base)
    result = source_and_adapted(model, dataset, model.point_cloud_range, steps=tta_cfg.steps, lr=tta_cfg.lr,
                                seed=tta_cfg.seed)
    print(f"{len(dataset)} sweeps in stream order, 3 masks each, {result['source']['num_queries']} query voxels "
          f"(occupied rate {result['source']['occupied_rate']:.3f}); F1 / AUROC / AP")
    rows = {"source model": result["source"]["pooled"]["model"], "adapted along the stream":
            result["adapted"]["pooled"]["model"], "visible-neighbour baseline": result["source"]["pooled"]["neighbour"],
            "all occupied": result["source"]["pooled"]["all_occupied"]}
    for name, m in rows.items():
        print(f"| {name} | {m['f1']:.3f} / {m['auroc']:.3f} / {m['ap']:.3f} |")
    ms = [r["score_ms"] + r["adapt_ms"] for r in result["adapted"]["per_sweep"]]
    print(f"latency per sweep (score + adapt): {sum(ms) / len(ms):.0f} ms")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "lidar_stream.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def print_table(table: dict, severity: int) -> None:
    names = list(TABLE_RUNS)
    print(f"accuracy % (ms per sample), severity {severity}")
    print("| corruption | " + " | ".join(names) + " |\n|---" * 1 + "|---" * len(names) + "|")
    for corruption, runs in table.items():
        print(f"| {corruption} | " + " | ".join(f"{100 * runs[n]['accuracy']:.1f} ({runs[n]['ms_per_sample']:.0f})"
                                                for n in names) + " |")
    means = {n: sum(t[n]["accuracy"] for t in table.values()) / len(table) for n in names}
    print("| mean | " + " | ".join(f"{100 * means[n]:.1f}" for n in names) + " |")


if __name__ == "__main__":
    command_line(main)()
