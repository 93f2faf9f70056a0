"""nuScenes converter (data_converters/nuscenes.py) on real data read in place from the shared data folder.

Independent references:
  * nuscenes-devkit's ``LidarPointCloud.from_file`` for the real 34,688-point demo sweep;
  * mmdet3d's Lyft fixture: real tables in nuScenes' schema and the v1 info (``lyft_infos_val.pkl``) that
    mmdet3d's converter computed from them (boxes, sweep transforms);
  * mmdet3d's nuScenes v2 fixtures (``nus_info.pkl``, the demo ``.pkl``): the tests write v1.0-mini tables that
    hold their tokens, poses, calibrations, timestamps and annotations (pointing at the real lidar files via
    symlinks), convert them through nuscenes-devkit, and compare the entries with the fixtures;
  * nuScenes' own ``num_lidar_pts``: points of the converted demo frame counted inside the converted boxes.
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.mmdet3d_helpers import build_mmdet3d_dataset, import_mmdet3d_datasets
from tests.shared_data import shared_data_path

pytest.importorskip("nuscenes", reason="nuscenes-devkit not installed (pip install --no-deps nuscenes-devkit==1.2.0 "
                                       "plus its dependencies, see data_converters/nuscenes.py)")

from data_converters.common import ConversionError  # noqa: E402
from data_converters import nuscenes as nus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VERSION = "v1.0-mini"
FIXTURE_SCENE, DEMO_SCENE = "scene-0061", "scene-0103"  # in nuscenes.utils.splits mini_train / mini_val
HELPER_SCENE = "velocity-helper"  # in no split: holds the next annotations that set each box's velocity
DEMO_FILE = "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
# label -> nuScenes categories (inverse of mmdet3d's NuScenesNameMapping; -1: the other nuScenes categories)
CATEGORIES_OF_LABEL = {
    0: ["vehicle.car"], 1: ["vehicle.truck"], 2: ["vehicle.trailer"], 3: ["vehicle.bus.rigid", "vehicle.bus.bendy"],
    4: ["vehicle.construction"], 5: ["vehicle.bicycle"], 6: ["vehicle.motorcycle"],
    7: ["human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
        "human.pedestrian.police_officer"],
    8: ["movable_object.trafficcone"], 9: ["movable_object.barrier"],
    -1: ["animal", "movable_object.debris", "movable_object.pushable_pullable", "static_object.bicycle_rack",
         "human.pedestrian.personal_mobility", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
         "vehicle.emergency.ambulance", "vehicle.emergency.police"],
}


# ------------------------------------------------------------------------------------------------ fixtures
def load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def nus_fixture_entries() -> List[dict]:
    return load_pickle(shared_data_path("mmdet3d", "tests", "data", "nuscenes", "nus_info.pkl"))["data_list"]


def demo_fixture_entry() -> dict:
    folder = shared_data_path("mmdet3d", "demo", "data", "nuscenes")
    return load_pickle(folder / "n015-2018-07-24-11-22-45+0800.pkl")["data_list"][0]


def new_convention_boxes(entry: dict, old: bool) -> np.ndarray:
    """(K, 7) [x, y, z, l, w, h, yaw]. nus_info.pkl dates from before mmdet3d's box refactor (PR #677): its boxes
    are [x, y, z, w, l, h, -yaw - pi/2]; mmdet3d's tools/update_data_coords.py converts them like this."""
    boxes = np.array([inst["bbox_3d"] for inst in entry["instances"]], dtype=np.float64)
    if old:
        boxes[:, [3, 4]] = boxes[:, [4, 3]]
        boxes[:, 6] = -boxes[:, 6] - np.pi / 2
    return boxes


def wrap_angle(angle):
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


# ------------------------------------------------------------------------------------------------ tables
def token(*parts) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def quaternion(rotation: np.ndarray) -> List[float]:
    """[w, x, y, z] of a (3, 3) rotation (scipy orthonormalises the float32-rounded fixture matrices)."""
    x, y, z, w = Rotation.from_matrix(np.asarray(rotation, np.float64)[:3, :3]).as_quat()
    return [float(w), float(x), float(y), float(z)]


def pose(record: dict) -> np.ndarray:
    """(4, 4) of a table record's rotation [w, x, y, z] + translation."""
    w, x, y, z = record["rotation"]
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
    matrix[:3, 3] = record["translation"]
    return matrix


def pose_record(matrix) -> dict:
    matrix = np.asarray(matrix, np.float64)
    return {"rotation": quaternion(matrix), "translation": [float(v) for v in matrix[:3, 3]]}


