"""Waymo range images -> points in the vehicle frame, in numpy (no TensorFlow).

A Waymo ``Frame`` stores, per lidar and return, a zlib-compressed ``MatrixFloat`` range image ``(H, W, 4)`` with
channels range (m, <= 0 = no return), intensity, elongation and no-label-zone flag (1 = inside, -1 = outside).
Pixel (row, col) is the ray of

* inclination ``beam_inclinations[::-1][row]`` (row 0 = highest beam); without per-beam values the H
  inclinations are uniform bin centres between ``beam_inclination_min`` and ``_max``;
* azimuth ``pi * (1 - (2 * col + 1) / W) - atan2(E[1, 0], E[0, 0])`` in the lidar frame (E = extrinsic,
  lidar -> vehicle), so that column azimuths line up in the vehicle frame;

giving ``r * (cos(az) cos(incl), sin(az) cos(incl), sin(incl))`` in the lidar frame, then ``E`` to the vehicle.
The TOP lidar's ``range_image_pose_compressed`` ``(H, W, 6)`` = roll, pitch, yaw, x, y, z is the vehicle -> world
pose when each pixel was measured: a point goes to the world with it and back with the inverse frame pose, which
removes the ego motion during the spin. Conventions follow waymo-open-dataset's range_image_utils / frame_utils;
this code is a numpy re-derivation computed in float64.

Output columns ``COLUMNS``: x, y, z (vehicle frame, m), intensity (raw), elongation, nlz (1 inside a no-label
zone, 0 outside; OpenPCDet's processed files use -1 for outside).
"""
from __future__ import annotations

import zlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

COLUMNS = ("x", "y", "z", "intensity", "elongation", "nlz")
LASER_NAMES = {1: "TOP", 2: "FRONT", 3: "SIDE_LEFT", 4: "SIDE_RIGHT", 5: "REAR"}  # dataset.proto LaserName
TOP = 1
PROTO_INSTALL_HINT = ("the Waymo protos are needed: pip install --no-deps waymo-open-dataset-tf-2-12-0==1.6.7 "
                      "protobuf  (--no-deps skips TensorFlow, which is not needed)")


class RangeImageError(ValueError):
    """A range image, pose image or calibration that cannot be decoded."""


def dataset_pb2():
    """The ``waymo_open_dataset.dataset_pb2`` module, or ImportError saying what to install."""
    try:
        from waymo_open_dataset import dataset_pb2 as module
    except ImportError as err:
        raise ImportError(f"{PROTO_INSTALL_HINT} ({err})") from None
    return module


# ------------------------------------------------------------------------------------------------ matrices
def decode_matrix(compressed: bytes, what: str) -> np.ndarray:
    """zlib-compressed serialized ``MatrixFloat`` -> float32 array shaped by its ``shape.dims``."""
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as err:
        raise RangeImageError(f"{what}: not zlib data ({err})") from None
    matrix = dataset_pb2().MatrixFloat()
    try:
        matrix.ParseFromString(raw)
    except Exception as err:  # protobuf's DecodeError
        raise RangeImageError(f"{what}: not a MatrixFloat ({err})") from None
    dims = tuple(matrix.shape.dims)
    data = np.asarray(matrix.data, dtype=np.float32)
    if not dims or int(np.prod(dims)) != data.size:
        raise RangeImageError(f"{what}: shape {list(dims)} does not match its {data.size} values")
    return data.reshape(dims)


def encode_matrix(array: np.ndarray) -> bytes:
    """float array -> zlib-compressed serialized ``MatrixFloat`` (the inverse of ``decode_matrix``)."""
    matrix = dataset_pb2().MatrixFloat()
    array = np.asarray(array, dtype=np.float32)
    matrix.data.extend(array.ravel().tolist())
    matrix.shape.dims.extend(array.shape)
    return zlib.compress(matrix.SerializeToString())


# ------------------------------------------------------------------------------------------------ geometry
def pose_matrix(transform, what: str) -> np.ndarray:
    """(4, 4) float64 matrix of a ``dataset_pb2.Transform`` (16 row-major values)."""
    values = np.asarray(transform.transform, dtype=np.float64)
    if values.size != 16 or not np.isfinite(values).all():
        raise RangeImageError(f"{what} has {values.size} values (finite: {bool(np.isfinite(values).all())}), "
                              f"expected 16 finite ones")
    return values.reshape(4, 4)


def beam_inclinations(inclinations: Sequence[float], inclination_min: float, inclination_max: float,
                      height: int) -> np.ndarray:
    """(H,) inclination (rad) of each range-image row, row 0 = highest beam.

    ``inclinations``: the calibration's per-beam values (ascending), or empty for uniform bin centres between
    min and max.
    """
    values = np.asarray(inclinations, dtype=np.float64)
    if values.size == 0:
        values = inclination_min + (np.arange(height) + 0.5) / height * (inclination_max - inclination_min)
    elif values.size != height:
        raise RangeImageError(f"calibration has {values.size} beam inclinations but the range image has "
                              f"{height} rows")
    return values[::-1].copy()


