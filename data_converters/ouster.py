"""Ouster recordings (``.osf``, or ``.pcap`` + metadata ``.json``) -> info file + float32 sweeps (needs ouster-sdk).

    python -m data_converters.ouster --root REC --out OUT [--meta SENSOR.json] [--sensor 0]
        [--columns reflectivity ring ...] [--poses POSES.txt | --estimate-poses]

REC is an ``.osf`` / ``.pcap`` file or a folder of them (each recording one scene, named by the file stem).
Every scan of the recording is a frame (``frame_index`` = scan order); ``timestamp`` is the sensor clock of the
scan's first valid column in seconds (the same in the .osf and .pcap of one recording). A ``.pcap`` needs the
sensor's metadata ``.json``: ``--meta``, else ouster-sdk's rule (the ``.json`` in the same folder whose name is
the longest prefix of the pcap's). Read with ``pip install --no-deps ouster-sdk`` (it imports ``rosbags``).

Points: x, y, z in the **sensor frame** (ouster-sdk's XYZ lookup table of the sensor's metadata, which includes
``lidar_to_sensor_transform``), one point per return with range > 0 (zero range = no return), in the scan's
row-major (beam, column) order. Columns after x, y, z (``--columns``, default reflectivity ring):
``reflectivity``, ``signal``, ``near_ir`` (the scan's fields; a field the profile lacks is an error),
``ring`` (beam row 0..H-1), ``column`` (measurement id 0..W-1), ``time`` (seconds since the scan's first valid
column). An incomplete scan (columns missing, e.g. a recording cut mid-scan) is a failed frame.

Poses: recordings hold none. ``--poses FILE`` (KITTI 3 x 4 or TUM lines, one per scan, see
``data_converters.folder``; each must be rigid) or ``--estimate-poses`` (KISS-ICP odometry, see
``data_converters.odometry``, deskewed with the column times) give ``ego2global`` = ``lidar2global`` with
``lidar2ego`` the identity (the poses are the sensor's); without either, poses are identity.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import hashlib
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from data_converters import odometry
from data_converters.common import ConversionError, FrameResult, FrameTask, add_common_arguments, run_from_args
from data_converters.folder import read_poses, safe_name

DATASET = "ouster"
EXTENSIONS = (".osf", ".pcap")
FIELDS = {"reflectivity": "REFLECTIVITY", "signal": "SIGNAL", "near_ir": "NEAR_IR"}
DERIVED = ("ring", "column", "time")
DEFAULT_COLUMNS = ("reflectivity", "ring")


@functools.lru_cache(maxsize=None)
def _sdk():
    """(open_source, core, osf) of ouster-sdk, with its C++ log quiet below errors (errors are ours to report)."""
    try:
        from ouster.sdk import core, open_source, osf
    except ImportError as err:
        raise ImportError(f"reading Ouster recordings needs the optional package 'ouster-sdk' ({err}): "
                          f"pip install --no-deps ouster-sdk==1.0.1 rosbags") from None
    core.init_logger("error")
    return open_source, core, osf


def list_recordings(root: Path) -> List[Path]:
    if root.is_file():
        if root.suffix.lower() not in EXTENSIONS:
            raise ConversionError(f"{root}: not an Ouster recording ({' '.join(EXTENSIONS)})")
        return [root]
    if not root.is_dir():
        raise ConversionError(f"{root}: recording not found")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ConversionError(f"{root}: no Ouster recordings ({' '.join(EXTENSIONS)})")
    return files


def open_recording(path: Path, meta: Optional[Path], sensor: int):
    """ouster-sdk source of one recording (one sensor); ConversionError naming the file when unreadable."""
    open_source, _, osf = _sdk()
    if path.suffix.lower() == ".osf":
        reader = _call(path, lambda: osf.Reader(str(path)))
        if not reader.metadata_id:  # a cut-short file loses the metadata chunk written at its end
            raise ConversionError(f"{path}: damaged or truncated OSF file (no metadata chunk at its end)")
    if meta is not None and not meta.is_file():
        raise ConversionError(f"{meta}: metadata file not found")
    kwargs = {"meta": [str(meta)]} if meta is not None and path.suffix.lower() == ".pcap" else {}
    source = _call(path, lambda: open_source(str(path), **kwargs))
    count = len(source.sensor_info)
    if not 0 <= sensor < count:
        raise ConversionError(f"{path}: no sensor {sensor} (the recording has {count})")
    return source


def _call(path: Path, function):
    try:
        return function()
    except ConversionError:
        raise
    except Exception as err:  # noqa: BLE001 - ouster-sdk raises RuntimeError / ValueError / its own types
        message = " ".join(str(err).split())
        raise ConversionError(f"{path}: cannot read the recording ({type(err).__name__}: {message})") from None


def scan_arrays(scan, lut, core) -> Tuple[np.ndarray, dict]:
    """(xyz (N, 3) float64 of the returns with range > 0, {column: (N,) values}) of one scan."""
    valid = scan.field(core.ChanField.RANGE) > 0
    xyz = lut(scan)[valid]
    rows, cols = np.nonzero(valid)
    first = int(scan.timestamp[scan.get_first_valid_column()])
    columns = {"ring": rows, "column": cols, "time": (scan.timestamp[cols].astype(np.int64) - first) * 1e-9}
    for name, field in FIELDS.items():
        if scan.has_field(field):
            columns[name] = scan.field(field)[valid]
    return xyz, columns


def scan_time(scan) -> float:
    return int(scan.timestamp[scan.get_first_valid_column()]) * 1e-9


def build_tasks(files: Sequence[Path], meta: Optional[Path], sensor: int, columns: Sequence[str],
                poses_file: Optional[Path]) -> List[FrameTask]:
    """One task per scan (one read of each recording); incomplete scans carry the reason they fail."""
    tasks = []
    if poses_file is not None and len(files) != 1:
        raise ConversionError(f"{poses_file}: --poses needs one recording, --root has {len(files)}")
    for path in files:
        scene = safe_name(path.stem)
        source = open_recording(path, meta, sensor)
        scans = []
        for index, frame in enumerate(_call(path, lambda: list(_scans(source, sensor)))):
            problem = None
            if not frame.complete():
                present = int((frame.status & 1).sum())
                problem = f"scan {index} (frame_id {frame.frame_id}) is incomplete: {present} of {frame.w} columns"
            scans.append((int(frame.frame_id), scan_time(frame) if frame.get_first_valid_column() >= 0 else 0.0,
                          problem))
        if not scans:
            raise ConversionError(f"{path}: no scans of sensor {sensor}")
        poses = [np.eye(4)] * len(scans)
        if poses_file is not None:
            poses = [pose for _, pose in read_poses(poses_file)]
            if len(poses) != len(scans):
                raise ConversionError(f"{poses_file}: {len(poses)} poses for {len(scans)} scans in {path}")
        for index, ((frame_id, stamp, problem), pose) in enumerate(zip(scans, poses)):
            tasks.append(FrameTask(
                key=f"ouster_{scene}_{index:06d}", source=str(path), index=index,
                payload={"scene": scene, "meta": str(meta) if meta else None, "sensor": sensor, "frame_id": frame_id,
                         "timestamp": stamp, "problem": problem, "columns": list(columns), "pose": pose.tolist()}))
    return tasks


def _scans(source, sensor: int):
    for frames in source:
        if frames[sensor] is not None:
            yield frames[sensor]


class _Cursor:
    """Per-process forward reader of one recording: tasks of a recording arrive in scan order."""

    def __init__(self):
        self.key, self.scans, self.lut, self.position = None, None, None, 0

    def get(self, path: str, meta: Optional[str], sensor: int, ordinal: int):
        _, core, _ = _sdk()
        if self.key != (path, meta, sensor) or ordinal < self.position:
            source = open_recording(Path(path), Path(meta) if meta else None, sensor)
            self.key, self.scans, self.position = (path, meta, sensor), _scans(source, sensor), 0
            self.lut = core.XYZLut(source.sensor_info[sensor])
        for scan in self.scans:
            self.position += 1
            if self.position - 1 == ordinal:
                return scan, self.lut, core
        self.key = None
        raise ConversionError(f"{path}: has only {self.position} scans of sensor {sensor}")

    def close(self):
        self.key, self.scans, self.lut, self.position = None, None, None, 0


_CURSOR = _Cursor()
atexit.register(_CURSOR.close)


def _read_scan(task: FrameTask):
    p = task.payload
    if p["problem"]:
        raise ConversionError(f"{p['problem']} (--on-error skip converts the other scans)")
    scan, lut, core = _CURSOR.get(task.source, p["meta"], p["sensor"], task.index)
    if int(scan.frame_id) != p["frame_id"]:
        raise ConversionError(f"{task.source}: scan {task.index} has frame_id {scan.frame_id}, expected "
                              f"{p['frame_id']} (the recording changed since the tasks were listed)")
    return scan_arrays(scan, lut, core)


def odometry_frame(task: FrameTask):
    """(xyz, column times) of a task's scan, for --estimate-poses."""
    xyz, columns = _read_scan(task)
    return xyz, columns["time"]