@dataclass
class Frame:
    """One key frame to write: fixture values (matrices as the fixture stores them)."""

    token: str
    timestamp: int  # µs
    lidar2ego: np.ndarray
    ego2global: np.ndarray
    file: str  # relative to the dataroot
    boxes: np.ndarray  # (K, 7) [x, y, z, l, w, h, yaw] in the LiDAR frame
    labels: List[int]
    velocity: np.ndarray  # (K, 2) LiDAR frame
    num_lidar_pts: List[int]
    num_radar_pts: List[int]
    sweeps: List[dict] = field(default_factory=list)  # older first: token, timestamp, lidar2ego, lidar2sensor, file


def fixture_frames() -> Dict[str, List[Frame]]:
    """The two nus_info.pkl samples (scene FIXTURE_SCENE, one sweep between them) and the demo sample."""
    scenes: Dict[str, List[Frame]] = {}
    sources = ((FIXTURE_SCENE, nus_fixture_entries(), True), (DEMO_SCENE, [demo_fixture_entry()], False))
    for name, entries, old in sources:
        frames = []
        for entry in entries:
            inst = entry["instances"]
            sweeps = []
            if entry.get("lidar_sweeps"):  # the fixture lists one sweep twice; a sample_data chain has it once
                sweep = entry["lidar_sweeps"][0]
                sweeps.append({"token": sweep["sample_data_token"], "timestamp": round(sweep["timestamp"] * 1e6),
                               "lidar2ego": np.array(sweep["lidar_points"]["lidar2ego"]),
                               "lidar2sensor": np.array(sweep["lidar_points"]["lidar2cam"]),  # its older name
                               "file": "sweeps/LIDAR_TOP/" + Path(sweep["lidar_points"]["lidar_path"]).name})
            frames.append(Frame(
                token=entry["token"], timestamp=round(entry["timestamp"] * 1e6),
                lidar2ego=np.array(entry["lidar_points"]["lidar2ego"]), ego2global=np.array(entry["ego2global"]),
                file="samples/LIDAR_TOP/" + entry["lidar_points"]["lidar_path"],
                boxes=new_convention_boxes(entry, old), labels=[int(i["bbox_label_3d"]) for i in inst],
                velocity=np.array([i["velocity"] for i in inst], np.float64),
                num_lidar_pts=[int(i["num_lidar_pts"]) for i in inst],
                num_radar_pts=[int(i["num_radar_pts"]) for i in inst], sweeps=sweeps))
        scenes[name] = frames
    return scenes


class Tables:
    """Builds a nuScenes table set record by record (only the LIDAR_TOP sensor)."""

    NAMES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
             "scene", "sample", "sample_data", "sample_annotation", "map")

    def __init__(self):
        self.t = {name: [] for name in self.NAMES}
        self.category_tokens = {}
        for names in CATEGORIES_OF_LABEL.values():
            for name in names:
                self.category_tokens[name] = token("category", name)
                self.t["category"].append({"token": self.category_tokens[name], "name": name, "description": ""})
        self.t["visibility"] = [{"token": str(i), "level": f"v{i}", "description": ""} for i in range(1, 5)]
        self.sensor = token("sensor", "LIDAR_TOP")
        self.t["sensor"].append({"token": self.sensor, "channel": "LIDAR_TOP", "modality": "lidar"})
        self.used = {label: 0 for label in CATEGORIES_OF_LABEL}

    def category(self, label: int) -> str:
        names = CATEGORIES_OF_LABEL[label]
        self.used[label] += 1
        return self.category_tokens[names[(self.used[label] - 1) % len(names)]]

    def sample_data(self, sd_token, sample_token, timestamp, lidar2ego, ego2global, file, key) -> dict:
        calib = {"token": token("calib", sd_token), "sensor_token": self.sensor, "camera_intrinsic": [],
                 **pose_record(lidar2ego)}
        ego = {"token": token("ego", sd_token), "timestamp": timestamp, **pose_record(ego2global)}
        record = {"token": sd_token, "sample_token": sample_token, "ego_pose_token": ego["token"],
                  "calibrated_sensor_token": calib["token"], "timestamp": timestamp, "fileformat": "pcd",
                  "is_key_frame": key, "height": 0, "width": 0, "filename": file, "prev": "", "next": ""}
        self.t["calibrated_sensor"].append(calib)
        self.t["ego_pose"].append(ego)
        self.t["sample_data"].append(record)
        return record

    def scene(self, name: str, log: str, samples: List[dict]) -> None:
        for prev, nxt in zip(samples, samples[1:]):
            prev["next"], nxt["prev"] = nxt["token"], prev["token"]
        scene_token = token("scene", name)
        for s in samples:
            s["scene_token"] = scene_token
        self.t["sample"].extend(samples)
        self.t["scene"].append({"token": scene_token, "name": name, "description": "", "log_token": log,
                                "nbr_samples": len(samples), "first_sample_token": samples[0]["token"],
                                "last_sample_token": samples[-1]["token"]})

    def write(self, table_root: Path) -> None:
        table_root.mkdir(parents=True, exist_ok=True)
        for name, records in self.t.items():
            (table_root / f"{name}.json").write_text(json.dumps(records))