def column_azimuths(width: int, extrinsic: np.ndarray) -> np.ndarray:
    """(W,) azimuth (rad, lidar frame) of each range-image column centre."""
    correction = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    return np.pi * (1.0 - (2.0 * np.arange(width) + 1.0) / width) - correction


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(4, 4) rigid transform applied to (N, 3) points (einsum: several times faster than (N, 3) @ (3, 3))."""
    return np.einsum("ij,nj->ni", matrix[:3, :3], points) + matrix[:3, 3]


def rotation_from_rpy(rpy: np.ndarray) -> np.ndarray:
    """(..., 3) roll, pitch, yaw -> (..., 3, 3) rotation ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``."""
    rpy = np.asarray(rpy, dtype=np.float64)
    cr, sr = np.cos(rpy[..., 0]), np.sin(rpy[..., 0])
    cp, sp = np.cos(rpy[..., 1]), np.sin(rpy[..., 1])
    cy, sy = np.cos(rpy[..., 2]), np.sin(rpy[..., 2])
    rotation = np.empty(rpy.shape[:-1] + (3, 3))
    rotation[..., 0, :] = np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1)
    rotation[..., 1, :] = np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1)
    rotation[..., 2, :] = np.stack([-sp, cp * sr, cp * cr], -1)
    return rotation


def range_image_to_points(range_image: np.ndarray, extrinsic: np.ndarray, inclinations: np.ndarray,
                          pixel_pose: Optional[np.ndarray] = None,
                          frame_pose: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Points of the pixels with range > 0.

    range_image (H, W, 4); extrinsic (4, 4) lidar -> vehicle; inclinations (H,) row order (``beam_inclinations``);
    pixel_pose (H, W, 6) roll, pitch, yaw, x, y, z vehicle -> world per pixel, with frame_pose (4, 4) the frame's
    vehicle -> world. Returns points (N, 6) float32 in ``COLUMNS`` order and their flat pixel indices (N,) int64
    (row-major).
    """
    if range_image.ndim != 3 or range_image.shape[2] < 4:
        raise RangeImageError(f"range image has shape {range_image.shape}, expected (H, W, 4)")
    height, width = range_image.shape[:2]
    if len(inclinations) != height:
        raise RangeImageError(f"{len(inclinations)} inclinations for a range image of {height} rows")
    rows, cols = np.nonzero(range_image[..., 0] > 0)
    pixels = range_image[rows, cols]
    distance = pixels[:, 0].astype(np.float64)
    azimuth = column_azimuths(width, extrinsic)
    inclination = np.asarray(inclinations, dtype=np.float64)
    horizontal = distance * np.cos(inclination)[rows]
    lidar = np.column_stack([horizontal * np.cos(azimuth)[cols], horizontal * np.sin(azimuth)[cols],
                             distance * np.sin(inclination)[rows]])
    xyz = transform_points(extrinsic, lidar)
    if pixel_pose is not None:
        if frame_pose is None:
            raise RangeImageError("a pixel pose needs the frame pose")
        if pixel_pose.shape != (height, width, 6):
            raise RangeImageError(f"pixel pose has shape {pixel_pose.shape}, expected ({height}, {width}, 6)")
        pose = pixel_pose[rows, cols].astype(np.float64)
        world = np.einsum("nij,nj->ni", rotation_from_rpy(pose[:, :3]), xyz) + pose[:, 3:]
        xyz = np.einsum("ji,nj->ni", frame_pose[:3, :3], world - frame_pose[:3, 3])  # R^T (p - t)
    nlz = (pixels[:, 3] > 0).astype(np.float32)
    points = np.column_stack([xyz.astype(np.float32), pixels[:, 1], pixels[:, 2], nlz])
    return points, rows.astype(np.int64) * width + cols


