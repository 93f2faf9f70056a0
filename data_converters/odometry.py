"""LiDAR odometry for recordings without poses: KISS-ICP over the ordered sweeps (``pip install kiss-icp``).

``estimate_poses(frames, config) -> (T, 4, 4)`` float64 poses, sensor -> frame-0 sensor (frame 0 = identity).
A frame is (N, 3) x, y, z in the sensor frame, or a pair (xyz (N, 3), times (N,)) with per-point acquisition
times in any unit (normalised per frame to [0, 1]; a constant column counts as none). The times are used only
with ``deskew=True``: KISS-ICP 1.x then motion-compensates each frame to the end of its sweep, so its pose is
the sensor's at the sweep's end, while the converters store the raw (not deskewed) points, which the pose of
a rigid registration of the raw sweep maps best. Measured on the Ouster lb_n3 scans (benchmarks/odometry.py):
deskewed poses are 0.10 m off the recorded motion of scans 1-2 and overlap the raw scans worse (median NN
0.054 m against 0.049 m without deskewing), hence ``deskew=False`` by default.
KISS-ICP runs single-threaded: its threaded reduction adds in a varying order, and a resumed conversion must get
the same poses bit for bit. KISS-ICP is causal (frame k's pose depends on frames 0..k only), so the poses of a
prefix (``--limit``) equal those of the full run.

Converters (folder, rosbag, ouster) call ``estimate_for_run`` from their ``main`` with ``--estimate-poses``: it
reads every frame once, in order, per scene, and keeps the poses in ``OUT/<dataset>_odometry.json`` (written
atomically) together with the odometry settings and a fingerprint per frame (source path, size, mtime); a re-run
with the same frames and settings reads the file instead of running odometry again, and a re-run whose odometry
would give an already converted frame another pose is refused, so the frames of a scene converted in different
runs share one trajectory. The poses become each task's payload ``"pose"`` (written as ego2global =
lidar2global, lidar2ego = identity, as for a ``--poses`` file).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from data_converters.common import ConversionError, _error_message, _jsonable, check_settings
from pcmae.io.atomic import atomic_write

Frame = Union[np.ndarray, Tuple[np.ndarray, Optional[np.ndarray]]]


@dataclass(frozen=True)
class OdometryConfig:
    """KISS-ICP settings (metres). min_range drops returns off the ego body / fog next to the sensor."""

    max_range: float = 100.0
    min_range: float = 2.0
    voxel_size: Optional[float] = None  # None: max_range / 100 (KISS-ICP's rule)
    deskew: bool = False                # motion-compensate frames that have per-point times (see above)


def _kiss_icp():
    try:
        from kiss_icp.config import KISSConfig
        from kiss_icp.kiss_icp import KissICP
    except ImportError:
        raise ImportError("--estimate-poses needs the optional package 'kiss-icp': pip install kiss-icp") from None
    return KISSConfig, KissICP


def estimate_poses(frames: Iterable[Frame], config: OdometryConfig = OdometryConfig()) -> np.ndarray:
    """(T, 4, 4) float64 sensor -> frame-0 poses of the ordered ``frames`` (see the module docstring)."""
    KISSConfig, KissICP = _kiss_icp()
    kiss_config = KISSConfig()
    kiss_config.data.max_range = float(config.max_range)
    kiss_config.data.min_range = float(config.min_range)
    kiss_config.data.deskew = bool(config.deskew)
    kiss_config.mapping.voxel_size = float(config.voxel_size or config.max_range / 100.0)
    kiss_config.registration.max_num_threads = 1
    odometry = KissICP(kiss_config)
    poses = []
    for index, frame in enumerate(frames):
        xyz, times = frame if isinstance(frame, tuple) else (frame, None)
        xyz = np.asarray(xyz, np.float64)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"odometry frame {index}: points have shape {xyz.shape}, expected (N, 3)")
        odometry.register_frame(np.ascontiguousarray(xyz), _normalised_times(times, len(xyz), index))
        poses.append(odometry.last_pose.copy())
    return np.asarray(poses, np.float64).reshape(-1, 4, 4)


def _normalised_times(times: Optional[np.ndarray], count: int, index: int) -> np.ndarray:
    """Per-point times mapped to [0, 1]; an empty array (no deskewing) when absent or constant."""
    if times is None:
        return np.zeros(0, np.float64)
    times = np.asarray(times, np.float64).ravel()
    if len(times) != count:
        raise ValueError(f"odometry frame {index}: {len(times)} point times for {count} points")
    low, high = float(times.min(initial=0.0)), float(times.max(initial=0.0))
    if not np.isfinite([low, high]).all() or high <= low:
        return np.zeros(0, np.float64)
    return (times - low) / (high - low)


# ------------------------------------------------------------------------------------------------ converters
def add_odometry_arguments(parser: argparse.ArgumentParser) -> None:
    """--estimate-poses and the KISS-ICP settings it uses."""
    defaults = OdometryConfig()
    parser.add_argument("--estimate-poses", action="store_true",
                        help="poses from LiDAR odometry (KISS-ICP, pip install kiss-icp) over the frames in order")
    parser.add_argument("--odometry-max-range", type=float, default=defaults.max_range,
                        help=f"odometry: ignore returns farther than this (m, default {defaults.max_range})")
    parser.add_argument("--odometry-min-range", type=float, default=defaults.min_range,
                        help=f"odometry: ignore returns nearer than this (m, default {defaults.min_range})")
    parser.add_argument("--odometry-voxel-size", type=float, default=None,
                        help="odometry map voxel (m, default max range / 100)")
    parser.add_argument("--odometry-deskew", action="store_true",
                        help="odometry: deskew sweeps with their per-point times (poses then refer to the sweep end)")


def config_from_args(args: argparse.Namespace) -> Optional[OdometryConfig]:
    """OdometryConfig of ``--estimate-poses`` (None without it); ValueError for impossible ranges."""
    if not args.estimate_poses:
        return None
    config = OdometryConfig(max_range=args.odometry_max_range, min_range=args.odometry_min_range,
                            voxel_size=args.odometry_voxel_size, deskew=args.odometry_deskew)
    if not 0 <= config.min_range < config.max_range or (config.voxel_size is not None and config.voxel_size <= 0):
        raise ValueError(f"odometry ranges must satisfy 0 <= --odometry-min-range < --odometry-max-range and "
                         f"--odometry-voxel-size > 0; got {config}")
    return config


def settings_entry(config: Optional[OdometryConfig]) -> Optional[dict]:
    """The odometry part of a converter's settings (None without --estimate-poses)."""
    return None if config is None else {"method": "kiss-icp", **asdict(config)}