def write_tables(root: Path, scenes: Dict[str, List[Frame]], helper_dt_us: int = 500_000) -> None:
    """v1.0-mini tables at ``root`` for ``scenes`` (plus HELPER_SCENE), lidar files symlinked in place."""
    tables = Tables()
    log = token("log")
    tables.t["log"].append({"token": log, "logfile": "", "vehicle": "n015", "date_captured": "2018-08-02",
                            "location": "singapore-onenorth"})
    helper_samples = []
    for scene_name, frames in scenes.items():
        samples, chain = [], []
        for frame in frames:
            sample = {"token": frame.token, "timestamp": frame.timestamp, "prev": "", "next": ""}
            key_l2g = pose(pose_record(frame.ego2global)) @ pose(pose_record(frame.lidar2ego))  # as tabled
            for sweep in frame.sweeps:  # place the sweep so that its lidar2sensor is the fixture's
                sweep_l2g = key_l2g @ np.linalg.inv(sweep["lidar2sensor"])
                sweep_e2g = sweep_l2g @ np.linalg.inv(pose(pose_record(sweep["lidar2ego"])))
                chain.append(tables.sample_data(sweep["token"], frame.token, sweep["timestamp"], sweep["lidar2ego"],
                                                sweep_e2g, sweep["file"], key=False))
            chain.append(tables.sample_data(token("sd", frame.token), frame.token, frame.timestamp, frame.lidar2ego,
                                            frame.ego2global, frame.file, key=True))
            helper = {"token": token("helper", frame.token), "timestamp": frame.timestamp + helper_dt_us,
                      "prev": "", "next": ""}
            helper_samples.append(helper)
            add_annotations(tables, frame, key_l2g, sample, helper)
            samples.append(sample)
        for prev, nxt in zip(chain, chain[1:]):
            prev["next"], nxt["prev"] = nxt["token"], prev["token"]
        tables.scene(scene_name, log, samples)
        for frame in frames:
            for file in [frame.file] + [s["file"] for s in frame.sweeps]:
                link_lidar_file(root, file)
    tables.scene(HELPER_SCENE, log, helper_samples)
    (root / "maps").mkdir(parents=True, exist_ok=True)
    import matplotlib.image

    matplotlib.image.imsave(root / "maps" / "blank.png", np.zeros((2, 2)))
    tables.t["map"].append({"token": token("map"), "log_tokens": [log], "category": "semantic_prior",
                            "filename": "maps/blank.png"})
    tables.write(root / VERSION)


def link_lidar_file(root: Path, file: str) -> None:
    name = Path(file).name
    source = (shared_data_path("mmdet3d", "demo", "data", "nuscenes", name) if name == DEMO_FILE
              else shared_data_path("mmdet3d", "tests", "data", "nuscenes", *Path(file).parts))
    target = root / file
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source)


def add_annotations(tables: Tables, frame: Frame, key_l2g: np.ndarray, sample: dict, helper: dict) -> None:
    """Global-frame annotations whose LiDAR-frame boxes are ``frame.boxes``; a finite velocity gets a ``next``
    annotation in the helper sample, placed so that nuScenes' box_velocity gives it back."""
    # box_velocity divides by this float difference; using it here keeps the velocity exact
    dt = 1e-6 * helper["timestamp"] - 1e-6 * sample["timestamp"]
    rot = key_l2g[:3, :3]
    for k, box in enumerate(frame.boxes):
        x, y, z, length, width, height, yaw = box
        centre = (key_l2g @ np.array([x, y, z, 1.0]))[:3]
        orientation = rot @ Rotation.from_euler("z", yaw).as_matrix()
        instance = token("instance", frame.token, k)
        ann = {"token": token("ann", frame.token, k), "sample_token": frame.token, "instance_token": instance,
               "attribute_tokens": [], "visibility_token": "4", "translation": centre.tolist(),
               "size": [width, length, height], "rotation": quaternion(orientation), "prev": "", "next": "",
               "num_lidar_pts": frame.num_lidar_pts[k], "num_radar_pts": frame.num_radar_pts[k]}
        annotations = [ann]
        if np.isfinite(frame.velocity[k]).all():
            # LiDAR-frame (vx, vy) = first two rows of R^T (vx_g, vy_g, 0): solve for the global velocity
            v_global = np.linalg.solve(rot.T[:2, :2], frame.velocity[k])
            ghost = dict(ann, token=token("next", frame.token, k), sample_token=helper["token"], prev=ann["token"],
                         translation=(centre + dt * np.array([*v_global, 0.0])).tolist())
            ann["next"] = ghost["token"]
            annotations.append(ghost)
        tables.t["sample_annotation"].extend(annotations)
        tables.t["instance"].append({"token": instance, "category_token": tables.category(frame.labels[k]),
                                     "nbr_annotations": len(annotations),
                                     "first_annotation_token": annotations[0]["token"],
                                     "last_annotation_token": annotations[-1]["token"]})


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nuscenes_raw")
    write_tables(root, fixture_frames())
    return root


