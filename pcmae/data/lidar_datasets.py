"""LiDAR sweep datasets: real sweeps from files or mmdet3d info files, and simulated sweeps.

Every dataset here yields a sweep item::

    {"points": FloatTensor (N, C)   x, y, z (metres, sensor frame) then features,
     "pose": DoubleTensor (4, 4)    sensor -> global (identity when unknown),
     "timestamp": float             seconds (0.0 when unknown),
     "sample_idx": int, "lidar_path": str,
     "scene": str                   scene / log / drive name ("" when unknown),
     "frame_index": int             position in the scene (frames of one scene are consecutive),
     "lidar2global": DoubleTensor (4, 4)   sensor -> global, the same matrix as "pose", ...}

and ``collate_sweeps`` packs a list of items into a ``PointBatch`` without padding. Both datasets expose it as
``dataset.collate_fn``.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from pcmae.data.lidar_sim import beam_pattern, boxes_in_sensor_frame, make_scene, sensor_pose, simulate_sweep
from pcmae.data.lidar_transforms import PER_POINT_KEYS, build_transforms, check_range, crop_item
from pcmae.io import BIN_LAYOUTS, PointCloudFormatError, load_points
from pcmae.registry import DATASETS
from pcmae.structures import PointBatch

SWEEP_EXTENSIONS = (".bin", ".npy", ".pcd")
NAMED_FORMATS = (".pcd",)  # formats that name their fields: read x, y, z + the layout's features by name
# metainfo "dataset" names of mmdet3d info files -> column layout of their .bin sweeps
DATASET_LAYOUTS = {"kitti": "kitti", "nuscenes": "nuscenes", "lyft": "nuscenes", "waymo": "waymo"}


class EmptySweepError(ValueError):
    """A sweep has no points left inside point_cloud_range (and allow_empty is False)."""


class InfoFileError(ValueError):
    """An info file (or one of its entries) lacks what a LiDAR sweep needs."""


# ----------------------------------------------------------------------------------------------- items
def collate_sweeps(items: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Pack sweep items: ``points`` PointBatch (no padding), ``poses (B, 4, 4)`` float64, ``timestamps (B,)``
    float64, ``sample_idx (B,)`` int64, ``lidar_paths`` list; per-point keys (``object_id``) are concatenated in
    point order; every other key becomes a list of the items' values."""
    if not items:
        raise ValueError("collate_sweeps: no items")
    widths = {int(item["points"].shape[1]) for item in items}
    if len(widths) > 1:
        raise ValueError(f"collate_sweeps: items have different point columns {sorted(widths)}; "
                         f"load them with one layout")
    batch = {
        "points": PointBatch.from_list([torch.as_tensor(item["points"], dtype=torch.float32) for item in items]),
        "poses": torch.stack([torch.as_tensor(item["pose"], dtype=torch.float64) for item in items]),
        "timestamps": torch.tensor([float(item["timestamp"]) for item in items], dtype=torch.float64),
        "sample_idx": torch.tensor([int(item["sample_idx"]) for item in items], dtype=torch.long),
        "lidar_paths": [str(item["lidar_path"]) for item in items],
    }
    done = {"points", "pose", "timestamp", "sample_idx", "lidar_path"}
    for key in items[0]:
        if key in done:
            continue
        values = [item.get(key) for item in items]
        if key in PER_POINT_KEYS and all(v is not None for v in values):
            batch[key] = torch.cat([torch.as_tensor(v) for v in values])
        else:
            batch[key] = values
    return batch


def augment_rng(augment_seed: Optional[int], index: int) -> np.random.Generator:
    """The random generator of item ``index``'s augmentations. augment_seed None: a fresh draw from torch's global
    RNG (the engine seeds it; DataLoader workers get their own seed), so augmentations differ per epoch yet
    reproduce. An int fixes them per index."""
    if augment_seed is None:
        return np.random.default_rng(int(torch.randint(0, 2 ** 62, ())))
    return np.random.default_rng([int(augment_seed), int(index)])