def check_earlier_run(out_dir: Path, dataset: str, tasks: Sequence, columns: Sequence[str], settings: dict,
                      overwrite: bool) -> None:
    """run_conversion's settings check, done before odometry so that a refused re-run costs no odometry time."""
    if any((Path(out_dir) / "frames" / f"{task.key}.pkl").exists() for task in tasks):
        check_settings(Path(out_dir), dataset, {"point_columns": list(columns), **_jsonable(settings)}, overwrite)


def estimate_for_run(args, dataset: str, tasks: Sequence, columns: Sequence[str], settings: dict,
                     read_frame: Callable[[object], Frame], config: "OdometryConfig") -> list:
    """A converter's ``--estimate-poses`` step: the tasks this run converts (``--limit``, as run_from_args applies
    it), a refused re-run found before any odometry time is spent (``check_earlier_run``), then
    ``poses_for_tasks``."""
    if args.limit is not None:
        tasks = list(tasks)[: max(args.limit, 0)]
    check_earlier_run(args.out, dataset, tasks, columns, settings, args.overwrite)
    return poses_for_tasks(tasks, read_frame, config, args.out, dataset, args.on_error, args.overwrite)


def poses_for_tasks(tasks: Sequence, read_frame: Callable[[object], Frame], config: OdometryConfig,
                    out_dir: Path, dataset: str, on_error: str = "stop", overwrite: bool = False,
                    progress: bool = True) -> list:
    """``tasks`` with payload["pose"] set to the odometry pose of each frame (per payload["scene"], frame 0 of
    each scene = identity). ``read_frame(task)`` gives the frame's xyz (or (xyz, times)); tasks must be in
    frame order. A frame ``read_frame`` cannot read raises a ConversionError naming it (on_error "stop"), or
    ("skip") is left out of the odometry with pose None: its conversion fails the same way and is listed with
    the other failures.

    ``OUT/<dataset>_odometry.json`` keeps the poses with the settings and a fingerprint per frame (source path,
    size, mtime): when every frame matches, its poses are used as they are. Otherwise odometry runs again, and a
    frame already converted (``frames/<key>.pkl``) whose pose comes out different (its sources changed, e.g. a
    damaged frame before it was repaired) raises ConversionError unless ``overwrite``: a scene must not mix
    two trajectories."""
    _kiss_icp()  # a missing package is reported before any frame is read
    path = Path(out_dir) / f"{dataset}_odometry.json"
    setting = settings_entry(config)
    fingerprints = _fingerprints(tasks)
    stored = _read_poses_file(path)
    if not stored or stored.get("settings") != setting:
        stored = {"poses": {}, "unread": [], "fingerprints": {}}
    known = set(stored["poses"]) | set(stored["unread"])
    if all(key in known and stored["fingerprints"].get(key) == value for key, value in fingerprints.items()):
        poses = {key: np.asarray(pose, np.float64) for key, pose in stored["poses"].items()}
    else:
        poses = _run_odometry(tasks, read_frame, config, on_error, progress)
        changed = [task.key for task in tasks if task.key in stored["poses"]
                   and (Path(out_dir) / "frames" / f"{task.key}.pkl").exists()
                   and not np.array_equal(np.asarray(stored["poses"][task.key]), poses.get(task.key))]
        if changed and not overwrite:
            raise ConversionError(f"{path}: odometry now gives other poses for {len(changed)} converted frame(s) "
                                  f"(first {changed[0]}): their sources changed; pass --overwrite to convert every "
                                  f"frame with the new poses")
        content = {"settings": setting, "fingerprints": fingerprints,
                   "poses": {key: pose.tolist() for key, pose in poses.items()},
                   "unread": [task.key for task in tasks if task.key not in poses]}
        atomic_write(path, lambda f: f.write(json.dumps(content).encode()))
    return [replace(task, payload={**task.payload, "pose": poses[task.key].tolist() if task.key in poses else None})
            for task in tasks]


