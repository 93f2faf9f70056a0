"""nuScenes -> mmdet3d-v2 info file + float32 sweeps (x, y, z, intensity, ring), through nuscenes-devkit.

    python -m data_converters.nuscenes --root RAW --out OUT --version v1.0-mini|v1.0-trainval|v1.0-test
        [--split train|val|test|mini_train|mini_val|...|all] [--max-sweeps 10] [--workers N]

``RAW`` is the nuScenes folder (``RAW/<version>/*.json``, ``RAW/samples``, ``RAW/sweeps``, ``RAW/maps``). Splits
are ``nuscenes.utils.splits`` scene lists ("all": every scene of the version); default train / mini_train / test.
One task per key frame (``sample``): its LIDAR_TOP sweep plus up to ``max_sweeps`` earlier LIDAR_TOP
sample_data, followed through ``prev`` as mmdet3d does (earlier key frames count as sweeps too). The tables are
read once, in the main process (``plan_tasks``); workers only read and write point files.

Entries follow mmdet3d 1.x (``tools/dataset_converters/nuscenes_converter.py`` then ``update_infos_to_v2.py``):
  * ``ego2global``, ``lidar_points.lidar2ego``: 4x4 from the ego_pose / calibrated_sensor of the LIDAR_TOP data;
  * ``lidar_sweeps[j]``: ``lidar_points.lidar2ego``, ``ego2global``, ``lidar_points.lidar2sensor`` = inv(sweep
    lidar2global) @ key lidar2global, ``timestamp`` (s), ``sample_data_token``;
  * ``instances[k]``: ``bbox_3d`` [x, y, z, l, w, h, yaw], box centre in the key LiDAR frame, yaw of the box's
    length axis about LiDAR z from +x; ``bbox_label`` = ``bbox_label_3d`` in ``CLASSES`` order (-1: not a
    detection class); ``velocity`` [vx, vy] m/s in the LiDAR frame (nan when nuScenes cannot estimate it);
    ``num_lidar_pts``, ``num_radar_pts``, ``bbox_3d_isvalid`` = num_lidar_pts + num_radar_pts > 0;
  * pcmae's fields: ``scene`` (scene name), ``scene_token``, ``frame_index`` (position in the scene),
    ``lidar2global``; ``timestamp`` is the sample's, in seconds.
Matrices stay float64 (mmdet3d rounds them to float32: ~6e-5 m on global translations). Camera fields are not
written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from data_converters.common import (ConversionError, ConversionSummary, FrameResult, FrameTask,
                                    add_common_arguments, run_conversion, run_from_args)
from pcmae.io import PointCloudFormatError, load_points

COLUMNS = ("x", "y", "z", "intensity", "ring")
LIDAR_CHANNEL = "LIDAR_TOP"
CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian",
           "traffic_cone", "barrier")  # mmdet3d's nuScenes detection classes, in its label order
NAME_MAPPING = {  # nuScenes category -> detection class (mmdet3d.datasets.convert_utils.NuScenesNameMapping)
    "movable_object.barrier": "barrier", "vehicle.bicycle": "bicycle", "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus", "vehicle.car": "car", "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle", "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian", "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian", "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer", "vehicle.truck": "truck",
}
DEFAULT_SPLITS = {"v1.0-trainval": "train", "v1.0-mini": "mini_train", "v1.0-test": "test"}
INSTALL_HINT = ("nuscenes-devkit is not installed; it pins numpy<2, so install it without its pins: "
                "pip install --no-deps nuscenes-devkit==1.2.0 && pip install cachetools descartes fire "
                "pyquaternion 'shapely~=2.0.3' parameterized pycocotools opencv-python-headless")


# ------------------------------------------------------------------------------------------------ devkit
def _import(module: str):
    """Import a nuscenes-devkit module (or pyquaternion), with one clear error when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err