@pytest.fixture(scope="module")
def converted(raw_root, tmp_path_factory) -> Dict[str, dict]:
    """mini_train and mini_val converted in-process: {split: info file content} (+ "out": folder)."""
    out = tmp_path_factory.mktemp("nuscenes_out")
    result = {"out": out}
    for split in ("mini_train", "mini_val"):
        summary = nus.convert_nuscenes(raw_root, out, version=VERSION, split=split)
        result[split] = load_pickle(summary.info_file)
    return result


def copy_raw(raw_root: Path, dest: Path) -> Path:
    shutil.copytree(raw_root, dest, symlinks=True)
    return dest


def edit_table(root: Path, name: str, edit) -> None:
    path = root / VERSION / f"{name}.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


# ------------------------------------------------------------------------------------------------ points
def test_points_equal_devkit_reader_on_real_demo_sweep():
    from nuscenes.utils.data_classes import LidarPointCloud

    path = shared_data_path("mmdet3d", "demo", "data", "nuscenes", DEMO_FILE)
    points = nus.read_lidar_points(path)
    assert points.shape == (34688, 5) and points.dtype == np.float32
    np.testing.assert_array_equal(points[:, :4], LidarPointCloud.from_file(str(path)).points.T)
    ring = points[:, 4]
    assert np.array_equal(ring, np.round(ring)) and ring.min() == 0 and ring.max() == 31  # 32-beam HDL-32E
    assert 0 <= points[:, 3].min() and points[:, 3].max() <= 255


def test_bad_lidar_files_name_the_file(tmp_path):
    real = shared_data_path("mmdet3d", "demo", "data", "nuscenes", DEMO_FILE)
    truncated = tmp_path / "truncated.pcd.bin"
    truncated.write_bytes(real.read_bytes()[:1001])
    with pytest.raises(ConversionError, match=r"truncated\.pcd\.bin: 1001 bytes .*sample_data 'abc'"):
        nus.read_lidar_points(truncated, "sample_data 'abc'")
    with pytest.raises(ConversionError, match=r"lidar file not found: .*missing\.pcd\.bin"):
        nus.read_lidar_points(tmp_path / "missing.pcd.bin")


# ------------------------------------------------------------------------------------------------ Lyft anchor
def test_boxes_and_sweep_transforms_match_mmdet3d_on_real_lyft_tables():
    """mmdet3d computed lyft_infos_val.pkl from these very tables (nuScenes schema): same boxes, same sweeps."""
    root = shared_data_path("mmdet3d", "tests", "data", "lyft", "v1.01-train")
    reference = load_pickle(shared_data_path("mmdet3d", "tests", "data", "lyft", "lyft_infos_val.pkl"))["infos"][0]
    nusc = nus.load_nuscenes(root, "v1.01-train")
    sample = nusc.get("sample", reference["token"])
    key_data = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    assert Path(key_data["filename"]).name == Path(reference["lidar_path"]).name
    lidar2ego, ego2global, sensor, ego = nus.lidar_pose(nusc, key_data)
    boxes = np.array([nus.box_in_lidar(nusc.get("sample_annotation", t), sensor, ego) for t in sample["anns"]])
    expected = reference["gt_boxes"]
    assert boxes.shape == expected.shape == (4, 7)
    np.testing.assert_allclose(boxes[:, :6], expected[:, :6], rtol=0, atol=1e-9)
    np.testing.assert_allclose(wrap_angle(boxes[:, 6] - expected[:, 6]), 0, atol=1e-9)
    # sweeps: mmdet3d stores sensor2lidar (rotation, translation); ours is its inverse, lidar2sensor
    key_l2g = ego2global @ lidar2ego
    for sweep in reference["sweeps"]:
        sweep_l2g = (nus.pose_matrix(sweep["ego2global_rotation"], sweep["ego2global_translation"])
                     @ nus.pose_matrix(sweep["sensor2ego_rotation"], sweep["sensor2ego_translation"]))
        sensor2lidar = np.linalg.inv(nus.lidar2sensor(key_l2g, sweep_l2g))
        np.testing.assert_allclose(sensor2lidar[:3, :3], sweep["sensor2lidar_rotation"], atol=1e-9)
        np.testing.assert_allclose(sensor2lidar[:3, 3], sweep["sensor2lidar_translation"], atol=1e-9)


