"""Argoverse 2 sensor logs (lidar sweeps + city poses, ``.feather``) -> info file + float32 sweeps (needs pyarrow).

    python -m data_converters.av2 --root LOGS --out OUT [--columns intensity laser_number offset_ns] [--split val]

``--root`` is one log folder (holding ``sensors/lidar/<timestamp_ns>.feather``), a split folder of logs, or a
folder of split folders (then ``--split`` picks one). Every sweep is a frame; frames of a log are ordered by
timestamp (``frame_index`` 0, 1, ...), ``scene`` is the log id, ``timestamp`` the sweep's ``timestamp_ns`` in
seconds (the exact value is kept as ``timestamp_ns``).

Points: AV2 sweeps hold both lidars' returns already in the **ego-vehicle frame** (x, y, z float16; intensity
u8, laser_number u8, offset_ns i32), so the converted "sensor" frame is the ego frame: ``lidar2ego`` is the
identity, and ``ego2global`` = ``lidar2global`` = ``city_SE3_egovehicle`` (the log's
``city_SE3_egovehicle.feather``: timestamp_ns, qw, qx, qy, qz, tx_m, ty_m, tz_m) at the sweep's timestamp.
A pose row must match the timestamp exactly (AV2 logs one at every sweep); a sweep without one fails, naming
the file. ``calibration/egovehicle_SE3_sensor.feather`` is not needed (the points are not in a lidar's frame).
Columns: x, y, z plus ``--columns`` (default intensity laser_number), all float32 (float16 -> float32 is exact).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_converters.common import ConversionError, FrameResult, FrameTask, add_common_arguments, run_from_args
from data_converters.folder import quaternion_matrix

DATASET = "av2"
FEATURES = ("intensity", "laser_number", "offset_ns")
DEFAULT_FEATURES = ("intensity", "laser_number")
POSE_COLUMNS = ("timestamp_ns", "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m")
POSE_FILE = "city_SE3_egovehicle.feather"


def _feather():
    try:
        import pyarrow.feather as feather
    except ImportError:
        raise ImportError("reading Argoverse 2 .feather files needs the optional package 'pyarrow': "
                          "pip install pyarrow") from None
    return feather


def read_feather(path: Path, columns: Sequence[str]) -> Dict[str, np.ndarray]:
    """{column: numpy array} of a .feather table; ConversionError naming the file when it is unreadable or lacks
    a column."""
    feather = _feather()
    try:
        table = feather.read_table(str(path))
    except Exception as err:  # noqa: BLE001 - pyarrow's ArrowInvalid / OSError for truncated or foreign files
        raise ConversionError(f"{path}: unreadable .feather file ({type(err).__name__}: {err})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ConversionError(f"{path}: no column(s) {', '.join(missing)} (columns: {', '.join(table.column_names)})")
    try:
        return {c: table.column(c).to_numpy() for c in columns}
    except Exception as err:  # noqa: BLE001 - nulls in a column, or a body cut short
        raise ConversionError(f"{path}: unreadable column ({type(err).__name__}: {err})") from None


def read_city_poses(log: Path) -> Dict[int, np.ndarray]:
    """{timestamp_ns: (4, 4) ego -> city} of a log's ``city_SE3_egovehicle.feather``."""
    path = log / POSE_FILE
    if not path.is_file():
        raise ConversionError(f"{path}: pose file not found (every AV2 sensor log has one)")
    table = read_feather(path, POSE_COLUMNS)
    poses = {}
    for row, stamp in enumerate(table["timestamp_ns"]):
        pose = np.eye(4)
        try:
            pose[:3, :3] = quaternion_matrix(*(float(table[q][row]) for q in ("qx", "qy", "qz", "qw")))
        except ValueError:
            raise ConversionError(f"{path}: row {row} has a zero quaternion") from None
        pose[:3, 3] = [float(table[t][row]) for t in ("tx_m", "ty_m", "tz_m")]
        if not np.isfinite(pose).all():
            raise ConversionError(f"{path}: row {row} has NaN/inf values")
        poses[int(stamp)] = pose
    return poses


