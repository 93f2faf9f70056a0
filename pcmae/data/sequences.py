"""Pairs of LiDAR frames for temporal pre-training (T-MAE): the current frame and a past frame of the same scene,
the past moved into the current sensor frame with both frames' poses (ego-motion compensation).

An item is the current frame's sweep item (see ``pcmae.data.lidar_datasets``) plus::

    "past_points": FloatTensor (M, C)   the past frame, x, y, z in the CURRENT sensor frame
    "dt": float                         seconds from the past frame to the current one (0 when paired with itself)
    "gap": int                          frames between them (frame_index difference)
    "past_lidar_path": str

``collate_sequences`` packs ``points`` and ``past_points`` as two ``PointBatch`` es and ``dt`` as (B,) float32.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.lidar_datasets import EmptySweepError, augment_rng, collate_sweeps
from pcmae.data.lidar_transforms import build_transforms, check_range, crop_item
from pcmae.registry import DATASETS, ConfigError
from pcmae.structures import PointBatch

NO_PAST_RULES = ("skip", "self")
SET_BY_SEQUENCE = ("point_cloud_range", "transforms", "allow_empty", "augment_seed")


class SequenceError(ValueError):
    """A frame that cannot be paired: no pose, a pose that is not rigid, time that does not advance."""


def collate_sequences(items: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """``collate_sweeps`` of the current frames plus ``past_points`` (PointBatch) and ``dt`` (B,) float32."""
    batch = collate_sweeps([{k: v for k, v in item.items() if k not in ("past_points", "dt")} for item in items])
    batch["past_points"] = PointBatch.from_list([torch.as_tensor(item["past_points"], dtype=torch.float32)
                                                 for item in items])
    batch["dt"] = torch.tensor([float(item["dt"]) for item in items], dtype=torch.float32)
    return batch


def check_rigid(pose: np.ndarray, where: str, tol: float = 1e-3) -> np.ndarray:
    """``pose`` as a finite rigid (4, 4) float64 matrix (rotation with det +1, last row 0 0 0 1), else SequenceError."""
    pose = np.asarray(pose, np.float64)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise SequenceError(f"{where}: pose must be a finite 4 x 4 matrix, got shape {pose.shape}")
    rotation = pose[:3, :3]
    if (np.abs(rotation.T @ rotation - np.eye(3)).max() > tol or abs(np.linalg.det(rotation) - 1) > tol
            or np.abs(pose[3] - [0, 0, 0, 1]).max() > tol):
        raise SequenceError(f"{where}: pose is not rigid (rotation not orthonormal with det 1, or last row not "
                            f"0 0 0 1)")
    return pose


@DATASETS.register
class LidarSequence(Dataset):
    """(frame t, frame t - k) pairs of one scene from any sweep dataset with ``frame_meta`` (LidarSweeps over
    data_converters output, SimulatedLidarSweeps).

    frames: the sweep dataset config ({type: LidarSweeps, info_file: ...}); its range crop and transforms are
      set here, after the alignment (the past frame reaches into the current range from outside its own).
    gap: k, an int >= 1, or [lo, hi]: k drawn per item among the past frames with frame_index in
      [t - hi, t - lo] (fixed for an ``augment_seed``, else redrawn each epoch).
    no_past: "skip" drops frames without a past frame in the window (the first of each scene), "self" pairs them
      with themselves (dt = 0).
    frame_period: seconds per frame; when set, dt = k * frame_period, else dt = timestamp difference (which must
      then increase along each scene).
    frame_range: [first, stop): only current frames with first <= frame_index < stop (a held-out tail of a log;
      their past frames may lie before ``first``).
    point_cloud_range / transforms: applied to both frames together (one random draw), in the current frame.
    Every frame needs a rigid pose (``lidar2global``): a frame without one raises SequenceError naming it.
    """

    collate_fn = staticmethod(collate_sequences)

    def __init__(self, frames: Mapping[str, Any], gap: Union[int, Sequence[int]] = 1, no_past: str = "skip",
                 frame_period: Optional[float] = None, frame_range: Optional[Sequence[int]] = None,
                 point_cloud_range: Optional[Sequence[float]] = None,
                 transforms=None, allow_empty: bool = False, augment_seed: Optional[int] = None):
        if not isinstance(frames, Mapping):
            raise ConfigError(f"'dataset.frames' must be a sweep dataset config {{type: ...}}, got {frames!r}")
        for key in SET_BY_SEQUENCE:
            if key in frames:
                raise ConfigError(f"'dataset.frames.{key}' is set on the sequence (dataset.{key}): it applies after "
                                  f"the past frame is aligned")
        self.lo, self.hi = _gap_window(gap)
        if no_past not in NO_PAST_RULES:
            raise ConfigError(f"'dataset.no_past' must be one of {', '.join(NO_PAST_RULES)}, got {no_past!r}")
        if frame_period is not None and not (isinstance(frame_period, (int, float)) and frame_period > 0):
            raise ConfigError(f"'dataset.frame_period' must be a number > 0 (seconds), got {frame_period!r}")
        self.frames = DATASETS.build(frames, "dataset.frames", allow_empty=True)
        if not hasattr(self.frames, "frame_meta"):
            raise ConfigError(f"'dataset.frames.type' {frames['type']!r} has no frame_meta (scene, frame order, "
                              f"pose): use LidarSweeps or SimulatedLidarSweeps")
        self.point_cloud_range = None if point_cloud_range is None else [float(v) for v in point_cloud_range]
        if self.point_cloud_range is not None:
            check_range(self.point_cloud_range)
        self.transforms = build_transforms(transforms)
        if frame_range is not None and (not isinstance(frame_range, (list, tuple)) or len(frame_range) != 2
                                        or not all(isinstance(v, int) for v in frame_range)):
            raise ConfigError(f"'dataset.frame_range' must be [first, stop) frame indices, got {frame_range!r}")
        self.no_past, self.frame_period, self.frame_range = no_past, frame_period, frame_range
        self.allow_empty, self.augment_seed = bool(allow_empty), augment_seed
        self.meta = [self.frames.frame_meta(i) for i in range(len(self.frames))]
        for i, meta in enumerate(self.meta):
            where = f"LidarSequence frame {i} ({meta['lidar_path']})"
            if meta["pose"] is None:
                raise SequenceError(f"{where}: no pose (lidar2global); convert the log with its poses "
                                    f"(--poses) or estimate them (--estimate-poses)")
            meta["pose"] = check_rigid(meta["pose"], where)
        self.pairs = self._pair_frames()
        if not self.pairs:
            raise SequenceError(f"LidarSequence: no frame of {len(self.meta)} has a past frame {self.lo}..{self.hi} "
                                f"frames back in its scene (no_past='skip')")

    def _pair_frames(self) -> List[tuple]:
        """[(current index, [candidate past indices])]; an empty candidate list means "pair with itself"."""
        by_scene: Dict[str, Dict[int, int]] = defaultdict(dict)
        for i, meta in enumerate(self.meta):
            frame_index = int(meta["frame_index"])
            if frame_index in by_scene[meta["scene"]]:
                other = by_scene[meta["scene"]][frame_index]
                raise SequenceError(f"LidarSequence frame {i} ({meta['lidar_path']}): scene {meta['scene']!r} "
                                    f"frame_index {frame_index} repeats frame {other} ({self.meta[other]['lidar_path']})")
            by_scene[meta["scene"]][frame_index] = i
        pairs = []
        for scene, frames in by_scene.items():
            for frame_index in sorted(frames):
                if self.frame_range is not None and not self.frame_range[0] <= frame_index < self.frame_range[1]:
                    continue
                current = frames[frame_index]
                past = [frames[frame_index - k] for k in range(self.lo, self.hi + 1) if frame_index - k in frames]
                for p in past:
                    self._check_time(current, p)
                if past or self.no_past == "self":
                    pairs.append((current, past))
        return pairs

    def _check_time(self, current: int, past: int) -> None:
        if self.frame_period is None and not self.meta[current]["timestamp"] > self.meta[past]["timestamp"]:
            raise SequenceError(f"LidarSequence frame {current} ({self.meta[current]['lidar_path']}): timestamp "
                                f"{self.meta[current]['timestamp']} is not after its past frame {past}'s "
                                f"({self.meta[past]['timestamp']}); fix the timestamps or set dataset.frame_period")

    def __len__(self) -> int:
        return len(self.pairs)

    def past_index(self, index: int, rng: np.random.Generator) -> int:
        """The frame paired with item ``index``: one of its candidates (drawn with ``rng``), else itself."""
        current, candidates = self.pairs[index]
        return candidates[int(rng.integers(len(candidates)))] if candidates else current

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.pairs):
            raise IndexError(f"LidarSequence: index {index} out of range [0, {len(self.pairs)})")
        rng = augment_rng(self.augment_seed, index)
        current_index = self.pairs[index][0]
        past_index = self.past_index(index, rng)
        item = dict(self.frames[current_index])
        past = self.frames[past_index]
        current_meta, past_meta = self.meta[current_index], self.meta[past_index]
        past_to_current = np.linalg.inv(current_meta["pose"]) @ past_meta["pose"]
        past_points = np.asarray(past["points"], np.float32).copy()
        past_points[:, :3] = (past_points[:, :3].astype(np.float64) @ past_to_current[:3, :3].T
                              + past_to_current[:3, 3])
        gap = int(current_meta["frame_index"]) - int(past_meta["frame_index"])
        dt = gap * self.frame_period if self.frame_period is not None else \
            float(current_meta["timestamp"]) - float(past_meta["timestamp"])
        item = self._crop_and_transform(item, past_points, rng, index)
        item.update(dt=dt, gap=gap, past_lidar_path=past_meta["lidar_path"])
        return item

    def _crop_and_transform(self, item: dict, past_points: np.ndarray, rng, index: int) -> dict:
        """Crop both frames to the range and apply the transforms once to both (points stacked, then split)."""
        current = np.asarray(item["points"], np.float32)
        if past_points.shape[1] != current.shape[1]:
            raise SequenceError(f"LidarSequence item {index}: past frame has {past_points.shape[1]} columns, "
                                f"current {current.shape[1]} ({item['lidar_path']})")
        is_past = np.concatenate([np.zeros(len(current), bool), np.ones(len(past_points), bool)])
        stacked = dict(item, points=np.concatenate([current, past_points]), is_past=is_past)
        if item.get("object_id") is not None:  # simulator labels: the past frame's hits are not labelled here
            stacked["object_id"] = np.concatenate([np.asarray(item["object_id"]), np.full(len(past_points), -2)])
        if self.point_cloud_range is not None:
            stacked = crop_item(stacked, self.point_cloud_range)
        if self.transforms is not None:
            stacked = self.transforms(stacked, rng)
        is_past = np.asarray(stacked.pop("is_past"))
        points = torch.as_tensor(stacked["points"], dtype=torch.float32)
        out = dict(stacked, points=points[~is_past].clone(), past_points=points[is_past].clone())
        if item.get("object_id") is not None:
            out["object_id"] = torch.as_tensor(np.asarray(stacked["object_id"])[~is_past], dtype=torch.long)
        out["pose"] = torch.as_tensor(stacked["pose"], dtype=torch.float64).clone()
        out["lidar2global"] = out["pose"]
        if len(out["points"]) == 0 and not self.allow_empty:
            raise EmptySweepError(f"LidarSequence[{index}] ({item['lidar_path']}): no points left after "
                                  f"point_cloud_range={self.point_cloud_range} and transforms; pass allow_empty=True "
                                  f"to keep empty frames")
        return out


def _gap_window(gap) -> tuple:
    """gap: int k >= 1 or [lo, hi] with 1 <= lo <= hi -> (lo, hi)."""
    values = [gap] if isinstance(gap, int) and not isinstance(gap, bool) else gap
    if (not isinstance(values, (list, tuple)) or len(values) not in (1, 2)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
        raise ConfigError(f"'dataset.gap' must be an int >= 1 or [lo, hi], got {gap!r}")
    lo, hi = values[0], values[-1]
    if not 1 <= lo <= hi:
        raise ConfigError(f"'dataset.gap' needs 1 <= lo <= hi, got {gap!r}")
    return lo, hi