# ------------------------------------------------------------------------------------------------ fixtures
def assert_matrix(ours, fixture):
    """rtol 1e-7 covers the fixtures' float32 storage of global translations (e.g. 917.55 m +- 6e-5)."""
    np.testing.assert_allclose(np.array(ours), np.array(fixture, np.float64), rtol=1e-7, atol=1e-6)


def assert_entry_matches(ours: dict, fixture: dict, old_boxes: bool):
    assert ours["token"] == fixture["token"]
    assert ours["timestamp"] == pytest.approx(fixture["timestamp"], abs=1e-6)
    assert_matrix(ours["ego2global"], fixture["ego2global"])
    assert_matrix(ours["lidar_points"]["lidar2ego"], fixture["lidar_points"]["lidar2ego"])
    np.testing.assert_allclose(ours["lidar2global"],
                               np.array(ours["ego2global"]) @ np.array(ours["lidar_points"]["lidar2ego"]), atol=1e-9)
    assert ours["lidar_points"]["num_pts_feats"] == 5
    boxes = np.array([i["bbox_3d"] for i in ours["instances"]])
    expected = new_convention_boxes(fixture, old_boxes)
    assert boxes.shape == expected.shape
    np.testing.assert_allclose(boxes[:, :6], expected[:, :6], rtol=0, atol=1e-6)
    np.testing.assert_allclose(wrap_angle(boxes[:, 6] - expected[:, 6]), 0, atol=1e-6)
    for mine, theirs in zip(ours["instances"], fixture["instances"]):
        assert mine["bbox_label_3d"] == mine["bbox_label"] == theirs["bbox_label_3d"]
        np.testing.assert_allclose(mine["velocity"], theirs["velocity"], rtol=0, atol=1e-6, equal_nan=True)
        assert (mine["num_lidar_pts"], mine["num_radar_pts"]) == (theirs["num_lidar_pts"], theirs["num_radar_pts"])
        assert mine["bbox_3d_isvalid"] == (mine["num_lidar_pts"] + mine["num_radar_pts"] > 0)


def test_fixture_scene_entries_match_mmdet3d_nus_info(converted):
    data = converted["mini_train"]
    fixture = nus_fixture_entries()
    assert [e["token"] for e in data["data_list"]] == [e["token"] for e in fixture]
    assert [(e["scene"], e["frame_index"], e["sample_idx"]) for e in data["data_list"]] == \
        [(FIXTURE_SCENE, 0, 0), (FIXTURE_SCENE, 1, 1)]
    for ours, theirs in zip(data["data_list"], fixture):
        assert_entry_matches(ours, theirs, old_boxes=True)
    first, second = data["data_list"]
    assert "lidar_sweeps" not in first  # the scene's first sample_data has no prev
    # the second frame: the fixture's sweep, then (mmdet3d follows prev through key frames) the first key frame
    sweep, previous_key = second["lidar_sweeps"]
    theirs = fixture[1]["lidar_sweeps"][0]
    assert sweep["sample_data_token"] == theirs["sample_data_token"]
    assert sweep["timestamp"] == pytest.approx(theirs["timestamp"], abs=1e-6)
    assert_matrix(sweep["ego2global"], theirs["ego2global"])
    assert_matrix(sweep["lidar_points"]["lidar2ego"], theirs["lidar_points"]["lidar2ego"])
    np.testing.assert_allclose(sweep["lidar_points"]["lidar2sensor"], theirs["lidar_points"]["lidar2cam"], atol=1e-6)
    assert sweep["lidar_points"]["lidar_path"] == f"{theirs['sample_data_token']}.bin"
    assert previous_key["timestamp"] == pytest.approx(first["timestamp"], abs=1e-6)
    np.testing.assert_allclose(previous_key["lidar_points"]["lidar2sensor"],
                               np.linalg.inv(first["lidar2global"]) @ np.array(second["lidar2global"]), atol=1e-9)
    meta = data["metainfo"]
    assert meta["dataset"] == "nuscenes" and meta["version"] == VERSION and meta["point_columns"] == list(nus.COLUMNS)
    assert meta["categories"]["car"] == 0 and meta["categories"]["barrier"] == 9 and meta["categories"]["animal"] == -1