def find_logs(root: Path, split: Optional[str]) -> Tuple[List[Path], str]:
    """(log folders, split name): ``root`` is a log, a split folder of logs, or a folder of split folders."""
    if not root.is_dir():
        raise ConversionError(f"{root}: not a folder (expected an AV2 log or a split folder of logs)")
    if (root / "sensors" / "lidar").is_dir():
        return [root], split or root.resolve().parent.name
    base = root / split if split and (root / split).is_dir() else root
    logs = sorted(p for p in base.iterdir() if (p / "sensors" / "lidar").is_dir())
    if not logs:
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and any(
            (q / "sensors" / "lidar").is_dir() for q in p.iterdir() if q.is_dir()))
        hint = f"; pass --split ({', '.join(splits)})" if splits and not split else ""
        raise ConversionError(f"{base}: no AV2 logs (folders with sensors/lidar/*.feather){hint}")
    return logs, split or base.resolve().name


def build_tasks(logs: Sequence[Path], features: Sequence[str]) -> List[FrameTask]:
    """One task per sweep, per log in timestamp order, with its city pose (or the reason it has none)."""
    tasks = []
    for log in logs:
        sweeps = []
        for path in (log / "sensors" / "lidar").glob("*.feather"):
            if not path.stem.isdigit():
                raise ConversionError(f"{path}: sweep name is not a timestamp in ns")
            sweeps.append((int(path.stem), path))
        if not sweeps:
            raise ConversionError(f"{log / 'sensors' / 'lidar'}: no .feather sweeps")
        poses = read_city_poses(log)
        for index, (stamp, path) in enumerate(sorted(sweeps)):
            pose = poses.get(stamp)
            error = None
            if pose is None:
                nearest = min(poses, key=lambda t: abs(t - stamp), default=None)
                gap = "the pose file is empty" if nearest is None else \
                    f"nearest pose row is {abs(nearest - stamp) / 1e6:.3f} ms away"
                error = f"no pose row at timestamp_ns {stamp} in {log / POSE_FILE} (exact match required; {gap})"
            tasks.append(FrameTask(key=f"av2_{log.name}_{stamp}", source=str(path), index=index,
                                   payload={"scene": log.name, "timestamp_ns": stamp, "features": list(features),
                                            "pose": None if pose is None else pose.tolist(), "pose_error": error}))
    return tasks


def read_sweep(path: Path, features: Sequence[str]) -> np.ndarray:
    """(N, 3 + len(features)) float32 x, y, z, features of one sweep (ego frame)."""
    table = read_feather(path, ("x", "y", "z", *features))
    return np.stack([table[c].astype(np.float32) for c in ("x", "y", "z", *features)], axis=1)


def convert_one(task: FrameTask) -> FrameResult:
    p = task.payload
    if p["pose_error"]:
        raise ConversionError(p["pose_error"])
    points = read_sweep(Path(task.source), p["features"])
    identity = np.eye(4).tolist()
    info = {"sample_idx": task.index, "token": f"{p['scene']}/{p['timestamp_ns']}",
            "timestamp": p["timestamp_ns"] * 1e-9, "timestamp_ns": p["timestamp_ns"], "ego2global": p["pose"],
            "lidar_points": {"lidar2ego": identity}, "instances": [], "scene": p["scene"],
            "frame_index": task.index, "lidar2global": p["pose"]}
    return FrameResult(points=points, info=info)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_converters.av2", description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--columns", nargs="+", choices=FEATURES, default=list(DEFAULT_FEATURES),
                        help=f"feature columns after x, y, z (default {' '.join(DEFAULT_FEATURES)})")
    args = parser.parse_args(argv)
    try:
        _feather()
        logs, split = find_logs(args.root, args.split)
        tasks = build_tasks(logs, args.columns)
    except (ConversionError, ImportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    columns = ("x", "y", "z", *args.columns)
    metainfo = {"point_frame": "ego", "logs": [log.name for log in logs]}
    return run_from_args(args, dataset=DATASET, split=split, tasks=tasks, convert_one=convert_one, columns=columns,
                         metainfo=metainfo, settings={"columns": list(args.columns)})


if __name__ == "__main__":
    sys.exit(main())