def points_to_range_image(points: np.ndarray, features: np.ndarray, extrinsic: np.ndarray,
                          inclinations: np.ndarray, width: int, pixel_pose: Optional[np.ndarray] = None,
                          frame_pose: Optional[np.ndarray] = None, max_iterations: int = 20
                          ) -> Tuple[np.ndarray, np.ndarray]:
    """Forward projection, for tests and synthetic frames: put points into a range image.

    points (N, 3) vehicle frame (of ``frame_pose`` when a pixel pose is given); features (N, 3) intensity,
    elongation, nlz (1/0). Each point goes to the pixel whose ray is nearest (the row of the nearest inclination,
    the column containing its azimuth) and keeps its exact range. With a pixel pose, the pixel is found by
    fixed-point steps (the point seen from the pose of its current pixel); points still changing pixel after
    ``max_iterations`` are dropped. A pixel hit twice keeps the nearer point; points outside the beams'
    inclination span are dropped. Returns the range image (H, W, 4) float32 and each point's flat pixel index
    (N,) int64, -1 for dropped or hidden points. ``range_image_to_points`` returns points on pixel-centre rays, so
    a round trip is exact only for points on those rays.
    """
    points = np.asarray(points, dtype=np.float64)
    height = len(inclinations)
    pixel, distance, inside = _nearest_pixels(points, extrinsic, inclinations, width)
    if pixel_pose is not None:
        world = transform_points(frame_pose, points)
        flat_pose = pixel_pose.reshape(-1, 6).astype(np.float64)
        active = np.arange(len(points))
        for _ in range(max_iterations):
            pose = flat_pose[pixel[active]]
            vehicle = np.einsum("nji,nj->ni", rotation_from_rpy(pose[:, :3]), world[active] - pose[:, 3:])
            new_pixel, distance[active], inside[active] = _nearest_pixels(vehicle, extrinsic, inclinations, width)
            changed = new_pixel != pixel[active]
            pixel[active] = new_pixel
            active = active[changed]
            if active.size == 0:
                break
        inside[active] = False
    pixel[~inside] = -1
    valid = np.nonzero(pixel >= 0)[0]
    order = valid[np.lexsort((distance[valid], pixel[valid]))]  # by pixel, nearest first
    winners = order[np.unique(pixel[order], return_index=True)[1]]
    features = np.asarray(features, dtype=np.float32)
    image = np.zeros((height * width, 4), np.float32)
    image[:, 3] = -1.0
    image[pixel[winners]] = np.column_stack([distance[winners], features[winners, :2],
                                             np.where(features[winners, 2] > 0, 1.0, -1.0)])
    kept = np.full(len(points), -1, np.int64)
    kept[winners] = pixel[winners]
    return image.reshape(height, width, 4), kept


def _nearest_pixels(vehicle: np.ndarray, extrinsic: np.ndarray, inclinations: np.ndarray,
                    width: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest flat pixel index (N,), range (N,) and inside-the-beams'-span mask (N,) of vehicle-frame points."""
    lidar = transform_points(np.linalg.inv(extrinsic), vehicle)
    distance = np.linalg.norm(lidar, axis=1)
    azimuth = np.arctan2(lidar[:, 1], lidar[:, 0]) + np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    incl = np.arcsin(np.clip(lidar[:, 2] / np.maximum(distance, 1e-12), -1, 1))
    col = np.floor(width * (1.0 - azimuth / np.pi) / 2.0).astype(np.int64) % width
    by_angle = np.argsort(inclinations)
    ascending = inclinations[by_angle]
    row = by_angle[np.searchsorted((ascending[1:] + ascending[:-1]) / 2, incl)]
    lower, upper = -np.pi / 2, np.pi / 2
    if len(ascending) > 1:  # half a beam gap beyond the outer beams
        lower = ascending[0] - (ascending[1] - ascending[0]) / 2
        upper = ascending[-1] + (ascending[-1] - ascending[-2]) / 2
    return row * width + col, distance, (incl >= lower) & (incl <= upper) & (distance > 0)


# ------------------------------------------------------------------------------------------------ frames
def frame_points(frame, returns: Sequence[int] = (1, 2)) -> Tuple[np.ndarray, List[dict]]:
    """All lidars' points of a ``dataset_pb2.Frame`` in the vehicle frame.

    Returns points (N, 6) float32 in ``COLUMNS`` order, concatenated return by return, lidar by lidar (sorted by
    LaserName), and the segments ``[{"laser", "return", "start", "count"}]`` saying which rows came from where.
    Raises RangeImageError for a lidar without calibration or an undecodable image.
    """
    calibrations = {c.name: c for c in frame.context.laser_calibrations}
    frame_pose = pose_matrix(frame.pose, "frame pose")
    lasers = sorted(frame.lasers, key=lambda laser: laser.name)
    parts, segments, start = [], [], 0
    for return_index in returns:
        for laser in lasers:
            name = LASER_NAMES.get(laser.name, str(laser.name))
            image_proto = laser.ri_return1 if return_index == 1 else laser.ri_return2
            if not image_proto.range_image_compressed:
                continue
            where = f"lidar {name} return {return_index}"
            if laser.name not in calibrations:
                raise RangeImageError(f"{where}: no laser calibration for this lidar in the frame context")
            calibration = calibrations[laser.name]
            image = decode_matrix(image_proto.range_image_compressed, f"{where} range image")
            extrinsic = pose_matrix(calibration.extrinsic, f"{where}: extrinsic")
            inclinations = beam_inclinations(calibration.beam_inclinations, calibration.beam_inclination_min,
                                             calibration.beam_inclination_max, image.shape[0])
            pixel_pose = None
            if laser.name == TOP and laser.ri_return1.range_image_pose_compressed:
                pixel_pose = decode_matrix(laser.ri_return1.range_image_pose_compressed, f"{where} pixel pose")
            try:
                points, _ = range_image_to_points(image, extrinsic, inclinations, pixel_pose, frame_pose)
            except RangeImageError as err:
                raise RangeImageError(f"{where}: {err}") from None
            parts.append(points)
            segments.append({"laser": name, "return": return_index, "start": start, "count": len(points)})
            start += len(points)
    points = np.concatenate(parts) if parts else np.zeros((0, len(COLUMNS)), np.float32)
    return points, segments