def load_nuscenes(root, version: str):
    """``NuScenes(version, root)``; a dangling token in the tables becomes a ConversionError naming the record."""
    table_root = Path(root) / version
    if not table_root.is_dir():
        raise ConversionError(f"{table_root}: no nuScenes tables here (expected <root>/<version>/sample.json ...)")
    nuscenes = _import("nuscenes.nuscenes")
    try:
        return nuscenes.NuScenes(version=version, dataroot=str(root), verbose=False)
    except KeyError as err:  # the devkit resolves some tokens while indexing and raises a bare KeyError
        raise ConversionError(dangling_reference(table_root, str(err.args[0]))) from None
    except AssertionError as err:  # e.g. a map png named in map.json is missing
        raise ConversionError(f"{table_root}: nuscenes-devkit cannot load the tables: {err}") from None


def dangling_reference(table_root: Path, token: str) -> str:
    """Message naming the first table record whose ``*_token`` field holds ``token`` (a record that is missing)."""
    for table_file in sorted(Path(table_root).glob("*.json")):
        with open(table_file) as f:
            records = json.load(f)
        for index, record in enumerate(records if isinstance(records, list) else []):
            for field, value in record.items():
                if field.endswith("_token") and value == token:
                    target = field[: -len("_token")]
                    return (f"{table_file} (record {index}, token {record.get('token')!r}): {field} {token!r} "
                            f"has no record in {target}.json")
    return f"{table_root}: token {token!r} is referenced but has no record"


def get_record(nusc, table: str, token: str, referrer: str) -> dict:
    """``nusc.get(table, token)`` with a ConversionError naming the referring record when it is missing."""
    try:
        return nusc.get(table, token)
    except KeyError:
        raise ConversionError(f"{referrer}: {table} token {token!r} has no record in {table}.json") from None


