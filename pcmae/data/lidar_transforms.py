"""Global augmentations of LiDAR sweep items: rotation about z, flips, scaling, range crop.

A transform is called as ``transform(item, rng) -> item`` where ``item`` is a sweep dict (see
``pcmae.data.lidar_datasets``) and ``rng`` a ``numpy.random.Generator``. It returns a NEW dict and never writes
into the arrays it was given (datasets cache their items). Points may be numpy arrays or torch tensors
``(N, C)``; only x, y, z (the first three columns) move. A linear map ``A`` of the points is carried into
the other keys consistently:

* ``pose`` (sensor -> global, (4, 4)) becomes ``pose @ inv(A)``, so ``pose_new @ (A p) == pose @ p`` (after a
  scaling the pose is no longer rigid);
* ``gt_boxes`` (K, 7) x, y, z, dx, dy, dz, yaw: centres move, yaw turns / mirrors, sizes scale;
* per-point keys (``PER_POINT_KEYS``, e.g. ``object_id``) are cropped together with the points, per-box keys
  (``PER_BOX_KEYS``, e.g. ``gt_names``) together with the boxes.

``Compose.from_config([{"type": "GlobalRotScale", "rot_range": [-0.785, 0.785]}, {"type": "RandomFlip"}])``
builds a pipeline; an unknown type or key raises ``pcmae.registry.ConfigError``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from pcmae.registry import ConfigError, Registry

Array = Union[np.ndarray, torch.Tensor]
LIDAR_TRANSFORMS = Registry("lidar transform")
PER_POINT_KEYS = ("object_id", "is_past")  # cropped along with "points" (is_past: pcmae.data.sequences)
PER_BOX_KEYS = ("gt_names", "gt_labels", "gt_object_id")  # cropped along with "gt_boxes"
AXES = {"x": 0, "y": 1, "z": 2}


# ----------------------------------------------------------------------------------------------- arrays
def transform_xyz(points: Array, matrix: np.ndarray) -> Array:
    """``points (N, C)`` with x, y, z replaced by ``matrix (3, 3) @ xyz``; same type, dtype and device."""
    if isinstance(points, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
        return torch.cat([points[:, :3] @ m.T, points[:, 3:]], dim=1)
    points = np.asarray(points)
    return np.concatenate([points[:, :3] @ matrix.T.astype(points.dtype), points[:, 3:]], axis=1)


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) right-handed rotation by ``angle`` radians about z."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def in_range_mask(points: Array, point_cloud_range: Sequence[float]) -> Array:
    """(N,) bool: x, y, z inside ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (min inclusive, max exclusive)."""
    lo, hi = check_range(point_cloud_range)
    xyz = points[:, :3]
    if isinstance(points, torch.Tensor):
        lo_t, hi_t = (torch.as_tensor(v, dtype=points.dtype, device=points.device) for v in (lo, hi))
        return ((xyz >= lo_t) & (xyz < hi_t)).all(dim=1)
    return ((xyz >= lo) & (xyz < hi)).all(axis=1)


def check_range(point_cloud_range: Sequence[float]):
    """(lo (3,), hi (3,)) of a 6-number range; ValueError when it is malformed."""
    values = np.asarray(point_cloud_range, np.float64).reshape(-1)
    if values.shape != (6,) or not np.all(values[:3] < values[3:]):
        raise ValueError(f"point_cloud_range must be [x_min, y_min, z_min, x_max, y_max, z_max] with min < max, "
                         f"got {list(point_cloud_range)}")
    return values[:3], values[3:]


def apply_linear(item: Mapping[str, Any], matrix: np.ndarray, yaw_map: Callable[[np.ndarray], np.ndarray],
                 size_scale: float = 1.0) -> dict:
    """A new item with ``matrix (3, 3)`` applied to points, pose and boxes; ``yaw_map`` maps box yaws."""
    out = dict(item)
    out["points"] = transform_xyz(item["points"], matrix)
    if item.get("pose") is not None:
        inverse = np.eye(4)
        inverse[:3, :3] = np.linalg.inv(matrix)
        pose = item["pose"]
        out["pose"] = (pose @ torch.as_tensor(inverse, dtype=pose.dtype, device=pose.device)
                       if isinstance(pose, torch.Tensor) else np.asarray(pose) @ inverse)
    if item.get("gt_boxes") is not None:
        boxes = item["gt_boxes"]
        as_numpy = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
        new = np.array(as_numpy, np.float64, copy=True)
        new[:, :3] = new[:, :3] @ matrix.T
        new[:, 3:6] *= size_scale
        new[:, 6] = (yaw_map(new[:, 6]) + np.pi) % (2 * np.pi) - np.pi
        out["gt_boxes"] = (torch.as_tensor(new, dtype=boxes.dtype, device=boxes.device)
                           if isinstance(boxes, torch.Tensor) else new.astype(as_numpy.dtype))
    return out


def crop_item(item: Mapping[str, Any], point_cloud_range: Sequence[float]) -> dict:
    """A new item keeping the points (and per-point keys) inside the range, and boxes whose centre is inside."""
    out = dict(item)
    keep = in_range_mask(item["points"], point_cloud_range)
    out["points"] = item["points"][keep]
    for key in PER_POINT_KEYS:
        if item.get(key) is not None:
            out[key] = item[key][keep]
    if item.get("gt_boxes") is not None and len(item["gt_boxes"]):
        inside = in_range_mask(item["gt_boxes"], point_cloud_range)
        out["gt_boxes"] = item["gt_boxes"][inside]
        for key in PER_BOX_KEYS:
            values = item.get(key)
            if isinstance(values, list):
                out[key] = [v for v, k in zip(values, inside.tolist()) if k]
            elif values is not None:
                out[key] = values[inside]
    return out


# ----------------------------------------------------------------------------------------------- transforms
def _pair(name: str, values, where: str) -> tuple:
    values = tuple(float(v) for v in values)
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"{where}: {name} must be [low, high] with low <= high, got {list(values)}")
    return values


@LIDAR_TRANSFORMS.register
class GlobalRotScale:
    """Rotate about z by an angle uniform in ``rot_range`` (radians), then scale uniformly by a factor uniform
    in ``scale_range``. Set a range to [v, v] for a fixed value."""

    def __init__(self, rot_range: Sequence[float] = (-math.pi / 4, math.pi / 4),
                 scale_range: Sequence[float] = (0.95, 1.05)):
        self.rot_range = _pair("rot_range", rot_range, "GlobalRotScale")
        self.scale_range = _pair("scale_range", scale_range, "GlobalRotScale")
        if self.scale_range[0] <= 0:
            raise ValueError(f"GlobalRotScale: scale_range must be positive, got {list(self.scale_range)}")

    def __call__(self, item: Mapping[str, Any], rng: np.random.Generator) -> dict:
        angle = rng.uniform(*self.rot_range)
        scale = rng.uniform(*self.scale_range)
        return apply_linear(item, scale * rotation_z(angle), lambda yaw: yaw + angle, size_scale=scale)


@LIDAR_TRANSFORMS.register
class RandomFlip:
    """Mirror each axis in ``axes`` independently with probability ``prob``: axis "y" negates y (a left-right
    mirror for a sensor looking along +x), axis "x" negates x (front-back)."""

    def __init__(self, axes: Sequence[str] = ("y",), prob: float = 0.5):
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        if not axes or any(a not in ("x", "y") for a in axes):
            raise ValueError(f"RandomFlip: axes must be a non-empty subset of ['x', 'y'], got {list(axes)}")
        if not 0 <= prob <= 1:
            raise ValueError(f"RandomFlip: prob must be in [0, 1], got {prob}")
        self.axes, self.prob = axes, float(prob)

    def __call__(self, item: Mapping[str, Any], rng: np.random.Generator) -> dict:
        for axis in self.axes:
            if rng.random() < self.prob:
                matrix = np.eye(3)
                matrix[AXES[axis], AXES[axis]] = -1.0
                yaw_map = (lambda yaw: -yaw) if axis == "y" else (lambda yaw: np.pi - yaw)
                item = apply_linear(item, matrix, yaw_map)
        return dict(item)


@LIDAR_TRANSFORMS.register
class RangeCrop:
    """Keep points inside ``point_cloud_range`` [x_min, y_min, z_min, x_max, y_max, z_max] (sensor frame)."""

    def __init__(self, point_cloud_range: Sequence[float]):
        check_range(point_cloud_range)
        self.point_cloud_range = [float(v) for v in point_cloud_range]

    def __call__(self, item: Mapping[str, Any], rng: Optional[np.random.Generator] = None) -> dict:
        return crop_item(item, self.point_cloud_range)


class Compose:
    """Apply transforms in order, all drawing from the one ``rng``.

    transforms: callables ``(item, rng) -> item`` or config dicts ``{"type": name, **kwargs}`` naming a class
    registered in LIDAR_TRANSFORMS (GlobalRotScale, RandomFlip, RangeCrop).
    """

    def __init__(self, transforms: Sequence[Union[Mapping[str, Any], Callable]] = ()):
        if isinstance(transforms, Mapping) or isinstance(transforms, str):
            raise ConfigError(f"transforms must be a list of {{type: ...}} entries, got {transforms!r}")
        self.transforms = [_build(t, i) for i, t in enumerate(transforms)]

    @classmethod
    def from_config(cls, cfg: Sequence[Mapping[str, Any]]) -> "Compose":
        return cls(cfg)

    def __call__(self, item: Mapping[str, Any], rng: np.random.Generator) -> dict:
        for transform in self.transforms:
            item = transform(item, rng)
        return dict(item)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]})"


def _build(transform, i: int):
    where = f"transforms[{i}]"
    if not isinstance(transform, Mapping):
        if not callable(transform):
            raise ConfigError(f"{where}: expected a {{type: ...}} mapping or a callable, got {transform!r}")
        return transform
    try:
        return LIDAR_TRANSFORMS.build(transform, where=where)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # a missing required key or a bad value
        raise ConfigError(f"{where} ({transform.get('type')}): {err}") from None


def build_transforms(transforms) -> Optional[Compose]:
    """None, a Compose, or a list of configs / callables -> Compose (None stays None)."""
    if transforms is None or isinstance(transforms, Compose):
        return transforms
    return Compose(transforms)