class _SweepDataset(Dataset):
    """Shared tail of both datasets: range crop, transforms with their random generator, collate."""

    collate_fn = staticmethod(collate_sweeps)

    def __init__(self, point_cloud_range, transforms, allow_empty: bool, augment_seed: Optional[int]):
        self.point_cloud_range = None if point_cloud_range is None else [float(v) for v in point_cloud_range]
        if self.point_cloud_range is not None:
            check_range(self.point_cloud_range)
        self.transforms = build_transforms(transforms)
        self.allow_empty, self.augment_seed = bool(allow_empty), augment_seed

    def _finish(self, item: dict, index: int) -> dict:
        """Crop to the range, apply the transforms, and enforce the empty-sweep rule."""
        before = len(item["points"])
        if self.point_cloud_range is not None:
            item = crop_item(item, self.point_cloud_range)
        if self.transforms is not None:
            item = self.transforms(item, self._rng(index))
        if len(item["points"]) == 0 and not self.allow_empty:
            raise EmptySweepError(
                f"{type(self).__name__}[{index}] ({item['lidar_path']}): no points left of {before} "
                f"after point_cloud_range={self.point_cloud_range} and transforms; "
                f"pass allow_empty=True to keep empty sweeps")
        # copies: the cached / stored arrays must not be reachable from the item
        item["points"] = torch.as_tensor(item["points"], dtype=torch.float32).clone()
        item["pose"] = torch.as_tensor(item["pose"], dtype=torch.float64).clone()
        item["lidar2global"] = item["pose"]
        return item

    def _rng(self, index: int) -> np.random.Generator:
        return augment_rng(self.augment_seed, index)