def pose_matrix(rotation: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """(4, 4) float64 from a nuScenes quaternion [w, x, y, z] and translation [x, y, z]."""
    matrix = np.eye(4)
    matrix[:3, :3] = _import("pyquaternion").Quaternion(rotation).rotation_matrix
    matrix[:3, 3] = translation
    return matrix


# ------------------------------------------------------------------------------------------------ scenes
def split_scenes(nusc, split: str) -> List[dict]:
    """Scene records of ``split`` (a ``nuscenes.utils.splits`` name or "all") present in the tables, by name."""
    if split == "all":
        wanted = {scene["name"] for scene in nusc.scene}
    else:
        table = _import("nuscenes.utils.splits").create_splits_scenes()
        if split not in table:
            raise ValueError(f"unknown nuScenes split {split!r}; known: all, {', '.join(table)}")
        wanted = set(table[split])
    scenes = sorted((s for s in nusc.scene if s["name"] in wanted), key=lambda s: s["name"])
    if not scenes:
        present = ", ".join(sorted(s["name"] for s in nusc.scene)[:5]) or "none"
        raise ConversionError(f"{Path(nusc.dataroot) / nusc.version}: split {split!r} has none of its scenes in "
                              f"these tables (scenes there: {present}{', ...' if len(nusc.scene) > 5 else ''})")
    return scenes


def scene_samples(nusc, scene: dict) -> List[dict]:
    """The scene's samples in time order (first_sample_token, then ``next``)."""
    samples, token = [], scene["first_sample_token"]
    while token:
        sample = get_record(nusc, "sample", token, f"scene {scene['name']!r}")
        samples.append(sample)
        if len(samples) > len(nusc.sample):
            raise ConversionError(f"scene {scene['name']!r}: the samples' next links form a loop")
        token = sample["next"]
    return samples


# ------------------------------------------------------------------------------------------------ one frame
def lidar_pose(nusc, sample_data: dict) -> Tuple[np.ndarray, np.ndarray, dict, dict]:
    """(lidar2ego (4, 4), ego2global (4, 4), calibrated_sensor record, ego_pose record) of a sample_data."""
    where = f"sample_data {sample_data['token']!r} ({sample_data['filename']})"
    sensor = get_record(nusc, "calibrated_sensor", sample_data["calibrated_sensor_token"], where)
    ego = get_record(nusc, "ego_pose", sample_data["ego_pose_token"], where)
    return (pose_matrix(sensor["rotation"], sensor["translation"]), pose_matrix(ego["rotation"], ego["translation"]),
            sensor, ego)


def box_in_lidar(annotation: dict, sensor: dict, ego: dict) -> np.ndarray:
    """(7,) [x, y, z, l, w, h, yaw] of a sample_annotation in the LiDAR frame (devkit Box, as mmdet3d does)."""
    Box = _import("nuscenes.utils.data_classes").Box
    Quaternion = _import("pyquaternion").Quaternion
    box = Box(annotation["translation"], annotation["size"], Quaternion(annotation["rotation"]))
    box.translate(-np.asarray(ego["translation"], dtype=np.float64))
    box.rotate(Quaternion(ego["rotation"]).inverse)
    box.translate(-np.asarray(sensor["translation"], dtype=np.float64))
    box.rotate(Quaternion(sensor["rotation"]).inverse)
    width, length, height = box.wlh
    return np.array([*box.center, length, width, height, box.orientation.yaw_pitch_roll[0]], dtype=np.float64)


def class_label(category_name: str) -> int:
    """Label in ``CLASSES`` of a nuScenes category name, -1 when it is not a detection class."""
    name = NAME_MAPPING.get(category_name)
    return CLASSES.index(name) if name is not None else -1


def frame_instances(nusc, sample: dict, sensor: dict, ego: dict, lidar2global: np.ndarray) -> Dict[str, np.ndarray]:
    """Column arrays of the sample's annotations: bbox_3d (K, 7), bbox_label_3d (K,), velocity (K, 2),
    num_lidar_pts (K,), num_radar_pts (K,), bbox_3d_isvalid (K,)."""
    where = f"sample {sample['token']!r}"
    annotations = [get_record(nusc, "sample_annotation", token, where) for token in sample["anns"]]
    boxes = np.array([box_in_lidar(a, sensor, ego) for a in annotations], dtype=np.float64).reshape(-1, 7)
    velocity = np.zeros((len(annotations), 3))
    for k, annotation in enumerate(annotations):
        try:
            velocity[k, :2] = nusc.box_velocity(annotation["token"])[:2]  # global frame, nan when unknown
        except KeyError as err:
            raise ConversionError(f"sample_annotation {annotation['token']!r}: prev/next annotation "
                                  f"{err.args[0]!r} has no record in sample_annotation.json") from None
    velocity = velocity @ lidar2global[:3, :3]  # rows: R^T v, global -> LiDAR frame
    num_lidar = np.array([a["num_lidar_pts"] for a in annotations], dtype=np.int64)
    num_radar = np.array([a["num_radar_pts"] for a in annotations], dtype=np.int64)
    return {"bbox_3d": boxes,
            "bbox_label_3d": np.array([class_label(a["category_name"]) for a in annotations], dtype=np.int64),
            "velocity": velocity[:, :2], "num_lidar_pts": num_lidar, "num_radar_pts": num_radar,
            "bbox_3d_isvalid": (num_lidar + num_radar) > 0}


def frame_sweeps(nusc, key_data: dict, key_lidar2global: np.ndarray, max_sweeps: int) -> List[dict]:
    """Up to ``max_sweeps`` earlier LIDAR_TOP sample_data (``prev`` chain), newest first: sample_data_token,
    file, timestamp (s), lidar2ego, ego2global, lidar2sensor (all (4, 4))."""
    sweeps, data = [], key_data
    while len(sweeps) < max_sweeps and data["prev"]:
        data = get_record(nusc, "sample_data", data["prev"], f"sample_data {data['token']!r} (prev)")
        lidar2ego, ego2global, _, _ = lidar_pose(nusc, data)
        sweep_lidar2global = ego2global @ lidar2ego
        sweeps.append({"sample_data_token": data["token"], "file": str(Path(nusc.dataroot) / data["filename"]),
                       "timestamp": data["timestamp"] / 1e6, "lidar2ego": lidar2ego, "ego2global": ego2global,
                       "lidar2sensor": lidar2sensor(key_lidar2global, sweep_lidar2global)})
    return sweeps


def lidar2sensor(key_lidar2global: np.ndarray, sweep_lidar2global: np.ndarray) -> np.ndarray:
    """(4, 4) key LiDAR frame -> sweep sensor frame (mmdet3d's lidar2sensor = inverse of its sensor2lidar)."""
    return np.linalg.inv(sweep_lidar2global) @ key_lidar2global


def plan_frame(nusc, sample: dict, scene: dict, frame_index: int, sample_idx: int, max_sweeps: int) -> dict:
    """Everything a worker needs for one key frame, computed from the tables (numpy arrays, compact to pickle)."""
    if LIDAR_CHANNEL not in sample["data"]:
        raise ConversionError(f"sample {sample['token']!r} has no {LIDAR_CHANNEL} key-frame sample_data")
    key_data = get_record(nusc, "sample_data", sample["data"][LIDAR_CHANNEL], f"sample {sample['token']!r}")
    lidar2ego, ego2global, sensor, ego = lidar_pose(nusc, key_data)
    lidar2global = ego2global @ lidar2ego
    info = {"sample_idx": sample_idx, "token": sample["token"], "timestamp": sample["timestamp"] / 1e6,
            "ego2global": ego2global, "lidar_points": {"lidar2ego": lidar2ego}, "lidar2global": lidar2global,
            "scene": scene["name"], "scene_token": scene["token"], "frame_index": frame_index}
    return {"info": info, "lidar_file": str(Path(nusc.dataroot) / key_data["filename"]),
            "sample_data_token": key_data["token"],
            "instances": frame_instances(nusc, sample, sensor, ego, lidar2global),
            "sweeps": frame_sweeps(nusc, key_data, lidar2global, max_sweeps)}


def plan_tasks(nusc, scenes: Iterable[dict], max_sweeps: int = 10, skip_keys: Iterable[str] = (),
               limit: Optional[int] = None) -> List[FrameTask]:
    """One FrameTask per sample of ``scenes`` (key = sample token, index = its record in sample.json).

    Keys in ``skip_keys`` (frames already converted) get no payload; a sample whose records are broken gets
    ``{"error": message}`` so that ``convert_one`` fails it (and ``--on-error skip`` can skip it)."""
    source = str(Path(nusc.dataroot) / nusc.version / "sample.json")
    skip, tasks = set(skip_keys), []
    for scene in scenes:
        for frame_index, sample in enumerate(scene_samples(nusc, scene)):
            if limit is not None and len(tasks) >= limit:
                return tasks
            token, sample_idx = sample["token"], len(tasks)
            payload = None
            if token not in skip:
                try:
                    payload = plan_frame(nusc, sample, scene, frame_index, sample_idx, max_sweeps)
                except ConversionError as err:
                    payload = {"error": str(err)}
                except Exception as err:  # noqa: BLE001 - a devkit failure on one sample fails that frame only
                    payload = {"error": f"sample {token!r}: {type(err).__name__}: {err}"}
            tasks.append(FrameTask(key=token, source=source, index=nusc.getind("sample", token), payload=payload))
    return tasks


# ------------------------------------------------------------------------------------------------ worker side
def read_lidar_points(path, what: str = "") -> np.ndarray:
    """(N, 5) float32 x, y, z, intensity, ring from a nuScenes ``.pcd.bin`` through ``load_points`` (size, finite
    x, y, z, not empty); ConversionError naming the file."""
    path, context = Path(path), f" ({what})" if what else ""
    if not path.is_file():
        raise ConversionError(f"lidar file not found: {path}{context}")
    try:
        return load_points(path, layout="nuscenes")
    except PointCloudFormatError as err:
        raise ConversionError(f"{err}{context}") from None


def _builtin(value):
    """numpy arrays / scalars -> lists / Python numbers, recursively (info files hold plain Python values)."""
    if isinstance(value, dict):
        return {k: _builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_builtin(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def instance_list(columns: Dict[str, np.ndarray]) -> List[dict]:
    """Column arrays (``frame_instances``) -> mmdet3d v2 ``instances`` dicts."""
    rows = []
    for k in range(len(columns["bbox_3d"])):
        label = int(columns["bbox_label_3d"][k])
        rows.append({"bbox_3d": columns["bbox_3d"][k].tolist(), "bbox_label": label, "bbox_label_3d": label,
                     "velocity": columns["velocity"][k].tolist(),
                     "num_lidar_pts": int(columns["num_lidar_pts"][k]),
                     "num_radar_pts": int(columns["num_radar_pts"][k]),
                     "bbox_3d_isvalid": bool(columns["bbox_3d_isvalid"][k])})
    return rows


def convert_one(task: FrameTask) -> FrameResult:
    """Read the key frame's and its sweeps' points; the info entry comes ready from ``plan_frame``."""
    plan = task.payload
    if plan is None or "error" in plan:
        raise ConversionError(plan["error"] if plan else f"sample {task.key!r} was not planned")
    points = read_lidar_points(plan["lidar_file"], f"sample_data {plan['sample_data_token']!r}")
    info = _builtin(plan["info"])
    info["instances"] = instance_list(plan["instances"])
    sweeps = []
    for sweep in plan["sweeps"]:
        token = sweep["sample_data_token"]
        sweep_info = {"lidar_points": {"lidar2ego": sweep["lidar2ego"].tolist(),
                                       "lidar2sensor": sweep["lidar2sensor"].tolist()},
                      "ego2global": sweep["ego2global"].tolist(), "timestamp": sweep["timestamp"],
                      "sample_data_token": token}
        sweeps.append((token, read_lidar_points(sweep["file"], f"sweep sample_data {token!r}"), sweep_info))
    return FrameResult(points=points, info=info, sweeps=sweeps)


# ------------------------------------------------------------------------------------------------ runs
def metainfo(nusc, version: str, max_sweeps: int) -> dict:
    """Categories: the detection classes, plus every other category of the tables as -1 (as mmdet3d does)."""
    categories = {name: label for label, name in enumerate(CLASSES)}
    categories.update({c["name"]: -1 for c in nusc.category if c["name"] not in NAME_MAPPING})
    return {"categories": categories, "version": version, "max_sweeps": int(max_sweeps)}


def prepare(root, out, version: str, split: str, max_sweeps: int = 10,
            limit: Optional[int] = None) -> Tuple[List[FrameTask], dict]:
    """Load the tables and plan the split's frames (those already in ``out/frames`` get no payload)."""
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps must be >= 0, got {max_sweeps}")
    nusc = load_nuscenes(root, version)
    done = {p.stem for p in (Path(out) / "frames").glob("*.pkl")}
    tasks = plan_tasks(nusc, split_scenes(nusc, split), max_sweeps, skip_keys=done, limit=limit)
    return tasks, metainfo(nusc, version, max_sweeps)


def convert_nuscenes(root, out, version: str = "v1.0-trainval", split: Optional[str] = None, max_sweeps: int = 10,
                     workers: int = 1, on_error: str = "stop", limit: Optional[int] = None) -> ConversionSummary:
    """Library entry point: ``OUT/nuscenes_infos_<split>.pkl`` + points/ + sweeps/ (see the module docstring)."""
    split = split or default_split(version)
    tasks, meta = prepare(root, out, version, split, max_sweeps, limit)
    return run_conversion(dataset="nuscenes", split=split, tasks=tasks, convert_one=convert_one, out_dir=out,
                          columns=COLUMNS, metainfo=meta, workers=workers, on_error=on_error)


def default_split(version: str) -> str:
    if version not in DEFAULT_SPLITS:
        raise ValueError(f"no default split for version {version!r}; pass --split (e.g. all)")
    return DEFAULT_SPLITS[version]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_converters.nuscenes", description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--version", default="v1.0-trainval", help="tables folder under --root (default %(default)s)")
    parser.add_argument("--max-sweeps", type=int, default=10, help="earlier LiDAR sweeps per key frame (default 10)")
    args = parser.parse_args(argv)
    try:
        split = args.split or default_split(args.version)
        tasks, meta = prepare(args.root, args.out, args.version, split, args.max_sweeps, args.limit)
    except (ConversionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return run_from_args(args, dataset="nuscenes", split=split, tasks=tasks, convert_one=convert_one,
                         columns=COLUMNS, metainfo=meta)


if __name__ == "__main__":
    sys.exit(main())
