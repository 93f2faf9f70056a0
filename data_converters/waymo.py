"""Waymo Open Dataset (v1 ``Frame`` TFRecords) -> pcmae / mmdet3d-v2 infos and float32 sweeps, without TensorFlow.

    python -m data_converters.waymo --root WAYMO_FORMAT --out OUT [--split training|validation] [--workers N]

``--root`` is a folder of ``*.tfrecord`` files, a folder holding ``<split>/*.tfrecord``, or one file. One frame
per record; points from all five lidars and both returns in the vehicle frame (``waymo_range_image.COLUMNS``:
x, y, z, intensity, elongation, nlz), so ``lidar2ego`` is the identity and ``ego2global`` the frame pose.
Needs the protos only: ``pip install --no-deps waymo-open-dataset-tf-2-12-0==1.6.7``.

Entry fields beyond the mmdet3d-v2 ones: ``scene`` (= ``context_name``), ``frame_index`` (record index),
``timestamp_micros``, ``lidar_points.segments`` (which rows come from which lidar / return),
``lidar_calibrations``, ``camera_calibrations`` (mmdet3d's ``lidar2cam`` / ``cam2img`` plus the raw Waymo
values) and ``context`` (stats). Instances follow mmdet3d's Waymo converter: ``bbox_3d`` = [x, y, z_bottom,
length, width, height, heading] in the vehicle frame, labels Car 0 / Pedestrian 1 / Cyclist 2; other types
(Sign, Unknown) are kept with label -1, and boxes without lidar points get ``bbox_3d_isvalid`` False (mmdet3d
drops both).

A frame with laser labels but no range images (stripped files such as mmdet3d's test record, camera-only
splits) is kept as a label-only entry: 0 points, ``label_only`` True, listed in ``metainfo["label_only_frames"]``
and counted in the summary line; training datasets must skip such entries. Damaged TFRecords: every record
after a damaged header is still read (see ``tfrecord.scan_records``) and each damaged region is one failed
record saying how many bytes were unreadable; an empty file is a failed record. Timestamps: ``timestamp`` is
seconds (``timestamp_micros / 1e6``), as in the other converters' info files; ``timestamp_micros`` keeps the
exact value. ``--min-points`` defaults to 100.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from data_converters.common import (ConversionError, FrameResult, FrameTask, add_common_arguments,
                                    run_from_args)
from data_converters.tfrecord import TFRecordError, read_record, scan_records
from data_converters.waymo_range_image import COLUMNS, LASER_NAMES, dataset_pb2, frame_points, pose_matrix

DATASET = "waymo"
CATEGORIES = {"Car": 0, "Pedestrian": 1, "Cyclist": 2}  # mmdet3d's Waymo class order
WAYMO_TYPES = ("UNKNOWN", "VEHICLE", "PEDESTRIAN", "SIGN", "CYCLIST")  # label.proto Label.Type
TYPE_TO_LABEL = {"VEHICLE": 0, "PEDESTRIAN": 1, "CYCLIST": 2}
CAMERA_KEYS = {1: "CAM_FRONT", 2: "CAM_FRONT_LEFT", 3: "CAM_FRONT_RIGHT", 4: "CAM_SIDE_LEFT", 5: "CAM_SIDE_RIGHT"}
MIN_POINTS = 100  # --min-points default: a real frame has ~180k points (all five lidars, two returns)
SPLIT_PREFIX = {"training": 0, "validation": 1, "testing": 2}  # first digit of sample_idx, as in mmdet3d
# Waymo camera frame (x forward, y left, z up) -> KITTI-style camera frame (x right, y down, z forward)
WAYMO_TO_KITTI_CAMERA = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                                  [0.0, 0.0, 0.0, 1.0]])
METAINFO = {
    "categories": CATEGORIES,
    "waymo_type_labels": {name: TYPE_TO_LABEL.get(name, -1) for name in WAYMO_TYPES},
    "point_frame": "vehicle",
    "nlz": "1 = inside a no-label zone, 0 = outside",
}


# ------------------------------------------------------------------------------------------------ tasks
def find_tfrecords(root, split: str) -> List[Path]:
    """Sorted ``*.tfrecord`` files of ``root`` (a file, a folder, or a folder with a ``split`` subfolder)."""
    root = Path(root)
    if root.is_file():
        return [root]
    folder = root / split if (root / split).is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"Waymo root not found: {root}")
    files = sorted(folder.glob("*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no *.tfrecord files in {folder}")
    return files


def frame_key(path: Path, index: int) -> str:
    """Stable, filesystem-safe key of record ``index`` of ``path``."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', path.stem).lstrip('.')}_{index:04d}"