def test_fixture_scene_point_files_are_the_raw_files(converted):
    out, (first, second) = converted["out"], converted["mini_train"]["data_list"]
    raw = nus.read_lidar_points(shared_data_path("mmdet3d", "tests", "data", "nuscenes", "samples", "LIDAR_TOP",
                                                 "n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470948018.pcd.bin"))
    stored = np.fromfile(out / "points" / first["lidar_points"]["lidar_path"], np.float32).reshape(-1, 5)
    np.testing.assert_array_equal(stored, raw)
    sweep_raw = np.fromfile(shared_data_path("mmdet3d", "tests", "data", "nuscenes", "sweeps", "LIDAR_TOP",
                                             "n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470898274.pcd.bin"),
                            np.float32).reshape(-1, 5)
    sweep_file = out / "sweeps" / second["lidar_sweeps"][0]["lidar_points"]["lidar_path"]
    np.testing.assert_array_equal(np.fromfile(sweep_file, np.float32).reshape(-1, 5), sweep_raw)


def test_demo_entry_matches_mmdet3d_and_nuscenes_point_counts(converted):
    (ours,), fixture = converted["mini_val"]["data_list"], demo_fixture_entry()
    assert_entry_matches(ours, fixture, old_boxes=False)
    assert [i["bbox_3d_isvalid"] for i in ours["instances"]] == [bool(i["bbox_3d_isvalid"]) for i in
                                                                  fixture["instances"]]
    assert (ours["scene"], ours["frame_index"], ours["sample_idx"]) == (DEMO_SCENE, 0, 0)
    assert sum(np.isnan(i["velocity"]).all() for i in ours["instances"]) == 2  # no prev/next in nuScenes
    # the converted boxes hold the points nuScenes counted in each annotation (exact for most boxes; a few
    # differ by points on the box surface / ego motion): l along the yaw direction, z the box centre
    points = np.fromfile(converted["out"] / "points" / ours["lidar_points"]["lidar_path"], np.float32).reshape(-1, 5)
    from nuscenes.utils.data_classes import LidarPointCloud

    raw = LidarPointCloud.from_file(str(shared_data_path("mmdet3d", "demo", "data", "nuscenes", DEMO_FILE)))
    np.testing.assert_array_equal(points[:, :4], raw.points.T)
    counts = np.array([points_in_box(points, i["bbox_3d"]) for i in ours["instances"]])
    truth = np.array([i["num_lidar_pts"] for i in ours["instances"]])
    assert len(counts) == 69 and np.mean(counts == truth) > 0.85
    assert abs(counts.sum() - truth.sum()) < 0.05 * truth.sum()


def points_in_box(points: np.ndarray, box) -> int:
    x, y, z, length, width, height, yaw = box
    d = points[:, :3].astype(np.float64) - (x, y, z)
    along = d[:, 0] * math.cos(yaw) + d[:, 1] * math.sin(yaw)
    across = -d[:, 0] * math.sin(yaw) + d[:, 1] * math.cos(yaw)
    return int(((np.abs(along) <= length / 2) & (np.abs(across) <= width / 2) & (np.abs(d[:, 2]) <= height / 2)).sum())


# ------------------------------------------------------------------------------------------------ CLI + reader
def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_converters.nuscenes", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_twice_with_two_workers_then_lidar_sweeps_reads_it(raw_root, tmp_path, capsys):
    from pcmae.data import LidarSweeps

    out = tmp_path / "out"
    args = ("--root", raw_root, "--out", out, "--version", VERSION, "--split", "mini_train", "--workers", 2,
            "--max-sweeps", 1)
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "converted 2, already done 0, failed 0" in first.stdout
    info_file = out / "nuscenes_infos_mini_train.pkl"
    stamp = (out / "frames").stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in out.rglob("*.bin"))
    assert nus.main(list(map(str, args))) == 0  # the same command line, in this process (saves a start-up)
    assert "converted 0, already done 2, failed 0" in capsys.readouterr().out
    assert ((out / "frames").stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in out.rglob("*.bin"))) == stamp

    data = load_pickle(info_file)
    assert [len(e.get("lidar_sweeps", [])) for e in data["data_list"]] == [0, 1]  # --max-sweeps 1
    sweeps = LidarSweeps(info_file=str(info_file), data_prefix={"pts": "points", "sweeps": "sweeps"}, num_sweeps=3)
    assert len(sweeps) == 2
    item = sweeps[1]
    points = item["points"].numpy()
    assert points.shape == (200, 6)  # 100 key points + 100 sweep points, 5 columns + time lag
    fixture_sweep = nus_fixture_entries()[1]["lidar_sweeps"][0]
    raw_sweep = np.fromfile(raw_root / "sweeps" / "LIDAR_TOP" / Path(fixture_sweep["lidar_points"]["lidar_path"]).name,
                            np.float32).reshape(-1, 5)
    sensor2lidar = np.linalg.inv(np.array(fixture_sweep["lidar_points"]["lidar2cam"], np.float64))
    expected_xyz = raw_sweep[:, :3] @ sensor2lidar[:3, :3].T + sensor2lidar[:3, 3]
    np.testing.assert_allclose(points[100:, :3], expected_xyz, atol=1e-4)
    np.testing.assert_allclose(points[100:, 5], 1533201470.948018 - 1533201470.847939, atol=1e-5)
    np.testing.assert_allclose(item["pose"].numpy(), data["data_list"][1]["lidar2global"], atol=1e-9)


