"""KITTI -> mmdet3d-v2 info file + float32 sweeps (x, y, z, intensity).

    python -m data_converters.kitti --root RAW --out OUT [--split training|testing|train|val|...] [--layout object|raw]

Object layout (``RAW/training/{velodyne,calib,label_2,image_2}``, ``RAW/testing/...``): frame ids come from
``RAW/ImageSets/<split>.txt`` when it exists, else from the velodyne folder (split "train"/"val"/"trainval" read
the training folder, "test" the testing folder). Entries match mmdet3d's v2 KITTI infos: camera-frame
``bbox_3d`` [x, y, z (bottom centre), l, h, w, rotation_y], labels in mmdet3d's class order (``CLASSES``,
DontCare -1), difficulty, CAM0-CAM3 matrices. There are no poses: ego2global = lidar2ego = identity, one scene
per frame. ``num_lidar_pts`` counts all velodyne points inside the box (mmdet3d counts only those inside the
CAM2 image, so truncated objects can differ; objects fully in view agree).

Every frame is checked before it is written: the velodyne file through ``pcmae.io.load_points`` (size, finite
x, y, z, not empty) plus at least ``--min-points`` points (default 100) within ``MAX_RANGE_M`` of the sensor;
calibration values finite with rotation blocks orthonormal; label lines finite with positive box sizes. A bad
frame stops the run or, with ``--on-error skip``, is listed in the summary and ``metainfo["failed"]``. When the
label_2 folder exists, a frame without its label file is an error (a testing split has no label_2 folder).
Without ``image_2/<id>.png`` the CAM2 image size is KITTI's usual 375 x 1242 (``DEFAULT_IMAGE_SIZE``; mmdet3d's
KittiMetric needs one), flagged ``images.CAM2.size_is_default``; a PNG that is there must have a sound header.

Raw layout (``RAW/<date>/<date>_drive_XXXX_sync/velodyne_points/{data/*.bin,timestamps.txt}``, ``oxts/data/*.txt``,
``RAW/<date>/calib_imu_to_velo.txt``): one scene per drive, frames in file order, no labels. Poses follow the
KITTI raw devkit: OXTS lat/lon/alt -> Mercator metres (scale from the drive's first frame), rotation
Rz(yaw) Ry(pitch) Rx(roll), expressed relative to the first frame's pose (so frame 0 is the identity).
The ego frame is the IMU/GPS unit: lidar2ego = inverse(Tr_imu_to_velo), ego2global = the OXTS pose.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from data_converters.common import (ConversionError, FrameResult, FrameTask, add_common_arguments,
                                    run_from_args)
from pcmae.io import PointCloudFormatError, load_points

COLUMNS = ("x", "y", "z", "intensity")
CLASSES = ("Pedestrian", "Cyclist", "Car", "Van", "Truck", "Person_sitting", "Tram", "Misc")  # mmdet3d's order
CATEGORIES = {**{name: label for label, name in enumerate(CLASSES)}, "DontCare": -1}
CALIB_SIZES = {"P0": 12, "P1": 12, "P2": 12, "P3": 12, "R0_rect": 9, "Tr_velo_to_cam": 12, "Tr_imu_to_velo": 12}
EARTH_RADIUS_M = 6378137.0
# KITTI benchmark difficulty: (min 2D box height px, max occlusion level, max truncation) for easy/moderate/hard
DIFFICULTY_LIMITS = ((40, 0, 0.15), (25, 1, 0.30), (25, 2, 0.50))
MIN_POINTS = 100  # --min-points default: a real HDL-64 sweep has ~120k points, ~20k inside the camera view
MAX_RANGE_M = 1000.0  # x, y, z further from the sensor than this mean a damaged file (the HDL-64 reaches 120 m)
DEFAULT_IMAGE_SIZE = (375, 1242)  # (height, width) of most KITTI object images, used when image_2 is missing
ROTATION_TOLERANCE = 1e-2  # |R R^T - I| of calibration rotation blocks (KITTI's are orthonormal to ~1e-6)
OBJECT_SPLIT_FOLDERS = {"training": "training", "train": "training", "val": "training", "trainval": "training",
                        "testing": "testing", "test": "testing"}


# ------------------------------------------------------------------------------------------------ calibration
def _to_4x4(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def read_object_calib(path: Path) -> Dict[str, np.ndarray]:
    """KITTI object ``calib/<id>.txt`` -> {name: (4, 4) float64} for P0-P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo."""
    if not path.is_file():
        raise ConversionError(f"{path}: calibration file not found")
    values: Dict[str, np.ndarray] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, numbers = line.partition(":")
        if not sep:
            raise ConversionError(f"{path}: line {number} is not 'NAME: numbers'")
        try:
            values[name.strip()] = np.array(numbers.split(), dtype=np.float64)
        except ValueError:
            raise ConversionError(f"{path}: line {number} ({name.strip()!r}) has non-numeric values") from None
    calib = {}
    for name, size in CALIB_SIZES.items():
        if name not in values:
            raise ConversionError(f"{path}: missing {name} (calibration needs {', '.join(CALIB_SIZES)})")
        if values[name].size != size:
            raise ConversionError(f"{path}: {name} has {values[name].size} numbers, expected {size}")
        if not np.isfinite(values[name]).all():
            raise ConversionError(f"{path}: {name} has NaN/inf values")
        calib[name] = _to_4x4(values[name].reshape(3, -1))
        if name.startswith("P"):
            if not np.allclose(calib[name][2, :3], (0.0, 0.0, 1.0)):
                raise ConversionError(f"{path}: {name} third row starts {calib[name][2, :3].tolist()}, expected "
                                      f"[0, 0, 1] (a camera projection)")
        else:
            check_rotation(calib[name][:3, :3], f"{path}: {name}")
    return calib


def check_rotation(matrix: np.ndarray, what: str) -> None:
    """ConversionError unless the (3, 3) matrix is a rotation (orthonormal within ROTATION_TOLERANCE, det > 0)."""
    error = np.abs(matrix @ matrix.T - np.eye(3)).max()
    if not error <= ROTATION_TOLERANCE or np.linalg.det(matrix) <= 0:
        raise ConversionError(f"{what}: rotation block is not a rotation (|R R^T - I| = {error:.3g}, "
                              f"det {np.linalg.det(matrix):.3g}); damaged calibration")


def read_raw_calib(path: Path) -> np.ndarray:
    """KITTI raw ``calib_imu_to_velo.txt`` ("R: 9 numbers", "T: 3 numbers") -> (4, 4) imu -> velodyne."""
    if not path.is_file():
        raise ConversionError(f"{path}: calibration file not found (raw drives need calib_imu_to_velo.txt)")
    values = {}
    for line in path.read_text().splitlines():
        name, sep, numbers = line.partition(":")
        if sep and name.strip() in ("R", "T"):
            try:
                values[name.strip()] = np.array(numbers.split(), dtype=np.float64)
            except ValueError:
                raise ConversionError(f"{path}: {name.strip()} has non-numeric values") from None
    if values.get("R", np.empty(0)).size != 9 or values.get("T", np.empty(0)).size != 3:
        raise ConversionError(f"{path}: expected 'R:' with 9 numbers and 'T:' with 3 numbers")
    if not (np.isfinite(values["R"]).all() and np.isfinite(values["T"]).all()):
        raise ConversionError(f"{path}: R or T has NaN/inf values")
    matrix = np.eye(4)
    matrix[:3, :3] = values["R"].reshape(3, 3)
    check_rotation(matrix[:3, :3], f"{path}: R")
    matrix[:3, 3] = values["T"]
    return matrix


# ------------------------------------------------------------------------------------------------ boxes
def camera_boxes_to_lidar(boxes_cam: np.ndarray, lidar2cam: np.ndarray) -> np.ndarray:
    """(M, 7) camera boxes [x, y, z bottom centre, l, h, w, ry] -> (M, 7) lidar boxes
    [x, y, z bottom centre, dx=l, dy=w, dz=h, yaw], the box frame of mmdet3d's LiDARInstance3DBoxes."""
    boxes_cam = np.asarray(boxes_cam, dtype=np.float64).reshape(-1, 7)
    centres = np.c_[boxes_cam[:, :3], np.ones(len(boxes_cam))] @ np.linalg.inv(lidar2cam).T
    l, h, w, ry = boxes_cam[:, 3], boxes_cam[:, 4], boxes_cam[:, 5], boxes_cam[:, 6]
    return np.c_[centres[:, :3], l, w, h, -ry - np.pi / 2]


