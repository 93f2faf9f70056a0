"""A folder of point-cloud files (one recording) -> info file + float32 sweeps.

    python -m data_converters.folder --root DIR --out OUT [--layout kitti|nuscenes|waymo|xyz]
        [--columns intensity ...] [--poses POSES.txt | --estimate-poses] [--scene NAME] [--origin header|X,Y,Z]
        [--overwrite]

Files ``.pcd .ply .las .laz .bin .npy .txt`` are read with ``pcmae.io.load_points`` in name order as frames 0,
1, ... of one scene (NaN/inf points dropped). ``.bin`` and ``.txt`` files (text, one point a line, comma- or
space-separated, e.g. RADIATE's Velodyne CSVs linked as ``.txt``: ``--layout nuscenes``) need ``--layout``.
Output columns: x, y, z plus ``--columns`` (fields of named formats, or column names of the layout); without
``--columns``: all layout columns when a layout is given, else x, y, z. A frame's key is
``folder_<scene>_<file stem>`` (``<stem>_<ext>`` when two files share a stem), its points ``points/<key>.bin``.

LAS/LAZ survey coordinates (~1e5-1e7 m) do not fit float32: without ``--origin`` a file whose cast would move a
point by more than 1 mm is refused. ``--origin header`` subtracts each file's header offset, ``--origin X,Y,Z``
a given point, in float64 before the cast; the origin is recorded per frame (``lidar_points.origin``) and in
``ego2global`` (pose @ translation(origin)), so ``lidar2global`` still maps the points to survey coordinates.
The origin applies to .las/.laz files only.

The settings (layout, columns, pose file and its content, scene, origin) are recorded in
``OUT/folder_settings.json``; a re-run into the same ``--out`` with other settings is refused (``--overwrite``
converts every frame again), so the info file always matches the points files.

``--poses``: one line per frame (in file-name order; blank lines and ``#`` comments skipped), either
  * TUM: ``timestamp tx ty tz qx qy qz qw`` (8 numbers; sensor -> world, Hamilton quaternion, scalar last);
    the timestamp (seconds) becomes the frame's timestamp, or
  * KITTI odometry: 12 numbers, the row-major 3 x 4 [R | t] sensor -> world (timestamp 0).
The format is told by the count of numbers on the first line; every pose must be rigid (R orthonormal within
1e-3, det +1). Poses become ``ego2global``; lidar2ego is the identity (the poses are the sensor's). Without
poses both are identity and timestamps 0. ``--estimate-poses``: poses from KISS-ICP odometry over the frames in
order (``data_converters.odometry``; frame 0 = identity, timestamps stay 0).
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from data_converters import odometry
from data_converters.common import ConversionError, FrameResult, FrameTask, add_common_arguments, run_from_args
from pcmae.io import BIN_LAYOUTS, PointCloudFormatError, load_points
from pcmae.io.las import resolve_origin

EXTENSIONS = (".pcd", ".ply", ".las", ".laz", ".bin", ".npy", ".txt")
ARRAY_EXTENSIONS = (".bin", ".npy", ".txt")
RIGID_TOLERANCE = 1e-3  # max |R^T R - I| of a pose line (KITTI files print 9+ digits)
LAS_EXTENSIONS = (".las", ".laz")


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
        rotation = pose[:3, :3]
        error = np.abs(rotation.T @ rotation - np.eye(3)).max()
        if not (error <= RIGID_TOLERANCE and np.linalg.det(rotation) > 0):
            raise ConversionError(f"{path}: line {number} is not a rigid transform (|R^T R - I| = {error:.3g}, "
                                  f"det R = {np.linalg.det(rotation):.3g})")
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
    unnamed = sorted({p.suffix.lower() for p in files} & {".bin", ".txt"})
    if unnamed:
        raise ConversionError(f"{files[0].parent}: {' / '.join(unnamed)} files need --layout "
                              f"({', '.join(BIN_LAYOUTS)}): they do not name their columns")
    npy = [p for p in files if p.suffix.lower() == ".npy"]
    if npy:
        width = np.load(npy[0], mmap_mode="r").shape[-1]
        return ("x", "y", "z", *[f"f{i}" for i in range(3, width)])
    return ("x", "y", "z")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".") or "frame"


def frame_names(files: Sequence[Path]) -> List[str]:
    """Key part of each file: its stem, or ``<stem>_<ext>`` when several files share the stem."""
    stems = Counter(path.stem for path in files)
    return [safe_name(path.stem if stems[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}")
            for path in files]


def parse_origin(text: Optional[str]):
    """``--origin`` value -> None, "header" or an (x, y, z) tuple of floats."""
    if text is None or text == "header":
        return text
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise ConversionError(f"--origin {text!r}: expected 'header' or three finite numbers X,Y,Z")
    return values


def build_tasks(root: Path, layout: Optional[str], columns: Sequence[str], poses_file: Optional[Path],
                scene: str, origin=None) -> Tuple[List[FrameTask], Tuple[str, ...]]:
    files = list_files(root)
    names = output_columns(files, layout, columns)
    poses = read_poses(poses_file) if poses_file else [(0.0, np.eye(4))] * len(files)
    if len(poses) != len(files):
        raise ConversionError(f"{poses_file}: {len(poses)} poses for {len(files)} point-cloud files in {root}")
    tasks = [FrameTask(key=f"folder_{safe_name(scene)}_{name}", source=str(path), index=i,
                       payload={"layout": layout, "fields": list(names[3:]), "explicit": bool(columns),
                                "num_columns": len(names), "scene": scene, "timestamp": stamp,
                                "pose": pose.tolist(), "origin": origin})
             for i, (path, name, (stamp, pose)) in enumerate(zip(files, frame_names(files), poses))]
    return tasks, names


def settings(layout: Optional[str], columns: Sequence[str], poses_file: Optional[Path], scene: str,
             origin, estimate: Optional[odometry.OdometryConfig] = None) -> dict:
    """What shapes the output (compared with the first run's by run_conversion)."""
    digest = hashlib.sha256(poses_file.read_bytes()).hexdigest() if poses_file else None
    return {"layout": layout, "columns": list(columns), "poses": str(poses_file) if poses_file else None,
            "poses_sha256": digest, "scene": scene, "origin": origin, "odometry": odometry.settings_entry(estimate)}


def odometry_frame(task: FrameTask):
    """(xyz, per-point times or None) of a task's frame, for --estimate-poses (times: a timestamp/time column)."""
    points = convert_one(task).points
    fields = list(task.payload["fields"])
    time_column = next((fields.index(n) for n in ("timestamp", "time", "t") if n in fields), None)
    return points[:, :3], None if time_column is None else points[:, 3 + time_column]


def convert_one(task: FrameTask) -> FrameResult:
    p = task.payload
    if p["pose"] is None:
        raise ConversionError("no pose: --estimate-poses could not read this frame")
    path = Path(task.source)
    suffix = path.suffix.lower()
    origin = np.zeros(3)
    if suffix in ARRAY_EXTENSIONS:
        fields = p["fields"] if p["explicit"] else None
        points = load_points(path, layout=p["layout"], fields=fields, drop_nonfinite=True)
    elif suffix in LAS_EXTENSIONS:
        try:
            if p.get("origin") is not None:
                origin = resolve_origin(p["origin"], path)
            points = load_points(path, fields=p["fields"], drop_nonfinite=True,
                                 origin=None if p.get("origin") is None else tuple(origin.tolist()))
        except PointCloudFormatError as err:
            hint = " (folder converter: --origin header or --origin X,Y,Z)" if "origin" in str(err) else ""
            raise ConversionError(f"{err}{hint}") from None
    else:
        points = load_points(path, fields=p["fields"], drop_nonfinite=True)
    if points.shape[1] != p["num_columns"]:
        raise ConversionError(f"{path}: {points.shape[1]} columns, the other files give {p['num_columns']}")
    identity = np.eye(4).tolist()
    shift = np.eye(4)
    shift[:3, 3] = origin
    ego2global = (np.asarray(p["pose"], np.float64) @ shift).tolist()
    info = {"sample_idx": task.index, "token": path.name, "timestamp": float(p["timestamp"]),
            "ego2global": ego2global, "lidar_points": {"lidar2ego": identity, "origin": origin.tolist()},
            "instances": [], "scene": p["scene"], "frame_index": task.index, "lidar2global": ego2global}
    return FrameResult(points=points, info=info)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_converters.folder", description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--layout", choices=sorted(BIN_LAYOUTS), help="columns of .bin/.npy files")
    parser.add_argument("--columns", nargs="+", default=[], help="feature columns to keep after x, y, z")
    parser.add_argument("--poses", type=Path, help="TUM (8 numbers) or KITTI odometry (12 numbers) pose file")
    parser.add_argument("--scene", help="scene name (default: the folder's name)")
    parser.add_argument("--origin", help="LAS/LAZ local origin: 'header' (each file's header offset) or X,Y,Z, "
                                         "subtracted in float64 before the float32 cast")
    odometry.add_odometry_arguments(parser)
    args = parser.parse_args(argv)
    scene = args.scene or args.root.resolve().name
    try:
        if args.poses and args.estimate_poses:
            raise ConversionError("--poses and --estimate-poses exclude each other")
        estimate = odometry.config_from_args(args)
        origin = parse_origin(args.origin)
        tasks, columns = build_tasks(args.root, args.layout, args.columns, args.poses, scene, origin)
        options = settings(args.layout, args.columns, args.poses, scene, origin, estimate)
        if estimate is not None:
            tasks = odometry.estimate_for_run(args, "folder", tasks, columns, options, odometry_frame, estimate)
    except (ConversionError, ImportError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    metainfo = {"scene": scene, "pose_file": str(args.poses or ""), "origin": origin}
    return run_from_args(args, dataset="folder", split=args.split or "all", tasks=tasks, convert_one=convert_one,
                         columns=columns, metainfo=metainfo, settings=options)


if __name__ == "__main__":
    sys.exit(main())