def test_cli_reports_bad_root_and_unknown_split(raw_root, tmp_path, capsys):
    assert nus.main(["--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--version", VERSION]) == 1
    assert "no nuScenes tables here" in capsys.readouterr().err
    assert nus.main(["--root", str(raw_root), "--out", str(tmp_path / "o"), "--version", VERSION,
                     "--split", "mini-train"]) == 1
    assert "unknown nuScenes split 'mini-train'; known: all, train, val" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="split 'test' has none of its scenes in these tables "
                                              rf"\(scenes there: {FIXTURE_SCENE}, {DEMO_SCENE}, {HELPER_SCENE}\)"):
        nus.convert_nuscenes(raw_root, tmp_path / "o", version=VERSION, split="test")


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_calibrated_sensor_record_is_named(raw_root, tmp_path):
    root = copy_raw(raw_root, tmp_path / "raw")
    removed = {}

    def drop_first(records):
        removed.update(records[0])
        return records[1:]

    edit_table(root, "calibrated_sensor", drop_first)
    with pytest.raises(ConversionError, match=r"sample_data\.json \(record \d+, token '[0-9a-f]+'\): "
                                              rf"calibrated_sensor_token '{removed['token']}' has no record "
                                              r"in calibrated_sensor\.json"):
        nus.convert_nuscenes(root, tmp_path / "out", version=VERSION, split="mini_train")


def test_missing_ego_pose_and_lidar_file_fail_their_frames(raw_root, tmp_path):
    root = copy_raw(raw_root, tmp_path / "raw")
    demo_link = root / "samples" / "LIDAR_TOP" / DEMO_FILE
    demo_link.unlink()
    sample_order = [s["token"] for s in json.loads((root / VERSION / "sample.json").read_text())]
    first, second = (e["token"] for e in nus_fixture_entries())
    sweep_token = nus_fixture_entries()[1]["lidar_sweeps"][0]["sample_data_token"]  # the second frame's sweep
    edit_table(root, "ego_pose", lambda records: [r for r in records if r["token"] != token("ego", sweep_token)])

    with pytest.raises(ConversionError, match=rf"sample\.json \(record {sample_order.index(second)}\): "
                                              rf"sample_data '{sweep_token}' .*ego_pose token "
                                              rf"'{token('ego', sweep_token)}' has no record in ego_pose\.json"):
        nus.convert_nuscenes(root, tmp_path / "stop", version=VERSION, split="mini_train")
    with pytest.raises(ConversionError, match=r"sample\.json \(record \d+\): lidar file not found: "
                                              + re.escape(str(demo_link))):
        nus.convert_nuscenes(root, tmp_path / "stop", version=VERSION, split="mini_val")

    # split "all" with skip: the first fixture frame converts; the broken ones and the helper scene's samples
    # (no LIDAR_TOP data) are listed as failures
    summary = nus.convert_nuscenes(root, tmp_path / "skip", version=VERSION, split="all", on_error="skip")
    data = load_pickle(summary.info_file)
    assert [e["token"] for e in data["data_list"]] == [first]
    failed = {f["index"]: f["error"] for f in data["metainfo"]["failed"]}
    assert len(failed) == 2 + 3
    assert f"ego_pose token '{token('ego', sweep_token)}'" in failed[sample_order.index(second)]
    assert str(demo_link) in failed[sample_order.index(demo_fixture_entry()["token"])]
    assert sum("has no LIDAR_TOP key-frame sample_data" in e for e in failed.values()) == 3


