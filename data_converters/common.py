"""Shared conversion framework: raw dataset records -> pcmae / mmdet3d-v2 info files plus float32 sweeps.

A converter lists its frames as picklable ``FrameTask``s and gives a module-level ``convert_one(task) ->
FrameResult``; ``run_conversion`` does the rest::

    OUT/points/<key>.bin          key-frame sweep, float32 (N, C) little-endian, C = len(columns)
    OUT/sweeps/<sweep_key>.bin    non-key sweeps
    OUT/frames/<key>.pkl          the frame's info entry, written last: its presence marks the frame done
    OUT/<dataset>_infos_<split>.pkl   {"metainfo": {...}, "data_list": [...]} of this run's tasks
    OUT/<dataset>_settings.json       the settings of the first run (columns and converter options)

Every file is written to ``.<name>.tmp-<pid>`` and renamed (``atomic_write``), so a killed run leaves only
complete files; the next run removes stale temp files and converts only the frames without ``frames/<key>.pkl``.
A re-run whose settings differ from the first run's is refused (``--overwrite`` converts its frames again).

Every frame is checked before anything of it is written: points (N, C) finite in every column with
N >= ``min_points`` (a label-only frame, ``FrameResult.label_only``, has N = 0 and is flagged in its entry), and
every number of the info entry finite (calibration, poses, boxes). A run that converts no frame writes no info
file and raises ConversionError. Timestamps in info entries are seconds (``metainfo["timestamp_unit"]``).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import pickle
import re
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from pcmae.io import atomic
from pcmae.io.atomic import atomic_write

INFO_VERSION = "1.1"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
OUTPUT_FOLDERS = ("points", "sweeps", "frames")
NAN_ALLOWED_KEYS = frozenset({"velocity"})  # unknown velocities: NaN in nuScenes / mmdet3d infos (mmdet3d zeroes them)


class ConversionError(Exception):
    """A raw record that cannot be converted; the message names the file and the record index."""


@dataclass(frozen=True)
class FrameTask:
    """One unit of work, sent to worker processes (must be picklable)."""

    key: str        # unique, filesystem-safe ([A-Za-z0-9_.-]), stable across runs, e.g. "kitti_training_000007"
    source: str     # raw file the frame comes from (for error messages)
    index: int      # record / frame index inside `source` (for error messages)
    payload: Any = None  # anything picklable convert_one needs


@dataclass
class FrameResult:
    """What ``convert_one`` returns for one frame."""

    points: np.ndarray  # (N, C) float32 key-frame sweep, columns = the converter's `columns`
    info: dict          # one mmdet3d-v2 data_list entry WITHOUT lidar_points.lidar_path
    sweeps: list = field(default_factory=list)  # optional [(sweep_key, points (M, C) float32, sweep_info dict)]
    label_only: bool = False  # a frame with labels but no points (points (0, C)); flagged "label_only" in its entry


@dataclass
class ConversionSummary:
    converted: int
    already_done: int
    failed: List[dict]   # [{"source", "index", "error"}]
    seconds: float
    info_file: Optional[Path]  # None when the run stopped at a failure
    label_only: List[str] = field(default_factory=list)  # keys of the label-only frames (no points) in the info file

    def line(self, workers: int = 1) -> str:
        rate = self.converted / max(self.seconds, 1e-9) / max(workers, 1)
        text = (f"converted {self.converted}, already done {self.already_done}, failed {len(self.failed)} "
                f"in {self.seconds:.1f} s ({rate:.2f} frames/s per worker, {workers} worker(s))")
        if self.label_only:
            text += f"; {len(self.label_only)} label-only frame(s) kept with 0 points (flagged label_only)"
        return text


# ------------------------------------------------------------------------------------------------ command line
def add_common_arguments(parser: argparse.ArgumentParser, min_points: int = 1) -> None:
    """Add --root --out --workers --split --on-error --limit --min-points --overwrite (a converter sets its own
    --split default and the --min-points default)."""
    parser.add_argument("--root", required=True, type=Path, help="raw dataset folder (or file)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--split", default=None, help="split name used in the info file name")
    parser.add_argument("--on-error", choices=("skip", "stop"), default="stop",
                        help="stop at the first bad record (default) or skip it and list it in metainfo['failed']")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N frames")
    parser.add_argument("--min-points", type=int, default=min_points,
                        help=f"a sweep with fewer points is a damaged record (default {min_points})")
    parser.add_argument("--overwrite", action="store_true",
                        help="convert every frame again, also when --out holds a run with other settings")


def run_from_args(args: argparse.Namespace, *, dataset: str, split: str, tasks: Sequence[FrameTask],
                  convert_one: Callable[[FrameTask], FrameResult], columns: Sequence[str],
                  metainfo: Optional[dict] = None, settings: Optional[dict] = None) -> int:
    """CLI tail shared by converters: apply --limit, run, print one error line on failure; returns the exit code.

    settings: the converter's options that shape its output (compared with the first run's, see run_conversion).
    """
    if args.limit is not None:
        tasks = list(tasks)[: max(args.limit, 0)]
    try:
        summary = run_conversion(dataset=dataset, split=split, tasks=tasks, convert_one=convert_one,
                                 out_dir=args.out, columns=columns, metainfo=metainfo, workers=args.workers,
                                 on_error=args.on_error, min_points=getattr(args, "min_points", 1),
                                 settings=settings, overwrite=getattr(args, "overwrite", False))
    except (ConversionError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"info file: {summary.info_file}")
    return 0


# ------------------------------------------------------------------------------------------------ the run
def run_conversion(*, dataset: str, split: str, tasks: Sequence[FrameTask],
                   convert_one: Callable[[FrameTask], FrameResult], out_dir, columns: Sequence[str],
                   metainfo: Optional[dict] = None, workers: int = 1, on_error: str = "stop",
                   progress: Optional[bool] = None, min_points: int = 1, settings: Optional[dict] = None,
                   overwrite: bool = False) -> ConversionSummary:
    """Convert every task not done yet, then write ``OUT/<dataset>_infos_<split>.pkl``.

    on_error="stop": the first failure raises ConversionError (finished frames stay, no info file is written);
    "skip": failures are listed in the summary and in metainfo["failed"]; when no frame is left, ConversionError
    (no info file). progress: tqdm bar (None: on a terminal). min_points: fewer points in a sweep is a failure.
    settings: options that shape the output; when frames of this run's tasks are already converted, settings (and
    columns) that differ from those recorded in ``OUT/<dataset>_settings.json`` raise ConversionError, unless
    ``overwrite`` (then the frames are converted again).
    """
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if min_points < 0:
        raise ValueError(f"min_points must be >= 0, got {min_points}")
    _check_keys(tasks)
    if not tasks:
        raise ConversionError(f"no {dataset} frames to convert")
    out_dir = Path(out_dir)
    for folder in OUTPUT_FOLDERS:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    recorded = {"point_columns": list(columns), **_jsonable(settings or {})}
    if any(_frame_file(out_dir, t.key).exists() for t in tasks):  # frames of an earlier run are there
        check_settings(out_dir, dataset, recorded, overwrite)
    if overwrite:
        remove_frames(out_dir, tasks)
    atomic_write(_settings_file(out_dir, dataset), lambda f: f.write(json.dumps(recorded, indent=1).encode()))

    start = time.perf_counter()
    pending = [t for t in tasks if not _frame_file(out_dir, t.key).exists()]
    already_done = len(tasks) - len(pending)
    work = partial(_convert_and_write, convert_one, str(out_dir), tuple(columns), int(min_points))
    failed: List[dict] = []
    converted = 0
    show = sys.stderr.isatty() if progress is None else progress
    pool = None
    if workers > 1 and len(pending) > 1:
        pool = multiprocessing.get_context().Pool(min(workers, len(pending)))
    try:
        results = pool.imap_unordered(work, pending) if pool else map(work, pending)
        for error in _progress(results, len(pending), show, dataset):
            if error is None:
                converted += 1
                continue
            if on_error == "stop":
                raise ConversionError(error["error"])
            failed.append(error)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
            remove_stale_temp_files(out_dir)
    seconds = time.perf_counter() - start

    for error in failed:
        print(f"  failed: {error['error']}")
    if converted + already_done == 0:
        print(ConversionSummary(converted, already_done, failed, seconds, None).line(workers if pool else 1))
        raise ConversionError(f"no {dataset} frame converted: all {len(failed)} failed (listed above); "
                              f"no info file written")
    meta = {**(metainfo or {}), "dataset": dataset, "info_version": INFO_VERSION, "point_columns": list(columns),
            "categories": dict((metainfo or {}).get("categories", {})), "converter": "pcmae", "failed": failed,
            "timestamp_unit": "s", "min_points": int(min_points), "settings": recorded}
    info_file, label_only = write_info_file(out_dir, dataset, split, tasks, meta)
    summary = ConversionSummary(converted, already_done, failed, seconds, info_file, label_only)
    print(summary.line(workers if pool is not None else 1))
    return summary


def write_info_file(out_dir: Path, dataset: str, split: str, tasks: Sequence[FrameTask], metainfo: dict):
    """Assemble frames/<key>.pkl of the done tasks, sorted by (scene, frame_index, key), into the info file.

    Returns (info file, keys of the label-only frames); metainfo["label_only_frames"] lists those keys too."""
    entries = []
    for task in tasks:
        frame_file = _frame_file(out_dir, task.key)
        if frame_file.exists():
            try:
                with open(frame_file, "rb") as f:
                    entries.append(pickle.load(f))
            except Exception as err:  # noqa: BLE001 - edited or foreign file
                raise ConversionError(f"{frame_file}: unreadable frame file ({type(err).__name__}: {err}); "
                                      f"delete it to convert {task.source} (record {task.index}) again") from err
    entries.sort(key=lambda e: (str(e.get("scene", "")), int(e.get("frame_index", 0)),
                                Path(e["lidar_points"]["lidar_path"]).stem))
    label_only = [Path(e["lidar_points"]["lidar_path"]).stem for e in entries if e.get("label_only")]
    info_file = out_dir / f"{dataset}_infos_{split}.pkl"
    content = {"metainfo": {**metainfo, "label_only_frames": label_only}, "data_list": entries}
    atomic_write(info_file, lambda f: pickle.dump(content, f, protocol=pickle.HIGHEST_PROTOCOL))
    return info_file, label_only


def check_settings(out_dir: Path, dataset: str, settings: dict, overwrite: bool = False) -> None:
    """Raise ConversionError when ``OUT/<dataset>_settings.json`` records other settings (unless overwrite)."""
    path = _settings_file(out_dir, dataset)
    if overwrite or not path.is_file():
        return
    try:
        first = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise ConversionError(f"{path}: unreadable settings of an earlier run ({err}); pass --overwrite to convert "
                              f"again") from None
    differing = [f"{name} {first.get(name)!r} -> {settings.get(name)!r}" for name in sorted({*first, *settings})
                 if first.get(name) != settings.get(name)]
    if differing:
        raise ConversionError(f"{out_dir} holds a {dataset} conversion with other settings ({'; '.join(differing)}); "
                              f"pass --overwrite to convert every frame again, or choose another --out")


def remove_frames(out_dir: Path, tasks: Sequence[FrameTask]) -> None:
    """Delete the frame, points and sweep files of ``tasks`` (so they are converted again)."""
    for task in tasks:
        frame_file = _frame_file(out_dir, task.key)
        try:
            with open(frame_file, "rb") as f:
                sweeps = [s["lidar_points"]["lidar_path"] for s in pickle.load(f).get("lidar_sweeps", [])]
        except Exception:  # noqa: BLE001 - missing or unreadable: nothing more to find
            sweeps = []
        frame_file.unlink(missing_ok=True)
        (out_dir / "points" / f"{task.key}.bin").unlink(missing_ok=True)
        for name in sweeps:
            (out_dir / "sweeps" / Path(name).name).unlink(missing_ok=True)


def remove_stale_temp_files(out_dir: Path) -> List[Path]:
    """Delete ``.<name>.tmp-<pid>`` files left by runs whose process is gone; returns what was removed."""
    return [path for folder in (out_dir, *(out_dir / name for name in OUTPUT_FOLDERS))
            for path in atomic.remove_stale_temp_files(folder)]


# ------------------------------------------------------------------------------------------------ one task
def _convert_and_write(convert_one, out_dir: str, columns: tuple, min_points: int,
                       task: FrameTask) -> Optional[dict]:
    """Worker body: convert one task, check it and write its files (frame file last); returns None or a failure."""
    try:
        result = convert_one(task)
        if isinstance(result, ConversionError):
            raise result
        if not isinstance(result, FrameResult):
            raise TypeError(f"convert_one returned {type(result).__name__}, expected FrameResult")
        check_frame(result, columns, min_points)
        _write_frame(Path(out_dir), task, result, len(columns))
        return None
    except Exception as err:  # noqa: BLE001 - every failure becomes a record naming source and index
        return {"source": str(task.source), "index": int(task.index), "error": _error_message(task, err)}


def check_frame(result: FrameResult, columns: Sequence[str], min_points: int = 1) -> None:
    """ConversionError unless the frame's points and sweeps are (N, C) finite with N >= min_points (N = 0 for a
    label-only frame) and every number in its info entries is finite."""
    if result.label_only:
        _check_points(result.points, columns, 0, "points")
        if len(result.points):
            raise ConversionError(f"a label-only frame has {len(result.points)} points, expected none")
    else:
        _check_points(result.points, columns, max(min_points, 1), "points")
    for sweep_key, points, sweep_info in result.sweeps:
        _check_points(points, columns, max(min_points, 1), f"sweep {sweep_key}")
        _check_finite_numbers(sweep_info, f"sweep {sweep_key} info")
    _check_finite_numbers(result.info, "info")


def _check_points(points, columns: Sequence[str], min_points: int, what: str) -> None:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != len(columns):
        raise ConversionError(f"{what} have shape {points.shape}, expected (N, {len(columns)})")
    if not np.issubdtype(points.dtype, np.number):
        raise ConversionError(f"{what} have dtype {points.dtype}, expected numbers")
    finite = np.isfinite(points.astype(np.float32, copy=False))  # values beyond float32 become inf here
    if not finite.all():
        bad_columns = [name for name, ok in zip(columns, finite.all(axis=0)) if not ok]
        raise ConversionError(f"{what}: {int((~finite.all(axis=1)).sum())} of {len(points)} points have NaN/inf "
                              f"values (columns {', '.join(bad_columns)})")
    if len(points) < min_points:
        raise ConversionError(f"{what}: {len(points)} point(s), fewer than --min-points {min_points} (an empty or "
                              f"cut-short sweep)")


def _check_finite_numbers(value, where: str) -> None:
    """ConversionError naming the first NaN/inf number inside nested dicts / lists / arrays (values under the keys
    ``NAN_ALLOWED_KEYS`` excepted)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in NAN_ALLOWED_KEYS:
                _check_finite_numbers(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_finite_numbers(item, f"{where}[{index}]")
    elif isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.number) and not np.isfinite(value).all():
            raise ConversionError(f"{where} holds NaN/inf values")
    elif isinstance(value, (float, np.floating)) and not math.isfinite(value):
        raise ConversionError(f"{where} is {value} (NaN/inf in the raw data)")