def build_tasks(files: Sequence[Path], split: str) -> List[FrameTask]:
    """One FrameTask per record (payload: sample_idx and the record's span).

    A damaged file (truncated, bad length CRC, empty) gives tasks for its intact records (also those after the
    damage, see ``scan_records``) plus one task per damaged region that fails with the damage message (how many
    bytes were unreadable), so --on-error decides what happens.
    """
    prefix = SPLIT_PREFIX.get(split, 3)
    tasks = []
    for file_index, path in enumerate(files):
        spans, damages = scan_records(path)
        for span in spans:
            sample_idx = prefix * 10 ** 6 + file_index * 1000 + span.index
            tasks.append(FrameTask(frame_key(path, span.index), str(path), span.index, (sample_idx, span, None)))
        for damage in damages:
            tasks.append(FrameTask(frame_key(path, damage.index), str(path), damage.index,
                                   (None, None, str(damage.error))))
    return sorted(tasks, key=lambda t: (t.source, t.index))


# ------------------------------------------------------------------------------------------------ one frame
def parse_frame(payload: bytes):
    """Serialized ``waymo.open_dataset.Frame`` -> message (ValueError when the bytes are not a Frame)."""
    frame = dataset_pb2().Frame()
    try:
        frame.ParseFromString(payload)
    except Exception as err:  # protobuf's DecodeError
        raise ValueError(f"not a waymo.open_dataset.Frame ({err})") from None
    return frame


def convert_one(task: FrameTask) -> FrameResult:
    """Read, check and decode one record into points (N, 6) float32 and its info entry."""
    sample_idx, span, damage = task.payload
    where = f"{task.source} (record {task.index})"
    if damage is not None:
        raise ConversionError(damage)
    try:
        frame = parse_frame(read_record(task.source, span))
        points, segments = frame_points(frame)
        if not segments and not frame.laser_labels:
            raise ValueError("frame has neither lidar range images nor laser labels")
        info = frame_info(frame, sample_idx, task.index, segments)
    except TFRecordError as err:  # names file and record already
        raise ConversionError(str(err)) from None
    except ValueError as err:  # not a Frame, RangeImageError, bad calibration
        raise ConversionError(f"{where}: {err}") from None
    if not segments:  # labels without range images (stripped or camera-only): keep the labels, flagged
        return FrameResult(points=np.zeros((0, len(COLUMNS)), np.float32), info=info, label_only=True)
    return FrameResult(points=points, info=info)


def frame_info(frame, sample_idx: int, frame_index: int, segments: Optional[list] = None) -> dict:
    """The mmdet3d-v2 data_list entry of a Frame (without ``lidar_points.lidar_path``)."""
    ego2global = pose_matrix(frame.pose, "frame pose")
    context = frame.context
    return {
        "sample_idx": int(sample_idx),
        "token": f"{context.name}_{frame.timestamp_micros}",
        "timestamp": frame.timestamp_micros / 1e6,
        "timestamp_micros": int(frame.timestamp_micros),
        "ego2global": ego2global.tolist(),
        "lidar_points": {"lidar2ego": np.eye(4).tolist(), "segments": list(segments or [])},
        "lidar_sweeps": [],
        "instances": [_instance(label) for label in frame.laser_labels],
        "scene": context.name,
        "context_name": context.name,
        "frame_index": int(frame_index),
        "lidar2global": ego2global.tolist(),
        "lidar_calibrations": {LASER_NAMES.get(c.name, str(c.name)): _lidar_calibration(c)
                               for c in context.laser_calibrations},
        "camera_calibrations": {CAMERA_KEYS.get(c.name, str(c.name)): _camera_calibration(c)
                                for c in context.camera_calibrations},
        "context": _context_stats(context),
    }


