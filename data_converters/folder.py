"""A folder of point-cloud files (one recording) -> info file + float32 sweeps.

    python -m data_converters.folder --root DIR --out OUT [--layout kitti|nuscenes|waymo|xyz]
        [--columns intensity ...] [--poses POSES.txt] [--scene NAME]

Files ``.pcd .ply .las .laz .bin .npy`` are read with ``pcmae.io.load_points`` in name order as frames 0, 1, ...
of one scene (NaN/inf points dropped). ``.bin`` files need ``--layout`` (their size cannot tell the columns).
Output columns: x, y, z plus ``--columns`` (fields of named formats, or column names of the layout); without
``--columns``: all layout columns when a layout is given, else x, y, z.

``--poses``: one line per frame (in file-name order; blank lines and ``#`` comments skipped), either
  * TUM: ``timestamp tx ty tz qx qy qz qw`` (8 numbers; sensor -> world, Hamilton quaternion, scalar last);
    the timestamp (seconds) becomes the frame's timestamp, or
  * KITTI odometry: 12 numbers, the row-major 3 x 4 [R | t] sensor -> world (timestamp 0).
The format is told by the count of numbers on the first line. Poses become ``ego2global``; lidar2ego is the
identity (the poses are the sensor's). Without poses both are identity and timestamps 0.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from data_converters.common import ConversionError, FrameResult, FrameTask, add_common_arguments, run_from_args
from pcmae.io import BIN_LAYOUTS, load_points

EXTENSIONS = (".pcd", ".ply", ".las", ".laz", ".bin", ".npy")
ARRAY_EXTENSIONS = (".bin", ".npy")


def quaternion_matrix(qx: float, qy: float, qz: float, qw: float) -> np.ndarray:
    """(3, 3) rotation of a unit quaternion (normalised here)."""
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not norm > 0:
        raise ValueError("zero quaternion")
    w, x, y, z = q / norm
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def read_poses(path: Path) -> List[Tuple[float, np.ndarray]]:
    """Pose file (TUM 8 numbers or KITTI odometry 12 numbers a line) -> [(timestamp, (4, 4) pose)]."""
    if not path.is_file():
        raise ConversionError(f"{path}: pose file not found")
    poses = []
    width = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise ConversionError(f"{path}: line {number} has non-numeric values") from None
        width = width or len(values)
        if len(values) not in (8, 12) or len(values) != width:
            raise ConversionError(f"{path}: line {number} has {len(values)} numbers; expected 8 on every line "
                                  f"(TUM: timestamp tx ty tz qx qy qz qw) or 12 (KITTI odometry 3 x 4)")
        pose = np.eye(4)
        if width == 8:
            try:
                pose[:3, :3] = quaternion_matrix(*values[4:8])
            except ValueError:
                raise ConversionError(f"{path}: line {number} has a zero quaternion") from None
            pose[:3, 3] = values[1:4]
            poses.append((values[0], pose))
        else:
            pose[:3] = np.reshape(values, (3, 4))
            poses.append((0.0, pose))
    return poses


def list_files(root: Path) -> List[Path]:
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ConversionError(f"{root}: no point-cloud files ({' '.join(EXTENSIONS)})")
    return files


def output_columns(files: Sequence[Path], layout: Optional[str], columns: Sequence[str]) -> Tuple[str, ...]:
    """Column names of the converted sweeps (see the module docstring)."""
    if columns:
        return ("x", "y", "z", *columns)
    if layout is not None:
        return BIN_LAYOUTS[layout]
    if any(p.suffix.lower() == ".bin" for p in files):
        raise ConversionError(f"{files[0].parent}: .bin files need --layout ({', '.join(BIN_LAYOUTS)}): their "
                              f"size cannot tell the number of columns")
    npy = [p for p in files if p.suffix.lower() == ".npy"]
    if npy:
        width = np.load(npy[0], mmap_mode="r").shape[-1]
        return ("x", "y", "z", *[f"f{i}" for i in range(3, width)])
    return ("x", "y", "z")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".") or "frame"


def build_tasks(root: Path, layout: Optional[str], columns: Sequence[str], poses_file: Optional[Path],
                scene: str) -> Tuple[List[FrameTask], Tuple[str, ...]]:
    files = list_files(root)
    names = output_columns(files, layout, columns)
    poses = read_poses(poses_file) if poses_file else [(0.0, np.eye(4))] * len(files)
    if len(poses) != len(files):
        raise ConversionError(f"{poses_file}: {len(poses)} poses for {len(files)} point-cloud files in {root}")
    tasks = [FrameTask(key=f"folder_{safe_name(scene)}_{safe_name(path.name)}", source=str(path), index=i,
                       payload={"layout": layout, "fields": list(names[3:]), "explicit": bool(columns),
                                "num_columns": len(names), "scene": scene, "timestamp": stamp,
                                "pose": pose.tolist()})
             for i, (path, (stamp, pose)) in enumerate(zip(files, poses))]
    return tasks, names


def convert_one(task: FrameTask) -> FrameResult:
    p = task.payload
    path = Path(task.source)
    if path.suffix.lower() in ARRAY_EXTENSIONS:
        fields = p["fields"] if p["explicit"] else None
        points = load_points(path, layout=p["layout"], fields=fields, drop_nonfinite=True)
    else:
        points = load_points(path, fields=p["fields"], drop_nonfinite=True)
    if points.shape[1] != p["num_columns"]:
        raise ConversionError(f"{path}: {points.shape[1]} columns, the other files give {p['num_columns']}")
    identity = np.eye(4).tolist()
    info = {"sample_idx": task.index, "token": path.name, "timestamp": float(p["timestamp"]),
            "ego2global": p["pose"], "lidar_points": {"lidar2ego": identity}, "instances": [],
            "scene": p["scene"], "frame_index": task.index, "lidar2global": p["pose"]}
    return FrameResult(points=points, info=info)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_converters.folder", description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--layout", choices=sorted(BIN_LAYOUTS), help="columns of .bin/.npy files")
    parser.add_argument("--columns", nargs="+", default=[], help="feature columns to keep after x, y, z")
    parser.add_argument("--poses", type=Path, help="TUM (8 numbers) or KITTI odometry (12 numbers) pose file")
    parser.add_argument("--scene", help="scene name (default: the folder's name)")
    args = parser.parse_args(argv)
    scene = args.scene or args.root.resolve().name
    try:
        tasks, columns = build_tasks(args.root, args.layout, args.columns, args.poses, scene)
    except (ConversionError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return run_from_args(args, dataset="folder", split=args.split or "all", tasks=tasks, convert_one=convert_one,
                         columns=columns, metainfo={"scene": scene, "pose_file": str(args.poses or "")})


if __name__ == "__main__":
    sys.exit(main())