# ----------------------------------------------------------------------------------------------- real sweeps
@DATASETS.register
class LidarSweeps(_SweepDataset):
    """Real LiDAR sweeps from a folder, a file list or an mmdet3d v2 info file (``.pkl``).

    Sources (give ``sweeps`` or ``info_file``, else ``root`` is globbed):
      * ``sweeps``: list of files (relative ones are joined to ``root``);
      * ``root`` alone: every ``.bin .npy .pcd`` directly in that folder, sorted by name;
      * ``info_file``: mmdet3d v2 ``{"metainfo", "data_list"}``. Entry ``lidar_points.lidar_path`` is read from
        ``root / data_prefix["pts"] / lidar_path`` (``root`` defaults to the info file's folder, ``data_prefix``
        to ``{"pts": "points", "sweeps": "sweeps"}`` for pcmae converters' output, else ``{"pts": ""}``).
        Sweeps in ``lidar_sweeps`` follow mmdet3d's rule: with ``data_prefix["sweeps"]``
        their file name is joined to it (to ``"pts"`` when their path contains "samples"), else they resolve
        like key frames. pose = ``ego2global @ lidar_points.lidar2ego`` (a missing one is identity).
    layout: "kitti" (x, y, z, intensity), "nuscenes" (+ ring), "waymo" (+ elongation, timestamp) or "xyz": the
      columns of ``.bin`` files (their size cannot tell). None: taken from the info file's metainfo dataset name,
      else from its ``point_columns`` (pcmae's data_converters write them);
      ``.npy`` files fix their own columns; a ``.bin`` without a layout raises ValueError. ``.pcd`` files give
      x, y, z plus the layout's feature fields by name. ``num_pts_feats`` in info files is not used (mmdet3d's
      own fixtures understate it).
    use_columns: keep these column indices (or the first k for an int), x, y, z included, e.g. 4 for nuScenes
      without the ring.
    num_sweeps > 1 (info files only): the key frame plus up to ``num_sweeps - 1`` nearest previous sweeps from
      ``lidar_sweeps``, moved into the key frame with their sensor2lidar transform and stacked; a time-lag
      column (key timestamp - sweep timestamp, seconds; 0 for the key frame) is appended. Entries with fewer
      sweeps give fewer. The transform is ``inv(lidar_points.lidar2sensor)`` (mmdet3d >= 1.1 infos), else
      ``sensor2lidar_rotation / _translation`` (v0.x style), else it is chained from both frames' ``ego2global``
      and ``lidar2ego``.
    point_cloud_range: crop [x_min, y_min, z_min, x_max, y_max, z_max] in the key sensor frame. A sweep left
      empty raises EmptySweepError unless ``allow_empty=True`` (then it yields (0, C) points; PointBatch packs
      it as a sample with no points).
    transforms: list of ``{type: ...}`` configs (see ``pcmae.data.lidar_transforms``) or a Compose;
      ``augment_seed`` (None or int) fixes their random draws, see ``augment_rng``.
    Missing key files raise FileNotFoundError at construction, naming the info entry; missing sweep files raise
    when the item is read.
    """

    def __init__(self, root: Optional[str] = None, sweeps: Optional[Sequence[str]] = None,
                 info_file: Optional[str] = None, layout: Optional[str] = None,
                 point_cloud_range: Optional[Sequence[float]] = None, num_sweeps: int = 1, transforms=None,
                 data_prefix: Optional[Mapping[str, str]] = None, use_columns: Union[int, Sequence[int], None] = None,
                 allow_empty: bool = False, augment_seed: Optional[int] = None):
        super().__init__(point_cloud_range, transforms, allow_empty, augment_seed)
        if layout is not None and layout not in BIN_LAYOUTS:
            raise ValueError(f"LidarSweeps: unknown layout {layout!r}; known: {', '.join(BIN_LAYOUTS)}")
        if int(num_sweeps) < 1:
            raise ValueError(f"LidarSweeps: num_sweeps must be >= 1, got {num_sweeps}")
        self.layout, self.num_sweeps, self.use_columns = layout, int(num_sweeps), use_columns
        self.num_columns: Optional[int] = None  # from an info file's metainfo["point_columns"] (no layout)
        self.data_prefix = {"pts": "", **dict(data_prefix or {})}
        self.data_prefix_given = data_prefix is not None
        if info_file is not None:
            if sweeps is not None:
                raise ValueError("LidarSweeps: give either sweeps= or info_file=, not both")
            self.root = Path(root) if root is not None else Path(info_file).parent
            self.entries = self._read_info(Path(info_file))
        else:
            if self.num_sweeps > 1:
                raise ValueError("LidarSweeps: num_sweeps > 1 needs an info_file whose entries list lidar_sweeps "
                                 "with their transforms")
            self.root = Path(root) if root is not None else None
            self.entries = [_plain_entry(i, p) for i, p in enumerate(self._list_files(sweeps))]
        self.source = str(info_file or root or "sweeps list")

    # -- building the entry list
    def _list_files(self, sweeps) -> List[Path]:
        if sweeps is not None:
            if isinstance(sweeps, (str, os.PathLike)):
                raise ValueError("LidarSweeps: sweeps must be a list of files, got a single path")
            files = [Path(s) if self.root is None or Path(s).is_absolute() else self.root / s for s in sweeps]
            for i, f in enumerate(files):
                if not f.is_file():
                    raise FileNotFoundError(f"LidarSweeps: sweeps[{i}] not found: {f}")
        elif self.root is not None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"LidarSweeps: root folder not found: {self.root}")
            files = sorted(p for p in self.root.iterdir() if p.is_file() and _suffix(p) in SWEEP_EXTENSIONS)
        else:
            raise ValueError("LidarSweeps: give root= (a folder of sweeps), sweeps= (files) or info_file=")
        if not files:
            raise FileNotFoundError(f"LidarSweeps: no {' / '.join(SWEEP_EXTENSIONS)} files in {self.root}")
        return files

    def _read_info(self, info_file: Path) -> List[dict]:
        if not info_file.is_file():
            raise FileNotFoundError(f"LidarSweeps: info file not found: {info_file}")
        with open(info_file, "rb") as f:
            try:
                info = pickle.load(f)  # only unpickle trusted files
            except Exception as err:  # pickle raises many kinds on bad bytes
                raise InfoFileError(f"{info_file}: not a readable pickle ({type(err).__name__}: {err})") from None
        if isinstance(info, dict) and "infos" in info and "data_list" not in info:
            raise InfoFileError(f"{info_file}: an mmdet3d v0.x info file ('infos' key); convert it to the v2 "
                                f"layout ('data_list') with mmdet3d's tools/dataset_converters/update_infos_to_v2.py")
        if not isinstance(info, dict) or not isinstance(info.get("data_list"), list):
            raise InfoFileError(f"{info_file}: expected an mmdet3d v2 info dict with a 'data_list' list, "
                                f"got {type(info).__name__}")
        if not info["data_list"]:
            raise InfoFileError(f"{info_file}: 'data_list' is empty")
        if all(isinstance(raw, Mapping) and raw.get("label_only") for raw in info["data_list"]):
            raise InfoFileError(f"{info_file}: all {len(info['data_list'])} entries are label-only (no points)")
        meta = info.get("metainfo") or {}
        if meta.get("converter") == "pcmae" and not self.data_prefix_given:  # pcmae's converters' folders
            self.data_prefix = {"pts": "points", "sweeps": "sweeps"}
        if self.layout is None:
            name = str(meta.get("dataset", meta.get("DATASET", ""))).lower()
            self.layout = DATASET_LAYOUTS.get(name)
            if self.layout is None and meta.get("point_columns"):  # pcmae's converters name their columns
                self.num_columns = len(meta["point_columns"])
        entries = []
        for i, raw in enumerate(info["data_list"]):
            if isinstance(raw, Mapping) and raw.get("label_only"):
                continue  # labels of a frame whose points were lost (flagged by the converters): nothing to pre-train on
            entry = _info_entry(i, raw, info_file)
            entry["path"] = self._resolve(entry["path"], "pts")
            if not entry["path"].is_file():
                raise FileNotFoundError(f"{info_file}: data_list[{i}] lidar file not found: {entry['path']} "
                                        f"(root={self.root}, data_prefix={self.data_prefix})")
            for sweep in entry["sweeps"]:
                sweep["path"] = self._resolve_sweep(sweep["path"])
            entries.append(entry)
        return entries

    def _resolve(self, path: str, prefix_key: str) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / self.data_prefix.get(prefix_key, "") / path

    def _resolve_sweep(self, path: str) -> Path:
        if self.data_prefix.get("sweeps") is None or Path(path).is_absolute():
            return self._resolve(path, "pts")
        key = "pts" if "samples" in Path(path).parts else "sweeps"
        return self.root / self.data_prefix[key] / Path(path).name

    # -- reading
    def __len__(self) -> int:
        return len(self.entries)

    def frame_meta(self, index: int) -> dict:
        """What sequence pairing needs without reading points: scene, frame_index, timestamp (s), pose (4, 4)
        sensor -> global, or None when the source gives none (plain files, info entries without poses)."""
        entry = self.entries[index]
        return {"scene": entry["scene"], "frame_index": entry["frame_index"], "timestamp": entry["timestamp"],
                "pose": entry["pose"] if entry["has_pose"] else None, "lidar_path": str(entry["path"])}

    def _load(self, path: Path, where: str) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"LidarSweeps: {where}: lidar file not found: {path}")
        suffix = _suffix(path)
        if suffix in NAMED_FORMATS:
            fields = list(BIN_LAYOUTS[self.layout][3:]) if self.layout else None
            points = load_points(path, fields=fields)
        else:
            if suffix == ".bin" and self.layout is None and self.num_columns is not None:
                return self._select(load_points(path, columns=self.num_columns), path, where)
            if suffix == ".bin" and self.layout is None:
                raise ValueError(f"LidarSweeps: {where}: {path} is a raw .bin sweep; pass layout= "
                                 f"(one of {', '.join(BIN_LAYOUTS)}) to say how many columns it has")
            points = load_points(path, layout=self.layout)
        return self._select(points, path, where)

    def _select(self, points: np.ndarray, path: Path, where: str) -> np.ndarray:
        """The ``use_columns`` of a loaded sweep."""
        if self.use_columns is not None:
            columns = (list(range(self.use_columns)) if isinstance(self.use_columns, int)
                       else list(self.use_columns))
            if len(columns) < 3 or columns[:3] != [0, 1, 2] or max(columns) >= points.shape[1]:
                raise PointCloudFormatError(f"LidarSweeps: {where}: use_columns={self.use_columns} must start with "
                                            f"0, 1, 2 and stay below the {points.shape[1]} columns of {path}")
            points = points[:, columns]
        return points

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"LidarSweeps: index {index} out of range [0, {len(self.entries)})")
        entry = self.entries[index]
        where = f"{self.source} entry {index}"
        points = self._load(entry["path"], where)
        if self.num_sweeps > 1:
            parts = [np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1)]
            for j, sweep in enumerate(entry["sweeps"][: self.num_sweeps - 1]):
                parts.append(self._sweep_in_key_frame(entry, sweep, f"{where} lidar_sweeps[{j}]"))
            points = np.concatenate(parts)
        item = {"points": points, "pose": entry["pose"], "timestamp": entry["timestamp"],
                "sample_idx": entry["sample_idx"], "lidar_path": str(entry["path"]), "scene": entry["scene"],
                "frame_index": entry["frame_index"]}
        return self._finish(item, index)

    def _sweep_in_key_frame(self, entry: dict, sweep: dict, where: str) -> np.ndarray:
        points = self._load(sweep["path"], where)
        sensor2lidar = sweep["sensor2lidar"]
        if sensor2lidar is None:
            raise InfoFileError(f"LidarSweeps: {where}: no lidar2sensor, sensor2lidar_rotation/_translation or "
                                f"ego2global + lidar2ego (key frame and sweep) to place the sweep")
        xyz = points[:, :3].astype(np.float64) @ sensor2lidar[:3, :3].T + sensor2lidar[:3, 3]
        lag = np.full((len(points), 1), entry["timestamp"] - sweep["timestamp"], np.float32)
        return np.concatenate([xyz.astype(np.float32), points[:, 3:], lag], axis=1)


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _plain_entry(index: int, path: Path) -> dict:
    """A file without an info entry: one scene (its folder), frames in name order, pose unknown (identity)."""
    return {"path": path, "pose": np.eye(4), "timestamp": 0.0, "sample_idx": index, "sweeps": [],
            "scene": str(path.parent), "frame_index": index, "has_pose": False}