def _instance(label) -> dict:
    box, waymo_type = label.box, WAYMO_TYPES[label.type] if label.type < len(WAYMO_TYPES) else str(label.type)
    class_label = TYPE_TO_LABEL.get(waymo_type, -1)
    return {
        "bbox_3d": [box.center_x, box.center_y, box.center_z - box.height / 2, box.length, box.width, box.height,
                    box.heading],
        "bbox_label_3d": class_label,
        "bbox_label": class_label,
        "num_lidar_pts": int(label.num_lidar_points_in_box),
        "bbox_3d_isvalid": label.num_lidar_points_in_box > 0,
        "difficulty": int(label.detection_difficulty_level),
        "tracking_difficulty": int(label.tracking_difficulty_level),
        "track_id": label.id,
        "waymo_type": waymo_type,
        "velocity": [label.metadata.speed_x, label.metadata.speed_y],
        "acceleration": [label.metadata.accel_x, label.metadata.accel_y],
    }


def _lidar_calibration(calibration) -> dict:
    return {"lidar2ego": pose_matrix(calibration.extrinsic, "lidar extrinsic").tolist(),
            "beam_inclinations": list(calibration.beam_inclinations),
            "beam_inclination_min": calibration.beam_inclination_min,
            "beam_inclination_max": calibration.beam_inclination_max}


def _camera_calibration(calibration) -> dict:
    """mmdet3d's lidar2cam / cam2img (KITTI-style camera axes) plus Waymo's own values."""
    cam2ego = pose_matrix(calibration.extrinsic, "camera extrinsic")
    if len(calibration.intrinsic) < 4:
        raise ValueError(f"camera {calibration.name}: intrinsic has {len(calibration.intrinsic)} values, "
                         f"expected 9 (f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3)")
    f_u, f_v, c_u, c_v = list(calibration.intrinsic)[:4]
    cam2img = np.array([[f_u, 0.0, c_u, 0.0], [0.0, f_v, c_v, 0.0], [0.0, 0.0, 1.0, 0.0]])
    lidar2cam = WAYMO_TO_KITTI_CAMERA @ np.linalg.inv(cam2ego)
    return {"cam2ego": cam2ego.tolist(), "lidar2cam": lidar2cam.tolist(), "cam2img": cam2img.tolist(),
            "lidar2img": (cam2img @ lidar2cam).tolist(), "distortion": list(calibration.intrinsic)[4:],
            "width": calibration.width, "height": calibration.height,
            "rolling_shutter_direction": calibration.rolling_shutter_direction}


def _context_stats(context) -> dict:
    stats = context.stats

    def counts(items):
        return {WAYMO_TYPES[c.type] if c.type < len(WAYMO_TYPES) else str(c.type): c.count for c in items}

    return {"name": context.name, "time_of_day": stats.time_of_day, "location": stats.location,
            "weather": stats.weather, "laser_object_counts": counts(stats.laser_object_counts),
            "camera_object_counts": counts(stats.camera_object_counts)}


# ------------------------------------------------------------------------------------------------ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_converters.waymo", description=__doc__.split("\n")[0])
    add_common_arguments(parser, min_points=MIN_POINTS)
    parser.set_defaults(split="training")
    args = parser.parse_args(argv)
    split = args.split
    try:
        files = find_tfrecords(args.root, split)
        dataset_pb2()
        tasks = build_tasks(files, split)
    except (ImportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return run_from_args(args, dataset=DATASET, split=split, tasks=tasks, convert_one=convert_one,
                         columns=COLUMNS, metainfo=METAINFO)


if __name__ == "__main__":
    sys.exit(main())