def _write_frame(out_dir: Path, task: FrameTask, result: FrameResult, num_columns: int) -> None:
    info = result.info
    sweep_infos = []
    for sweep_key, points, sweep_info in result.sweeps:
        _check_key(sweep_key)
        sweep_path = out_dir / "sweeps" / f"{sweep_key}.bin"
        if not sweep_path.exists():  # a sweep shared by neighbouring key frames is written once
            _write_points(sweep_path, points, num_columns, f"sweep {sweep_key}")
        sweep_info.setdefault("lidar_points", {})["lidar_path"] = f"{sweep_key}.bin"
        sweep_infos.append(sweep_info)
    if result.sweeps and "lidar_sweeps" not in info:
        info["lidar_sweeps"] = sweep_infos
    lidar_points = info.setdefault("lidar_points", {})
    lidar_points["lidar_path"] = f"{task.key}.bin"
    lidar_points["num_pts_feats"] = num_columns
    lidar_points["num_points"] = int(len(result.points))
    if result.label_only:
        info["label_only"] = True
    if "lidar2global" not in info and "ego2global" in info and "lidar2ego" in lidar_points:
        info["lidar2global"] = (np.asarray(info["ego2global"], dtype=np.float64)
                                @ np.asarray(lidar_points["lidar2ego"], dtype=np.float64)).tolist()
    _write_points(out_dir / "points" / f"{task.key}.bin", result.points, num_columns, "points")
    atomic_write(_frame_file(out_dir, task.key), lambda f: pickle.dump(info, f, protocol=pickle.HIGHEST_PROTOCOL))