def _matrix(value, where: str) -> Optional[np.ndarray]:
    if value is None:
        return None
    matrix = np.asarray(value, np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise InfoFileError(f"{where}: expected a finite 4 x 4 matrix, got shape {matrix.shape}")
    return matrix


def _info_entry(index: int, raw: Mapping[str, Any], info_file: Path) -> dict:
    """One data_list entry -> {path, pose, timestamp, sample_idx, scene, frame_index,
    sweeps: [{path, sensor2lidar, timestamp}]}. pose: ``lidar2global`` when the entry has it (pcmae's converters
    write it), else ``ego2global @ lidar_points.lidar2ego`` (a missing factor is identity)."""
    where = f"{info_file}: data_list[{index}]"
    lidar = raw.get("lidar_points") if isinstance(raw, Mapping) else None
    if not isinstance(lidar, Mapping) or not lidar.get("lidar_path"):
        raise InfoFileError(f"{where} has no lidar_points.lidar_path")
    ego2global = _matrix(raw.get("ego2global"), f"{where}.ego2global")
    lidar2ego = _matrix(lidar.get("lidar2ego"), f"{where}.lidar_points.lidar2ego")
    pose = (np.eye(4) if ego2global is None else ego2global) @ (np.eye(4) if lidar2ego is None else lidar2ego)
    lidar2global = _matrix(raw.get("lidar2global"), f"{where}.lidar2global")
    pose = pose if lidar2global is None else lidar2global
    timestamp = float(raw.get("timestamp", 0.0))
    key_to_global = ego2global @ lidar2ego if ego2global is not None and lidar2ego is not None else None
    sweeps = []
    for j, sweep in enumerate(raw.get("lidar_sweeps") or []):
        sweep_where = f"{where}.lidar_sweeps[{j}]"
        points_info = sweep.get("lidar_points") or {}
        path = points_info.get("lidar_path", sweep.get("data_path"))
        if not path:
            raise InfoFileError(f"{sweep_where} has no lidar_points.lidar_path")
        if "timestamp" not in sweep:
            raise InfoFileError(f"{sweep_where} has no timestamp (needed for the time-lag column)")
        sweeps.append({"path": path, "timestamp": float(sweep["timestamp"]),
                       "sensor2lidar": _sensor2lidar(sweep, points_info, key_to_global, sweep_where)})
    return {"path": str(lidar["lidar_path"]), "pose": pose, "timestamp": timestamp,
            "sample_idx": int(raw.get("sample_idx", index)), "sweeps": sweeps,
            "scene": str(raw.get("scene", raw.get("scene_token", ""))),
            "frame_index": int(raw.get("frame_index", index)),
            "has_pose": lidar2global is not None or ego2global is not None}


def _sensor2lidar(sweep, points_info, key_to_global, where) -> Optional[np.ndarray]:
    """(4, 4) sweep sensor -> key lidar frame, or None when the entry cannot tell."""
    lidar2sensor = _matrix(points_info.get("lidar2sensor"), f"{where}.lidar_points.lidar2sensor")
    if lidar2sensor is not None:
        return np.linalg.inv(lidar2sensor)
    if "sensor2lidar_rotation" in sweep and "sensor2lidar_translation" in sweep:
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(sweep["sensor2lidar_rotation"], np.float64).reshape(3, 3)
        matrix[:3, 3] = np.asarray(sweep["sensor2lidar_translation"], np.float64).reshape(3)
        return matrix
    ego2global = _matrix(sweep.get("ego2global"), f"{where}.ego2global")
    lidar2ego = _matrix(points_info.get("lidar2ego"), f"{where}.lidar_points.lidar2ego")
    if key_to_global is None or ego2global is None or lidar2ego is None:
        return None
    return np.linalg.inv(key_to_global) @ ego2global @ lidar2ego


# ----------------------------------------------------------------------------------------------- simulated
@DATASETS.register
class SimulatedLidarSweeps(_SweepDataset):
    """Sweeps of the procedural street simulator (``pcmae.data.lidar_sim``), no download.

    Item ``i`` is frame ``i % frames_per_scene`` of scene ``i // frames_per_scene``: a sensor driving along the
    street at ``speed`` m/s, one frame every ``1 / frame_rate`` s. Items are a pure function of
    ``(seed, i)`` (same in every process and worker); the last ``cache_size`` generated frames are kept in
    memory. Points: (N, 5) x, y, z (sensor frame), intensity 0..1, ring. ``pose`` is sensor -> scene world,
    ``timestamp`` the time within the scene. Extra keys: ``scene_idx``, ``frame_idx``, ``object_id (N,)`` int64
    (index of the object hit, -1 = ground), ``gt_boxes (K, 7)`` float32 x, y, z, dx, dy, dz, yaw in the sensor
    frame, ``gt_names`` and ``gt_object_id (K,)`` (objects whose centre is within the beams' max range).
    Beam overrides (None = the pattern's default): azimuth_resolution (deg), max_range, range_noise, dropout.
    ``moving=True``: scenes with traffic (``make_scene(moving=True)``: driving cars, walking pedestrians); each
    frame sees them, and ``gt_boxes`` holds them, where they are at the frame's time.
    """

    def __init__(self, num_frames: int = 64, beams: str = "hdl64", seed: int = 0, frames_per_scene: int = 16,
                 point_cloud_range: Optional[Sequence[float]] = None, speed: float = 10.0, frame_rate: float = 10.0,
                 azimuth_resolution: Optional[float] = None, max_range: Optional[float] = None,
                 range_noise: Optional[float] = None, dropout: Optional[float] = None, transforms=None,
                 cache_size: int = 64, allow_empty: bool = False, augment_seed: Optional[int] = None,
                 moving: bool = False):
        super().__init__(point_cloud_range, transforms, allow_empty, augment_seed)
        if num_frames < 1 or frames_per_scene < 1 or frame_rate <= 0 or speed < 0 or cache_size < 0:
            raise ValueError(f"SimulatedLidarSweeps: need num_frames >= 1, frames_per_scene >= 1, frame_rate > 0, "
                             f"speed >= 0, cache_size >= 0; got {num_frames}, {frames_per_scene}, {frame_rate}, "
                             f"{speed}, {cache_size}")
        overrides = {"azimuth_resolution_deg": azimuth_resolution, "max_range": max_range,
                     "range_noise": range_noise, "dropout": dropout}
        self.beams = beam_pattern(beams, **{k: v for k, v in overrides.items() if v is not None})
        self.num_frames, self.frames_per_scene, self.scene_seed = int(num_frames), int(frames_per_scene), int(seed)
        self.speed, self.frame_rate, self.cache_size = float(speed), float(frame_rate), int(cache_size)
        self.moving = bool(moving)
        self._frames: "OrderedDict[int, dict]" = OrderedDict()
        self._scenes: "OrderedDict[int, Any]" = OrderedDict()

    def __len__(self) -> int:
        return self.num_frames

    def scene(self, scene_idx: int):
        """The procedural Scene of ``scene_idx`` (a few kept in memory)."""
        if scene_idx not in self._scenes:
            path_length = self.frames_per_scene * self.speed / self.frame_rate
            seed = int(np.random.SeedSequence([self.scene_seed, scene_idx]).generate_state(1)[0])
            self._scenes[scene_idx] = make_scene(seed, length=max(120.0, path_length + 60.0), moving=self.moving,
                                                 duration=self.frames_per_scene / self.frame_rate)
            while len(self._scenes) > 4:
                self._scenes.popitem(last=False)
        return self._scenes[scene_idx]

    def frame(self, index: int) -> dict:
        """The raw simulated item of ``index`` before range crop and transforms (cached, do not modify)."""
        if index in self._frames:
            self._frames.move_to_end(index)
            return self._frames[index]
        scene_idx, frame_idx = divmod(index, self.frames_per_scene)
        scene = self.scene(scene_idx)
        time = frame_idx / self.frame_rate
        pose = sensor_pose(scene, time, self.speed, sensor_height=self.beams.sensor_height)
        sweep = simulate_sweep(scene, pose, self.beams, np.random.default_rng([self.scene_seed, scene_idx, frame_idx]),
                               time)
        boxes = boxes_in_sensor_frame(scene.boxes(time), pose)
        near = np.hypot(boxes[:, 0], boxes[:, 1]) <= self.beams.max_range
        item = {"points": sweep.points, "pose": pose, "timestamp": time, "sample_idx": index,
                "lidar_path": f"sim://{self.beams.name}/seed{self.scene_seed}/scene{scene_idx}/frame{frame_idx}",
                "scene_idx": scene_idx, "frame_idx": frame_idx, "scene": f"sim/seed{self.scene_seed}/scene{scene_idx}",
                "frame_index": frame_idx, "object_id": sweep.object_id,
                "gt_boxes": boxes[near].astype(np.float32),
                "gt_names": [k for k, n in zip(scene.kinds, near.tolist()) if n],
                "gt_object_id": np.flatnonzero(near)}
        if self.cache_size:
            self._frames[index] = item
            while len(self._frames) > self.cache_size:
                self._frames.popitem(last=False)
        return item

    def frame_meta(self, index: int) -> dict:
        """scene, frame_index, timestamp (s) and the exact pose (4, 4) sensor -> world of item ``index``."""
        scene_idx, frame_idx = divmod(index, self.frames_per_scene)
        time = frame_idx / self.frame_rate
        return {"scene": f"sim/seed{self.scene_seed}/scene{scene_idx}", "frame_index": frame_idx, "timestamp": time,
                "pose": sensor_pose(self.scene(scene_idx), time, self.speed, sensor_height=self.beams.sensor_height),
                "lidar_path": f"sim://{self.beams.name}/seed{self.scene_seed}/scene{scene_idx}/frame{frame_idx}"}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"SimulatedLidarSweeps: index {index} out of range [0, {self.num_frames})")
        item = self._finish(dict(self.frame(index)), index)
        item["object_id"] = torch.as_tensor(item["object_id"], dtype=torch.long).clone()
        item["gt_boxes"] = torch.as_tensor(item["gt_boxes"], dtype=torch.float32).clone()
        item["gt_object_id"] = torch.as_tensor(item["gt_object_id"], dtype=torch.long).clone()
        return item