def _run_odometry(tasks: Sequence, read_frame, config: OdometryConfig, on_error: str, progress: bool) -> dict:
    """{key: (4, 4) pose} of the readable frames, odometry per scene in task order."""
    poses = {}
    scenes: dict = {}
    for task in tasks:
        scenes.setdefault(task.payload["scene"], []).append(task)
    for scene, scene_tasks in scenes.items():
        if progress:
            print(f"odometry (KISS-ICP): {len(scene_tasks)} frames of {scene}")
        readable = []

        def frames():
            for task in scene_tasks:
                try:
                    frame = read_frame(task)
                except Exception as err:  # noqa: BLE001 - as run_conversion: any reader error names the frame
                    if on_error == "stop":
                        raise ConversionError(_error_message(task, err)) from None
                    continue
                readable.append(task)
                yield frame
        estimated = estimate_poses(frames(), config)
        poses.update({task.key: pose for task, pose in zip(readable, estimated)})
    return poses


def _read_poses_file(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        if not all(isinstance(content.get(name), kind) for name, kind in
                   (("poses", dict), ("unread", list), ("fingerprints", dict))):
            return None
        return content
    except (ValueError, OSError, AttributeError):  # an edited / foreign file: odometry runs again and replaces it
        return None


def _fingerprints(tasks: Sequence) -> dict:
    """{key: sha256 of the task's source (path, size, mtime) and record index}."""
    stats: dict = {}
    out = {}
    for task in tasks:
        if task.source not in stats:
            try:
                stat = os.stat(task.source)
                stats[task.source] = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                stats[task.source] = None
        text = repr((task.source, task.index, stats[task.source]))
        out[task.key] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def relative_errors(estimated: np.ndarray, reference: np.ndarray) -> List[Tuple[float, float]]:
    """[(translation error m, rotation error deg)] of each consecutive frame pair: the relative motion
    inv(P_k) @ P_k+1 of ``estimated`` against that of ``reference`` (both (T, 4, 4))."""
    errors = []
    for k in range(len(estimated) - 1):
        est = np.linalg.inv(estimated[k]) @ estimated[k + 1]
        ref = np.linalg.inv(reference[k]) @ reference[k + 1]
        delta = np.linalg.inv(ref) @ est
        angle = np.degrees(np.arccos(np.clip((np.trace(delta[:3, :3]) - 1) / 2, -1.0, 1.0)))
        errors.append((float(np.linalg.norm(delta[:3, 3])), float(angle)))
    return errors