# ------------------------------------------------------------------------------------------------ mmdet3d
def test_mmdet3d_nuscenes_dataset_reads_our_info_file(converted):
    """mmdet3d's own NuScenesDataset and loading transforms over the converted folder: paths, boxes, labels,
    velocities and the multi-sweep stack, which must equal our LidarSweeps reader's."""
    import_mmdet3d_datasets()  # skips without mmdet3d / mmcv.ops
    from pcmae.data import LidarSweeps

    out = converted["out"]
    ours = converted["mini_train"]["data_list"][1]
    assert ours["token"] == nus_fixture_entries()[1]["token"] and len(ours["lidar_sweeps"]) == 2
    pipeline = [dict(type="LoadPointsFromFile", coord_type="LIDAR", load_dim=5, use_dim=5),
                dict(type="LoadPointsFromMultiSweeps", sweeps_num=10, load_dim=5, use_dim=[0, 1, 2, 3, 4],
                     pad_empty_sweeps=True, remove_close=False),
                dict(type="LoadAnnotations3D", with_bbox_3d=True, with_label_3d=True),
                dict(type="Pack3DDetInputs", keys=["points", "gt_bboxes_3d", "gt_labels_3d"])]
    dataset = build_mmdet3d_dataset("NuScenesDataset", data_root=str(out), ann_file="nuscenes_infos_mini_train.pkl",
                                    data_prefix=dict(pts="points", sweeps="sweeps"), pipeline=pipeline,
                                    modality=dict(use_lidar=True, use_camera=False), with_velocity=True)
    assert len(dataset) == 2
    info = dataset.get_data_info(1)
    assert info["token"] == ours["token"]
    assert info["lidar_points"]["lidar_path"] == str(out / "points" / f"{ours['token']}.bin")
    assert [s["lidar_points"]["lidar_path"] for s in info["lidar_sweeps"]] == \
        [str(out / "sweeps" / f"{s['sample_data_token']}.bin") for s in ours["lidar_sweeps"]]
    # mmdet3d keeps the boxes with points (num_lidar_pts > 0), appends the velocity and moves z to the bottom
    kept = [i for i in ours["instances"] if i["num_lidar_pts"] > 0]
    assert 0 < len(kept) < len(ours["instances"])
    boxes = info["ann_info"]["gt_bboxes_3d"]
    assert type(boxes).__name__ == "LiDARInstance3DBoxes" and boxes.tensor.shape == (len(kept), 9)
    expected = np.array([i["bbox_3d"] for i in kept])
    np.testing.assert_allclose(boxes.gravity_center.numpy(), expected[:, :3], atol=1e-4)
    np.testing.assert_allclose(boxes.bottom_center.numpy()[:, 2], expected[:, 2] - expected[:, 5] / 2, atol=1e-4)
    np.testing.assert_allclose(boxes.dims.numpy(), expected[:, 3:6], atol=1e-4)
    np.testing.assert_allclose(wrap_angle(boxes.yaw.numpy() - expected[:, 6]), 0, atol=1e-4)
    velocity = np.nan_to_num(np.array([i["velocity"] for i in kept], np.float64))
    np.testing.assert_allclose(boxes.tensor.numpy()[:, 7:9], velocity, atol=1e-4)
    np.testing.assert_array_equal(info["ann_info"]["gt_labels_3d"], [i["bbox_label_3d"] for i in kept])
    assert set(info["ann_info"]["gt_labels_3d"]) <= set(range(len(dataset.metainfo["classes"]))) | {-1}
    # the training pipeline: the key frame and both sweeps stacked (100 points each), the time lag in column 4
    item = dataset.prepare_data(1)  # (dataset[1] would silently draw another frame if this one came out empty)
    sample = item["data_samples"]
    assert sample.lidar_path == info["lidar_points"]["lidar_path"] and sample.sample_idx == ours["sample_idx"]
    points = item["inputs"]["points"].numpy()
    assert points.shape == (300, 5)
    lags = [0.0] + [ours["timestamp"] - s["timestamp"] for s in ours["lidar_sweeps"]]
    np.testing.assert_allclose(points[:, 4], np.repeat(lags, 100), atol=1e-5)
    np.testing.assert_allclose(lags, [0.0, 0.948018 - 0.847939, 0.948018 - 0.448696], atol=1e-5)
    reader = LidarSweeps(info_file=str(out / "nuscenes_infos_mini_train.pkl"),
                         data_prefix={"pts": "points", "sweeps": "sweeps"}, num_sweeps=3)[1]["points"].numpy()
    np.testing.assert_allclose(points[:, :4], reader[:, :4], atol=1e-4)
    np.testing.assert_allclose(points[:, 4], reader[:, 5], atol=1e-5)
    np.testing.assert_allclose(sample.gt_instances_3d.bboxes_3d.tensor.numpy(), boxes.tensor.numpy())
    np.testing.assert_array_equal(sample.gt_instances_3d.labels_3d.numpy(), info["ann_info"]["gt_labels_3d"])
