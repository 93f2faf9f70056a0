"""Shared conversion framework: raw dataset records -> pcmae / mmdet3d-v2 info files plus float32 sweeps.

A converter lists its frames as picklable ``FrameTask``s and gives a module-level ``convert_one(task) ->
FrameResult``; ``run_conversion`` does the rest::

    OUT/points/<key>.bin          key-frame sweep, float32 (N, C) little-endian, C = len(columns)
    OUT/sweeps/<sweep_key>.bin    non-key sweeps
    OUT/frames/<key>.pkl          the frame's info entry, written last: its presence marks the frame done
    OUT/<dataset>_infos_<split>.pkl   {"metainfo": {...}, "data_list": [...]} of this run's tasks

Every file is written to ``.<name>.tmp-<pid>`` and renamed (``atomic_write``), so a killed run leaves only
complete files; the next run removes stale temp files and converts only the frames without ``frames/<key>.pkl``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from pcmae.io.atomic import atomic_write

INFO_VERSION = "1.1"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)$")
OUTPUT_FOLDERS = ("points", "sweeps", "frames")


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


@dataclass
class ConversionSummary:
    converted: int
    already_done: int
    failed: List[dict]   # [{"source", "index", "error"}]
    seconds: float
    info_file: Optional[Path]  # None when the run stopped at a failure

    def line(self, workers: int = 1) -> str:
        rate = self.converted / max(self.seconds, 1e-9) / max(workers, 1)
        return (f"converted {self.converted}, already done {self.already_done}, failed {len(self.failed)} "
                f"in {self.seconds:.1f} s ({rate:.2f} frames/s per worker, {workers} worker(s))")


# ------------------------------------------------------------------------------------------------ command line
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --root --out --workers --split --on-error --limit (a converter sets its own --split default)."""
    parser.add_argument("--root", required=True, type=Path, help="raw dataset folder (or file)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--split", default=None, help="split name used in the info file name")
    parser.add_argument("--on-error", choices=("skip", "stop"), default="stop",
                        help="stop at the first bad record (default) or skip it and list it in metainfo['failed']")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N frames")


def run_from_args(args: argparse.Namespace, *, dataset: str, split: str, tasks: Sequence[FrameTask],
                  convert_one: Callable[[FrameTask], FrameResult], columns: Sequence[str],
                  metainfo: Optional[dict] = None) -> int:
    """CLI tail shared by converters: apply --limit, run, print the error on failure; returns the exit code."""
    if args.limit is not None:
        tasks = list(tasks)[: max(args.limit, 0)]
    try:
        summary = run_conversion(dataset=dataset, split=split, tasks=tasks, convert_one=convert_one,
                                 out_dir=args.out, columns=columns, metainfo=metainfo, workers=args.workers,
                                 on_error=args.on_error)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"info file: {summary.info_file}")
    return 0


# ------------------------------------------------------------------------------------------------ the run
def run_conversion(*, dataset: str, split: str, tasks: Sequence[FrameTask],
                   convert_one: Callable[[FrameTask], FrameResult], out_dir, columns: Sequence[str],
                   metainfo: Optional[dict] = None, workers: int = 1, on_error: str = "stop",
                   progress: Optional[bool] = None) -> ConversionSummary:
    """Convert every task not done yet, then write ``OUT/<dataset>_infos_<split>.pkl``.

    on_error="stop": the first failure raises ConversionError (finished frames stay, no info file is written);
    "skip": failures are listed in the summary and in metainfo["failed"]. progress: tqdm bar (None: on a terminal).
    """
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_keys(tasks)
    out_dir = Path(out_dir)
    for folder in OUTPUT_FOLDERS:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)

    start = time.perf_counter()
    pending = [t for t in tasks if not _frame_file(out_dir, t.key).exists()]
    already_done = len(tasks) - len(pending)
    work = partial(_convert_and_write, convert_one, str(out_dir), len(columns))
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

    meta = {**(metainfo or {}), "dataset": dataset, "info_version": INFO_VERSION, "point_columns": list(columns),
            "categories": dict((metainfo or {}).get("categories", {})), "converter": "pcmae", "failed": failed}
    info_file = write_info_file(out_dir, dataset, split, tasks, meta)
    summary = ConversionSummary(converted, already_done, failed, seconds, info_file)
    print(summary.line(workers if pool is not None else 1))
    for error in failed:
        print(f"  failed: {error['error']}")
    return summary


def write_info_file(out_dir: Path, dataset: str, split: str, tasks: Sequence[FrameTask], metainfo: dict) -> Path:
    """Assemble frames/<key>.pkl of the done tasks, sorted by (scene, frame_index, key), into the info file."""
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
    info_file = out_dir / f"{dataset}_infos_{split}.pkl"
    content = {"metainfo": metainfo, "data_list": entries}
    atomic_write(info_file, lambda f: pickle.dump(content, f, protocol=pickle.HIGHEST_PROTOCOL))
    return info_file


def remove_stale_temp_files(out_dir: Path) -> List[Path]:
    """Delete ``.<name>.tmp-<pid>`` files left by runs whose process is gone; returns what was removed."""
    removed = []
    for folder in (out_dir, *(out_dir / name for name in OUTPUT_FOLDERS)):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = TEMP_PATTERN.match(path.name)
            if match and not _process_alive(int(match.group(1))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------------ one task
def _convert_and_write(convert_one, out_dir: str, num_columns: int, task: FrameTask) -> Optional[dict]:
    """Worker body: convert one task and write its files (frame file last); returns None or a failure record."""
    try:
        result = convert_one(task)
        if isinstance(result, ConversionError):
            raise result
        if not isinstance(result, FrameResult):
            raise TypeError(f"convert_one returned {type(result).__name__}, expected FrameResult")
        _write_frame(Path(out_dir), task, result, num_columns)
        return None
    except Exception as err:  # noqa: BLE001 - every failure becomes a record naming source and index
        return {"source": str(task.source), "index": int(task.index), "error": _error_message(task, err)}


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


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own temp files are never in use between calls
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _progress(results, total: int, show: bool, name: str):
    if not show:
        return results
    from tqdm import tqdm

    return tqdm(results, total=total, desc=f"converting {name}", unit="frame")