def convert_one(task: FrameTask) -> FrameResult:
    p = task.payload
    xyz, values = _read_scan(task)
    if p["pose"] is None:
        raise ConversionError("no pose: --estimate-poses could not read this scan")
    missing = [c for c in p["columns"] if c not in values]
    if missing:
        present = ", ".join(sorted(set(values) - set(DERIVED))) or "none"
        raise ConversionError(f"{task.source}: scans have no {', '.join(missing)} field (fields: {present})")
    points = np.column_stack([xyz, *(values[c] for c in p["columns"])]).astype(np.float32)
    identity = np.eye(4).tolist()
    info = {"sample_idx": task.index, "token": f"{p['scene']}/{p['frame_id']}", "timestamp": p["timestamp"],
            "ego2global": p["pose"], "lidar_points": {"lidar2ego": identity, "frame_id": p["frame_id"]},
            "instances": [], "scene": p["scene"], "frame_index": task.index, "lidar2global": p["pose"]}
    return FrameResult(points=points, info=info)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_converters.ouster", description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--meta", type=Path, help="sensor metadata .json of .pcap recordings")
    parser.add_argument("--sensor", type=int, default=0, help="sensor index in multi-sensor recordings (default 0)")
    parser.add_argument("--columns", nargs="+", choices=(*FIELDS, *DERIVED), default=list(DEFAULT_COLUMNS),
                        help=f"columns after x, y, z (default {' '.join(DEFAULT_COLUMNS)})")
    parser.add_argument("--poses", type=Path, help="TUM (8 numbers) or KITTI (12 numbers) pose file, a line a scan")
    odometry.add_odometry_arguments(parser)
    args = parser.parse_args(argv)
    columns = ("x", "y", "z", *args.columns)
    try:
        if args.poses and args.estimate_poses:
            raise ConversionError("--poses and --estimate-poses exclude each other")
        estimate = odometry.config_from_args(args)
        files = list_recordings(args.root)
        tasks = build_tasks(files, args.meta, args.sensor, args.columns, args.poses)
        digest = hashlib.sha256(args.poses.read_bytes()).hexdigest() if args.poses else None
        settings = {"columns": list(args.columns), "sensor": args.sensor, "meta": str(args.meta or ""),
                    "poses": str(args.poses or ""), "poses_sha256": digest,
                    "odometry": odometry.settings_entry(estimate)}
        if estimate is not None:
            tasks = odometry.estimate_for_run(args, DATASET, tasks, columns, settings, odometry_frame, estimate)
    except (ConversionError, ImportError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    metainfo = {"point_frame": "sensor", "recordings": [str(p) for p in files], "pose_file": str(args.poses or "")}
    return run_from_args(args, dataset=DATASET, split=args.split or "all", tasks=tasks, convert_one=convert_one,
                         columns=columns, metainfo=metainfo, settings=settings)


if __name__ == "__main__":
    sys.exit(main())