def _write_points(path: Path, points: np.ndarray, num_columns: int, what: str) -> None:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != num_columns:
        raise ConversionError(f"{what} have shape {points.shape}, expected (N, {num_columns})")
    data = np.ascontiguousarray(points, dtype="<f4").tobytes()
    atomic_write(path, lambda f: f.write(data))


def _error_message(task: FrameTask, err: BaseException) -> str:
    text = str(err) if isinstance(err, ConversionError) else f"{type(err).__name__}: {err}"
    prefix = f"{task.source} (record {task.index})"
    return text if text.startswith(prefix) else f"{prefix}: {text}"


# ------------------------------------------------------------------------------------------------ helpers
def _frame_file(out_dir: Path, key: str) -> Path:
    return out_dir / "frames" / f"{key}.pkl"


def _settings_file(out_dir: Path, dataset: str) -> Path:
    return out_dir / f"{dataset}_settings.json"


def _jsonable(value):
    """Settings as JSON values (paths as strings, tuples as lists), so they compare equal after a round trip."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ValueError(f"frame key {key!r} is not filesystem-safe (use [A-Za-z0-9_.-], not starting with '.')")


def _check_keys(tasks: Sequence[FrameTask]) -> None:
    seen: Dict[str, FrameTask] = {}
    for task in tasks:
        _check_key(task.key)
        if task.key in seen:
            other = seen[task.key]
            raise ValueError(f"duplicate frame key {task.key!r}: {other.source} (record {other.index}) and "
                             f"{task.source} (record {task.index})")
        seen[task.key] = task



def _progress(results, total: int, show: bool, name: str):
    if not show:
        return results
    from tqdm import tqdm

    return tqdm(results, total=total, desc=f"converting {name}", unit="frame")
