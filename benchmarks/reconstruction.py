#!/usr/bin/env python
"""Reconstruction of unseen real sweeps, per sensor: pre-train on a named part of ../shared/data, evaluate on a
named, disjoint part, next to the trivial answers of tools/evaluate.py.

    python benchmarks/reconstruction.py prepare            # real sweeps -> work_dirs/reconstruction/sweeps/*.npy
    python tools/pretrain.py configs/voxel_mae/shared_mix.yaml --work-dir work_dirs/shared_mix_long96   # 2400 steps
    python tools/pretrain.py configs/voxel_mae/shared_mix.yaml --work-dir work_dirs/shared_mix train.epochs=8   # 200 steps
    python tools/pretrain.py configs/voxel_mae/shared_mix.yaml --work-dir work_dirs/shared_mix_long train.epochs=24
    python tools/pretrain.py configs/radial_mae/shared_mix_radial.yaml --work-dir work_dirs/shared_mix_radial
    python benchmarks/reconstruction.py evaluate configs/voxel_mae/shared_mix.yaml \\
        --checkpoint work_dirs/shared_mix/checkpoint_last.pth            # tools/evaluate.py per sensor
    python benchmarks/reconstruction.py evaluate configs/voxel_mae/shared_mix.yaml --name shared_mix_long96 \\
        --checkpoint work_dirs/shared_mix_long96/checkpoint_last.pth            # same for shared_mix_long
    python benchmarks/reconstruction.py evaluate configs/radial_mae/shared_mix_radial.yaml \\
        --checkpoint work_dirs/shared_mix_radial/checkpoint_last.pth
    python benchmarks/reconstruction.py table work_dirs/reconstruction/eval_shared_mix{,_long,_long96,_radial}.json

Train on the sensors' SENSORS[...]["train"] files (the configs list them), evaluate on the "eval" files.
``prepare`` reads each sensor in its own format (KITTI / SemanticKITTI / nuScenes ``.bin``, OpenPCDet's Waymo
``.npy``, RADIATE ``.csv``; Argoverse 2 ``.feather`` needs ``pyarrow`` and Ouster ``.osf`` needs ``ouster-sdk``,
neither a pcmae dependency (the table below was made with ``pip install --target DIR pyarrow ouster-sdk`` and
``PYTHONPATH=DIR`` for ``prepare`` only): a sensor whose reader is missing is reported and left out) and writes x, y, z
(float32, metres) in a sensor-centred frame, z up:
  * the ego-frame sensors move to the LiDAR: Argoverse 2 by its ``up_lidar`` calibration translation; OpenPCDet's
    Waymo frame has no calibration, so its z shift puts the ground (5th percentile of z at 4-20 m) at -1.8 m,
    KITTI's ground height;
  * returns within ``NEAR`` metres of the sensor (fog, ego body, and ~97 k points at the origin in the Waymo
    file) are dropped.
The splits are fixed below; no training file is an evaluation file (checked by content hash).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pcmae.io.atomic import atomic_write

DATA = Path("../shared/data")
OUT = Path("work_dirs/reconstruction")
NEAR = 2.5  # metres
KITTI_GROUND = -1.8
RADIATE = "radiate_sdk/data/radiate/tiny_foggy/velo_lidar"
AV2 = "av2-api/tests/unit/test_data/sensor/val/7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
OUSTER = "ouster-sdk/tests/osfs/OS-1-128_v2.3.0_1024x10_lb_n3.osf"
NUSCENES = "mmdet3d/demo/data/nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"

# sensor -> (description, split name -> source files)
SENSORS = {
    "kitti": ("KITTI object, Velodyne HDL-64E", {
        "train": [f"openpcdet/data/kitti/training/velodyne/{i:06d}.bin" for i in range(5)],
        "eval": [f"openpcdet/data/kitti/testing/velodyne/{i:06d}.bin" for i in range(2)]}),
    "semantickitti": ("SemanticKITTI seq. 00 scans 0-5 (patchwork++ copy; scan 0 = SemanticKITTI's), HDL-64E", {
        "eval": [f"patchwork-plusplus/data/{i:06d}.bin" for i in range(6)]}),
    "radiate": ("RADIATE tiny_foggy, Velodyne HDL-32e in fog", {
        "train": [f"{RADIATE}/{i:06d}.csv" for i in range(1, 21)],
        "eval": [f"{RADIATE}/{i:06d}.csv" for i in range(26, 31)]}),
    "nuscenes": ("nuScenes LIDAR_TOP, HDL-32E", {"eval": [NUSCENES]}),
    "waymo": ("Waymo (OpenPCDet 0004.npy), 5 LiDARs", {"eval": ["openpcdet/pcdet/datasets/waymo/0004.npy"]}),
    "argoverse2": ("Argoverse 2, two VLP-32C", {"eval": [f"{AV2}/sensors/lidar/315966265259836000.feather",
                                                        f"{AV2}/sensors/lidar/315966265360032000.feather"]}),
    "ouster": ("Ouster OS-1-128", {"eval": [f"{OUSTER}#{i}" for i in range(3)]}),
}


def write_json(path: Path, value) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def read_sensor(sensor: str, source: str) -> np.ndarray:
    """One sweep in its own format -> (N, 3) float64 x, y, z in the sensor-centred frame (see module doc)."""
    path = DATA / source.split("#")[0]
    if sensor in ("kitti", "semantickitti"):
        xyz = np.fromfile(path, np.float32).reshape(-1, 4)[:, :3]
    elif sensor == "nuscenes":
        xyz = np.fromfile(path, np.float32).reshape(-1, 5)[:, :3]
    elif sensor == "radiate":
        xyz = np.loadtxt(path, delimiter=",", ndmin=2)[:, :3]
    elif sensor == "waymo":
        xyz = np.load(path)[:, :3].astype(np.float64)
        r = np.linalg.norm(xyz[:, :2], axis=1)
        xyz[:, 2] += KITTI_GROUND - np.percentile(xyz[(r > 4) & (r < 20), 2], 5)
    elif sensor == "argoverse2":
        import pyarrow.feather as feather
        xyz = feather.read_table(path).select(["x", "y", "z"]).to_pandas().to_numpy(np.float64).copy()
        calib = feather.read_table(DATA / AV2 / "calibration/egovehicle_SE3_sensor.feather").to_pandas()
        up = calib[calib.sensor_name == "up_lidar"].iloc[0]
        xyz -= np.array([up.tx_m, up.ty_m, up.tz_m])
    elif sensor == "ouster":
        from ouster.sdk import core, open_source
        source_ = open_source(str(path))
        lut = core.XYZLut(source_.sensor_info[0])
        frames = [frames[0] for frames in source_]
        rng = frames[int(source.split("#")[1])].field("RANGE")
        xyz = lut(rng)[rng > 0].astype(np.float64)
    else:
        raise KeyError(sensor)
    xyz = xyz[np.isfinite(xyz).all(1)]
    return xyz[np.linalg.norm(xyz, axis=1) >= NEAR]


def sweep_name(source: str) -> str:
    return Path(source.split("#")[0]).name.split(".")[0] + (f"_{source.split('#')[1]}" if "#" in source else "")


def prepare(args) -> None:
    manifest, hashes = {"near_m": NEAR, "sensors": {}}, {}
    for sensor, (description, splits) in SENSORS.items():
        entry = {"description": description, "splits": {}}
        try:
            for split, sources in splits.items():
                files = []
                for source in sources:
                    xyz = read_sensor(sensor, source).astype(np.float32)
                    digest = hashlib.sha256(xyz.tobytes()).hexdigest()
                    if digest in hashes and hashes[digest][1] != split:
                        raise SystemExit(f"{source} ({split}) has the same points as {hashes[digest][0]}")
                    hashes[digest] = (source, split)
                    out = OUT / "sweeps" / sensor / split / f"{sweep_name(source)}.npy"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(out, lambda f, xyz=xyz: np.save(f, xyz))
                    files.append({"file": str(out), "source": source, "points": len(xyz)})
                entry["splits"][split] = files
        except ImportError as err:
            entry["skipped"] = f"reader missing: {err}"
        manifest["sensors"][sensor] = entry
        print(f"{sensor:14s} " + (entry.get("skipped") or ", ".join(
            f"{split} {len(f)} sweeps, {np.mean([x['points'] for x in f]):.0f} points" for split, f in
            entry["splits"].items())))
    write_json(OUT / "manifest.json", manifest)


def evaluate(args) -> None:
    manifest = json.loads((OUT / "manifest.json").read_text())
    name = args.name or Path(args.config).stem
    results = {"name": name, "config": args.config, "checkpoint": args.checkpoint, "sensors": {}}
    prior = None
    for sensor, entry in manifest["sensors"].items():
        if "eval" not in entry.get("splits", {}):
            continue
        out = OUT / f"eval_{name}_{sensor}.json"
        cmd = [sys.executable, "tools/evaluate.py", args.config, "--checkpoint", args.checkpoint, "--layout", "xyz",
               "--seeds", *map(str, args.seeds), "--output", str(out),
               "--sweeps", *[f["file"] for f in entry["splits"]["eval"]]]
        if prior is not None:
            cmd += ["--prior", str(prior)]  # fitted once, on the training sweeps, by the first call
        prior = prior or out
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        results["sensors"][sensor] = {"description": entry["description"],
                                      "trained_on_sensor": "train" in entry["splits"],
                                      **json.loads(out.read_text())}
    path = OUT / f"eval_{name}.json"
    write_json(path, results)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    ev = sub.add_parser("evaluate")
    ev.add_argument("config")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ev.add_argument("--name", help="names the result files (default: the config's file name)")
    tb = sub.add_parser("table")
    tb.add_argument("results", nargs="+")
    args = parser.parse_args(argv)
    {"prepare": prepare, "evaluate": evaluate, "table": table}[args.command](args)


TRIVIAL = ("all_occupied", "range_prior", "neighbour")


def _cell(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def table(args) -> None:
    """One README row per (model, sensor): F1 / AUROC / AP of the model and the trivial answers, Chamfer-L2."""
    print("| model | sensor (eval sweeps) | seen in training | in range | occupied | F1 model / all / prior / "
          "neighbour | AUROC model / prior / neighbour | AP model / prior / neighbour | AUROC gain over best "
          "trivial | AUROC among queries with the same visible-neighbour count: model / prior | Chamfer m^2 model / "
          "centers / neighbour copy |")
    print("|---" * 11 + "|")
    for path in args.results:
        results = json.loads(Path(path).read_text())
        for sensor, r in results["sensors"].items():
            p = r["predictors"]
            f1 = " / ".join(_cell(p[k]["f1"]) for k in ("model", *TRIVIAL))
            auroc = " / ".join(_cell(p[k]["auroc"]) for k in ("model", "range_prior", "neighbour"))
            ap = " / ".join(_cell(p[k]["ap"]) for k in ("model", "range_prior", "neighbour"))
            gain = p["model"]["auroc"] - max(p[k]["auroc"] for k in TRIVIAL)
            same = " / ".join(_cell(p[k]["auroc_same_neighbours"]) for k in ("model", "range_prior"))
            chamfer = " / ".join(_cell(r["chamfer"].get(k)) for k in ("model", "centers", "neighbour_copy"))
            print(f"| {results.get('name', Path(results['config']).stem)} | {sensor} ({r['num_sweeps']}) | "
                  f"{'yes' if r['trained_on_sensor'] else 'no'} | {r['inside_range']['mean']:.2f} | "
                  f"{r['occupied_rate']:.3f} | {f1} | {auroc} | {ap} | {gain:+.3f} | {same} | {chamfer} |")


if __name__ == "__main__":
    main()