def count_points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Points (N, >=3) inside each lidar box (M, 7) [x, y, z bottom, dx, dy, dz, yaw] -> (M,) int counts.

    margin widens the box in x/y only (OpenPCDet's gt_database crops use 0.01 m; mmdet3d uses 0).
    """
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    counts = np.zeros(len(boxes), dtype=np.int64)
    for i, (x, y, z, dx, dy, dz, yaw) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 7)):
        reach = math.hypot(dx, dy) / 2 + margin  # cheap first cut: the box's bounding square in x/y
        near = xyz[(np.abs(xyz[:, 0] - x) <= reach) & (np.abs(xyz[:, 1] - y) <= reach)]
        rel = near - (x, y, z)
        cos, sin = math.cos(yaw), math.sin(yaw)
        along, across = cos * rel[:, 0] + sin * rel[:, 1], -sin * rel[:, 0] + cos * rel[:, 1]
        inside = ((np.abs(along) <= dx / 2 + margin) & (np.abs(across) <= dy / 2 + margin)
                  & (rel[:, 2] >= 0) & (rel[:, 2] <= dz))
        counts[i] = int(inside.sum())
    return counts


def difficulty(bbox_2d: Sequence[float], occluded: int, truncated: float) -> int:
    """KITTI benchmark difficulty: 0 easy, 1 moderate, 2 hard, -1 none (e.g. too small or too truncated)."""
    height = bbox_2d[3] - bbox_2d[1]
    for level, (min_height, max_occlusion, max_truncation) in enumerate(DIFFICULTY_LIMITS):
        if height > min_height and occluded <= max_occlusion and truncated <= max_truncation:
            return level
    return -1


# ------------------------------------------------------------------------------------------------ labels
def read_labels(path: Path) -> List[dict]:
    """``label_2/<id>.txt`` -> one dict per line: name, truncated, occluded, alpha, bbox (4), hwl, loc, ry.

    Checked: 15 (or 16 with a score) fields, finite numbers; objects other than DontCare (which uses -1 / -1000
    placeholders) need truncation in [0, 1], occlusion 0-3, a 2D box with x1 <= x2, y1 <= y2 and h, w, l > 0."""
    labels = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConversionError(f"{path}: not a text file") from None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (15, 16):
            raise ConversionError(f"{path}: line {number} has {len(fields)} fields, expected 15 "
                                  f"(type truncated occluded alpha bbox(4) h w l x y z rotation_y)")
        try:
            numbers = [float(v) for v in fields[1:15]]
        except ValueError:
            raise ConversionError(f"{path}: line {number} has non-numeric values") from None
        if not all(math.isfinite(v) for v in numbers):
            raise ConversionError(f"{path}: line {number} has NaN/inf values")
        if fields[0] != "DontCare":
            problem = _label_problem(numbers)
            if problem:
                raise ConversionError(f"{path}: line {number} ({fields[0]}): {problem}")
        labels.append({"name": fields[0], "truncated": numbers[0], "occluded": int(numbers[1]),
                       "alpha": numbers[2], "bbox": numbers[3:7], "hwl": numbers[7:10], "loc": numbers[10:13],
                       "ry": numbers[13]})
    return labels


def _label_problem(numbers: Sequence[float]) -> str:
    truncated, occluded, _, x1, y1, x2, y2, h, w, l = numbers[:10]
    if not 0.0 <= truncated <= 1.0:
        return f"truncation {truncated} outside [0, 1]"
    if occluded not in (0, 1, 2, 3):
        return f"occlusion {occluded} not one of 0, 1, 2, 3"
    if not (x1 <= x2 and y1 <= y2):
        return f"2D box {[x1, y1, x2, y2]} has x1 > x2 or y1 > y2"
    if not (h > 0 and w > 0 and l > 0):
        return f"box size h, w, l = {h}, {w}, {l} is not positive"
    return ""


def label_instances(labels: List[dict], points: np.ndarray, calib: Dict[str, np.ndarray]) -> List[dict]:
    """Labels -> mmdet3d v2 ``instances`` (DontCare keeps index/num_lidar_pts -1, as mmdet3d does)."""
    lidar2cam = calib["R0_rect"] @ calib["Tr_velo_to_cam"]
    boxes_cam = np.array([[*lab["loc"], lab["hwl"][2], lab["hwl"][0], lab["hwl"][1], lab["ry"]]
                          for lab in labels]).reshape(-1, 7)
    cared = [i for i, lab in enumerate(labels) if lab["name"] != "DontCare"]
    counts = dict(zip(cared, count_points_in_boxes(points, camera_boxes_to_lidar(boxes_cam[cared], lidar2cam))))
    instances = []
    for i, lab in enumerate(labels):
        x, y, z, l, h, w, ry = boxes_cam[i]
        centre = calib["P2"] @ np.array([x, y - h / 2, z, 1.0])  # projected gravity centre
        label = CATEGORIES.get(lab["name"], -1)
        num_points = int(counts[i]) if i in counts else -1
        instances.append({
            "bbox": lab["bbox"], "bbox_label": label, "bbox_3d": boxes_cam[i].tolist(), "bbox_label_3d": label,
            "bbox_3d_isvalid": num_points > 0, "center_2d": (centre[:2] / centre[2]).tolist(),
            "depth": float(centre[2]), "truncated": lab["truncated"], "occluded": lab["occluded"],
            "alpha": lab["alpha"], "score": 0.0, "index": cared.index(i) if i in counts else -1, "group_id": i,
            "difficulty": difficulty(lab["bbox"], lab["occluded"], lab["truncated"]) if i in counts else -1,
            "num_lidar_pts": num_points})
    return instances


# ------------------------------------------------------------------------------------------------ object layout
def png_size(path: Path) -> Optional[tuple]:
    """(height, width) from a PNG header (IHDR chunk, CRC checked); None when the file is missing.

    ConversionError when the file is there but is not a PNG or its header is damaged."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConversionError(f"{path}: cannot read the image ({err})") from None
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ConversionError(f"{path}: not a PNG image (or cut short)")
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        raise ConversionError(f"{path}: damaged PNG header (IHDR CRC mismatch)")
    height, width = int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if not (0 < height < 2 ** 16 and 0 < width < 2 ** 16):
        raise ConversionError(f"{path}: PNG header gives an image of {width} x {height} pixels")
    return height, width


def read_velodyne(path) -> np.ndarray:
    """(N, 4) float32 sweep through ``load_points`` (size, finite x, y, z, not empty) and within MAX_RANGE_M."""
    try:
        points = load_points(path, layout="kitti")
    except (PointCloudFormatError, FileNotFoundError) as err:
        raise ConversionError(str(err)) from None
    far = float(np.abs(points[:, :3]).max())
    if far > MAX_RANGE_M:
        raise ConversionError(f"{path}: a coordinate of {far:.3g} m is beyond {MAX_RANGE_M:g} m of the sensor "
                              f"(damaged file)")
    return points


def object_tasks(root: Path, split: str) -> List[FrameTask]:
    """One task per frame id of the object layout (ImageSets/<split>.txt, else the velodyne folder)."""
    if split not in OBJECT_SPLIT_FOLDERS:
        raise ValueError(f"unknown KITTI split {split!r}; use one of {', '.join(OBJECT_SPLIT_FOLDERS)}")
    folder = root / OBJECT_SPLIT_FOLDERS[split]
    id_file = root / "ImageSets" / f"{split}.txt"
    if id_file.is_file():
        ids = [line.strip() for line in id_file.read_text().splitlines() if line.strip()]
    elif split in ("training", "testing"):
        ids = sorted(p.stem for p in (folder / "velodyne").glob("*.bin"))
    else:
        raise ConversionError(f"{id_file}: split list not found (splits without one: training, testing)")
    if not ids:
        raise ConversionError(f"{folder / 'velodyne'}: no frames found for split {split!r}")
    return [FrameTask(key=f"kitti_{folder.name}_{frame_id}", source=str(folder / "velodyne" / f"{frame_id}.bin"),
                      index=i, payload={"layout": "object", "folder": str(folder), "frame_id": frame_id})
            for i, frame_id in enumerate(ids)]


def convert_object_frame(task: FrameTask) -> FrameResult:
    folder, frame_id = Path(task.payload["folder"]), task.payload["frame_id"]
    points = read_velodyne(task.source)
    calib = read_object_calib(folder / "calib" / f"{frame_id}.txt")
    lidar2cam = calib["R0_rect"] @ calib["Tr_velo_to_cam"]
    images = {f"CAM{c}": {"cam2img": calib[f"P{c}"].tolist(), "lidar2img": (calib[f"P{c}"] @ lidar2cam).tolist()}
              for c in range(4)}
    images["CAM2"]["lidar2cam"] = lidar2cam.tolist()
    image_path = folder / "image_2" / f"{frame_id}.png"
    size = png_size(image_path)
    if size is not None:
        images["CAM2"].update(img_path=image_path.name, height=size[0], width=size[1], size_is_default=False)
    else:
        images["CAM2"].update(height=DEFAULT_IMAGE_SIZE[0], width=DEFAULT_IMAGE_SIZE[1], size_is_default=True)
    images["R0_rect"] = calib["R0_rect"].tolist()
    label_path = folder / "label_2" / f"{frame_id}.txt"
    if label_path.is_file():
        instances = label_instances(read_labels(label_path), points, calib)
    elif label_path.parent.is_dir():
        raise ConversionError(f"{label_path}: label file not found (the label_2 folder has the other frames')")
    else:
        instances = []
    identity = np.eye(4).tolist()
    info = {"sample_idx": int(frame_id) if frame_id.isdigit() else task.index, "token": frame_id,
            "timestamp": 0.0, "ego2global": identity, "images": images,
            "lidar_points": {"lidar2ego": identity, "Tr_velo_to_cam": calib["Tr_velo_to_cam"].tolist(),
                             "Tr_imu_to_velo": calib["Tr_imu_to_velo"].tolist()},
            "instances": instances, "scene": frame_id, "frame_index": 0, "lidar2global": identity}
    return FrameResult(points=points, info=info)


# ------------------------------------------------------------------------------------------------ raw layout
def read_oxts(path: Path) -> np.ndarray:
    """First six OXTS values: lat, lon (degrees), alt (m), roll, pitch, yaw (rad)."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except FileNotFoundError:
        raise ConversionError(f"{path}: OXTS file not found") from None
    except ValueError:
        raise ConversionError(f"{path}: OXTS line has non-numeric values") from None
    if values.size < 6:
        raise ConversionError(f"{path}: OXTS line has {values.size} values, expected 30 (lat lon alt roll ...)")
    return values[:6]


def oxts_pose(oxts: Sequence[float], scale: float) -> np.ndarray:
    """(4, 4) IMU -> world pose: Mercator x (east), y (north), altitude, and Rz(yaw) Ry(pitch) Rx(roll)."""
    lat, lon, alt, roll, pitch, yaw = oxts
    pose = np.eye(4)
    pose[:3, 3] = (scale * EARTH_RADIUS_M * math.radians(lon),
                   scale * EARTH_RADIUS_M * math.log(math.tan(math.radians(90.0 + lat) / 2)), alt)
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    pose[:3, :3] = rz @ ry @ rx
    return pose


def parse_timestamp(text: str) -> float:
    """``2011-09-26 13:02:25.964389445`` -> POSIX seconds (the clock read as UTC)."""
    date_part, _, fraction = text.strip().partition(".")
    whole = dt.datetime.strptime(date_part, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return whole.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def raw_tasks(root: Path) -> List[FrameTask]:
    """One task per velodyne file of every ``<date>/<drive>_sync`` folder under root."""
    drives = sorted(root.glob("*/*_drive_*_sync"))
    if not drives:
        raise ConversionError(f"{root}: no KITTI raw drives (<date>/<date>_drive_XXXX_sync) found")
    tasks: List[FrameTask] = []
    for drive in drives:
        imu_to_velo = read_raw_calib(drive.parent / "calib_imu_to_velo.txt")
        files = sorted((drive / "velodyne_points" / "data").glob("*.bin"))
        if not files:
            raise ConversionError(f"{drive / 'velodyne_points' / 'data'}: no .bin sweeps")
        stamp_file = drive / "velodyne_points" / "timestamps.txt"
        if not stamp_file.is_file():
            raise ConversionError(f"{stamp_file}: timestamps file not found")
        stamps = [line for line in stamp_file.read_text().splitlines() if line.strip()]
        first_oxts = read_oxts(drive / "oxts" / "data" / f"{files[0].stem}.txt")
        scale = math.cos(math.radians(first_oxts[0]))
        origin = oxts_pose(first_oxts, scale)
        for frame_index, path in enumerate(files):
            number = int(path.stem)
            if number >= len(stamps):
                raise ConversionError(f"{stamp_file}: has {len(stamps)} lines, no timestamp for frame {path.stem}")
            tasks.append(FrameTask(
                key=f"kitti_raw_{drive.name}_{path.stem}", source=str(path), index=number,
                payload={"layout": "raw", "drive": drive.name, "frame_index": frame_index, "sample_idx": len(tasks),
                         "oxts": str(drive / "oxts" / "data" / f"{path.stem}.txt"), "scale": scale,
                         "origin": origin.tolist(), "imu_to_velo": imu_to_velo.tolist(), "stamp": stamps[number]}))
    return tasks


def convert_raw_frame(task: FrameTask) -> FrameResult:
    p = task.payload
    points = read_velodyne(task.source)
    imu_to_velo = np.array(p["imu_to_velo"])
    ego2global = np.linalg.inv(np.array(p["origin"])) @ oxts_pose(read_oxts(Path(p["oxts"])), p["scale"])
    lidar2ego = np.linalg.inv(imu_to_velo)
    try:
        timestamp = parse_timestamp(p["stamp"])
    except ValueError:
        raise ConversionError(f"bad timestamp {p['stamp']!r} in velodyne_points/timestamps.txt") from None
    info = {"sample_idx": p["sample_idx"], "token": task.key, "timestamp": timestamp,
            "ego2global": ego2global.tolist(),
            "lidar_points": {"lidar2ego": lidar2ego.tolist(), "Tr_imu_to_velo": imu_to_velo.tolist()},
            "instances": [], "scene": p["drive"], "frame_index": p["frame_index"],
            "lidar2global": (ego2global @ lidar2ego).tolist()}
    return FrameResult(points=points, info=info)


def convert_one(task: FrameTask) -> FrameResult:
    """Module-level worker entry (spawn-safe)."""
    return convert_raw_frame(task) if task.payload["layout"] == "raw" else convert_object_frame(task)


# ------------------------------------------------------------------------------------------------ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_converters.kitti", description=__doc__.split("\n")[0])
    add_common_arguments(parser, min_points=MIN_POINTS)
    parser.add_argument("--layout", choices=("object", "raw"), default="object",
                        help="object: training/testing folders; raw: <date>/<drive>_sync recordings")
    args = parser.parse_args(argv)
    split = args.split or ("training" if args.layout == "object" else "raw")
    try:
        tasks = object_tasks(args.root, split) if args.layout == "object" else raw_tasks(args.root)
    except (ConversionError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    metainfo = {"categories": CATEGORIES, "kitti_layout": args.layout, "default_image_size": DEFAULT_IMAGE_SIZE}
    return run_from_args(args, dataset="kitti", split=split, tasks=tasks, convert_one=convert_one,
                         columns=COLUMNS, metainfo=metainfo, settings={"layout": args.layout})


if __name__ == "__main__":
    sys.exit(main())
