"""LiDAR sweep datasets on the real KITTI / nuScenes / Waymo sweeps and mmdet3d info files, multi-sweep
accumulation, collate, the simulated dataset and the global augmentations."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from pcmae.data.lidar_datasets import (EmptySweepError, InfoFileError, LidarSweeps, SimulatedLidarSweeps,
                                       collate_sweeps)
from pcmae.data.lidar_transforms import Compose, GlobalRotScale, RandomFlip, RangeCrop
from pcmae.registry import DATASETS, ConfigError
from tests.shared_data import shared_data_path

NUS_PREFIX = {"pts": "samples/LIDAR_TOP", "sweeps": "sweeps/LIDAR_TOP"}


def raw(path, columns):
    return np.fromfile(path, dtype="<f4").reshape(-1, columns)


def rot_z(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def homogeneous(rotation, translation):
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, translation
    return matrix


def box_local(xyz, box):
    c, s = math.cos(box[6]), math.sin(box[6])
    d = xyz - box[:3]
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)


# ------------------------------------------------------------------------------------------ real sweeps
def test_kitti_velodyne_folder():
    folder = shared_data_path("openpcdet", "data", "kitti", "training", "velodyne")
    dataset = LidarSweeps(root=str(folder), layout="kitti")
    assert len(dataset) == 5 and dataset[0]["lidar_path"].endswith("000000.bin")
    item = dataset[0]
    expected = raw(folder / "000000.bin", 4)
    assert item["points"].dtype == torch.float32 and torch.equal(item["points"], torch.from_numpy(expected))
    assert 0 <= expected[:, 3].min() and expected[:, 3].max() <= 1
    assert torch.equal(item["pose"], torch.eye(4, dtype=torch.float64)) and item["timestamp"] == 0.0
    cropped = LidarSweeps(root=str(folder), layout="kitti", point_cloud_range=[0, -40, -3, 70.4, 40, 1])[0]
    inside = ((expected[:, 0] >= 0) & (expected[:, 0] < 70.4) & (np.abs(expected[:, 1]) < 40) &
              (expected[:, 2] >= -3) & (expected[:, 2] < 1))
    assert len(cropped["points"]) == inside.sum() < len(expected)


def test_nuscenes_lidar_top_and_waymo_npy():
    nus = shared_data_path("mmdet3d", "demo", "data", "nuscenes",
                           "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin")
    points = LidarSweeps(sweeps=[str(nus)], layout="nuscenes")[0]["points"]
    assert points.shape == (34688, 5) and set(points[:, 4].unique().tolist()) == set(range(32))
    assert LidarSweeps(sweeps=[str(nus)], layout="nuscenes", use_columns=4)[0]["points"].shape == (34688, 4)
    waymo = shared_data_path("openpcdet", "pcdet", "datasets", "waymo", "0004.npy")
    points = LidarSweeps(sweeps=[str(waymo)], layout="waymo")[0]["points"]
    assert points.shape == (172359, 6) and torch.equal(points, torch.from_numpy(np.load(waymo)))
    with pytest.raises(ValueError, match="pass layout="):
        LidarSweeps(sweeps=[str(nus)])[0]
    with pytest.raises(ValueError, match="kitti"):  # the wrong layout for this .npy is caught by its columns
        LidarSweeps(sweeps=[str(waymo)], layout="kitti")[0]


def test_nuscenes_info_file_poses_and_layout():
    info_file = shared_data_path("mmdet3d", "tests", "data", "nuscenes", "nus_info.pkl")
    dataset = LidarSweeps(info_file=str(info_file), data_prefix=NUS_PREFIX)
    assert len(dataset) == 2 and dataset.layout == "nuscenes"  # from metainfo DATASET 'Nuscenes'
    with open(info_file, "rb") as f:
        entry = pickle.load(f)["data_list"][1]
    item = dataset[1]
    key = raw(info_file.parent / "samples" / "LIDAR_TOP" / entry["lidar_points"]["lidar_path"], 5)
    assert torch.equal(item["points"], torch.from_numpy(key))
    expected_pose = np.array(entry["ego2global"]) @ np.array(entry["lidar_points"]["lidar2ego"])
    np.testing.assert_allclose(item["pose"].numpy(), expected_pose)
    assert item["timestamp"] == entry["timestamp"] and item["sample_idx"] == 1


def test_nuscenes_info_multi_sweep_matches_the_stored_transform():
    info_file = shared_data_path("mmdet3d", "tests", "data", "nuscenes", "nus_info.pkl")
    with open(info_file, "rb") as f:
        entry = pickle.load(f)["data_list"][1]
    sweep = entry["lidar_sweeps"][0]
    item = LidarSweeps(info_file=str(info_file), data_prefix=NUS_PREFIX, num_sweeps=2)[1]
    points = item["points"].numpy()
    assert points.shape == (200, 6)  # 100 key + 100 sweep points, 5 columns + time lag
    key = raw(info_file.parent / "samples" / "LIDAR_TOP" / entry["lidar_points"]["lidar_path"], 5)
    np.testing.assert_array_equal(points[:100, :5], key)
    assert np.all(points[:100, 5] == 0)
    np.testing.assert_allclose(points[100:, 5], entry["timestamp"] - sweep["timestamp"], rtol=1e-6)
    # the fixture stores the lidar -> sweep-sensor matrix (as 'lidar2cam'); our loader chains the poses instead
    sensor2lidar = np.linalg.inv(np.array(sweep["lidar_points"]["lidar2cam"]))
    sweep_raw = raw(info_file.parent / "sweeps" / "LIDAR_TOP" / sweep["lidar_points"]["lidar_path"].split("/")[-1], 5)
    expected = sweep_raw[:, :3] @ sensor2lidar[:3, :3].T + sensor2lidar[:3, 3]
    np.testing.assert_allclose(points[100:, :3], expected, atol=2e-4)
    np.testing.assert_array_equal(points[100:, 3:5], sweep_raw[:, 3:5])


def test_kitti_and_demo_info_files():
    kitti = shared_data_path("mmdet3d", "tests", "data", "kitti", "kitti_infos_train.pkl")
    dataset = LidarSweeps(info_file=str(kitti), data_prefix={"pts": "training/velodyne"})
    assert dataset.layout == "kitti" and dataset[0]["points"].shape == (800, 4)
    assert torch.equal(dataset[0]["pose"], torch.eye(4, dtype=torch.float64))  # KITTI infos carry no poses
    demo = shared_data_path("mmdet3d", "demo", "data", "nuscenes", "n015-2018-07-24-11-22-45+0800.pkl")
    item = LidarSweeps(info_file=str(demo))[0]  # lidar_path sits next to the info file
    assert item["points"].shape == (34688, 5) and item["timestamp"] == pytest.approx(1532402927.647951)
    with pytest.raises(FileNotFoundError, match=r"data_list\[0\] lidar file not found"):
        LidarSweeps(info_file=str(kitti))  # without the data_prefix the file is not found


# ------------------------------------------------------------------------------------------ synthetic info files
def write_info(tmp_path, data_list, metainfo=None):
    path = tmp_path / "infos.pkl"
    with open(path, "wb") as f:
        pickle.dump({"metainfo": metainfo or {"dataset": "kitti"}, "data_list": data_list}, f)
    return str(path)


def write_bin(path, rows):
    np.asarray(rows, np.float32).tofile(path)


@pytest.mark.parametrize("style", ["lidar2sensor", "sensor2lidar", "poses"])
def test_multi_sweep_moves_a_known_point(tmp_path, style):
    write_bin(tmp_path / "key.bin", [[5.0, 0.0, 0.0, 0.5]])
    write_bin(tmp_path / "prev.bin", [[1.0, 0.0, 0.0, 0.25], [0.0, 2.0, 1.0, 0.75]])
    sensor2lidar = homogeneous(rot_z(math.pi / 2), [10.0, 0.0, 0.5])  # sweep sensor seen from the key lidar
    sweep = {"lidar_points": {"lidar_path": "prev.bin"}, "timestamp": 99.95}
    entry = {"lidar_points": {"lidar_path": "key.bin"}, "timestamp": 100.0, "lidar_sweeps": [sweep]}
    if style == "lidar2sensor":
        sweep["lidar_points"]["lidar2sensor"] = np.linalg.inv(sensor2lidar).tolist()
    elif style == "sensor2lidar":
        sweep["sensor2lidar_rotation"], sweep["sensor2lidar_translation"] = sensor2lidar[:3, :3], sensor2lidar[:3, 3]
    else:  # both frames' poses: key lidar -> global = G; sweep lidar -> global = G @ sensor2lidar
        lidar2ego = homogeneous(rot_z(0.3), [1.0, 0.0, 1.8])
        key_ego2global = homogeneous(rot_z(1.1), [100.0, -50.0, 0.0])
        entry["lidar_points"]["lidar2ego"], entry["ego2global"] = lidar2ego, key_ego2global
        sweep["lidar_points"]["lidar2ego"] = lidar2ego
        sweep["ego2global"] = key_ego2global @ lidar2ego @ sensor2lidar @ np.linalg.inv(lidar2ego)
    points = LidarSweeps(info_file=write_info(tmp_path, [entry]), num_sweeps=3)[0]["points"].numpy()
    # rotate 90 deg about z, then shift: (1, 0, 0) -> (10, 1, 0.5); (0, 2, 1) -> (8, 0, 1.5)
    expected = [[5.0, 0.0, 0.0, 0.5, 0.0], [10.0, 1.0, 0.5, 0.25, 0.05], [8.0, 0.0, 1.5, 0.75, 0.05]]
    np.testing.assert_allclose(points, expected, atol=1e-5)


def test_info_file_errors(tmp_path):
    write_bin(tmp_path / "a.bin", [[1.0, 2.0, 3.0, 0.5]])
    entries = [{"lidar_points": {"lidar_path": "a.bin"}}, {"lidar_points": {"lidar_path": "missing.bin"}}]
    with pytest.raises(FileNotFoundError, match=r"data_list\[1\] lidar file not found: .*missing.bin"):
        LidarSweeps(info_file=write_info(tmp_path, entries))
    with pytest.raises(InfoFileError, match=r"data_list\[0\] has no lidar_points.lidar_path"):
        LidarSweeps(info_file=write_info(tmp_path, [{"images": {}}]))
    sweep_missing = [{"lidar_points": {"lidar_path": "a.bin"}, "timestamp": 1.0,
                      "lidar_sweeps": [{"lidar_points": {"lidar_path": "gone.bin", "lidar2sensor": np.eye(4)},
                                        "timestamp": 0.9}]}]
    dataset = LidarSweeps(info_file=write_info(tmp_path, sweep_missing), num_sweeps=2)
    with pytest.raises(FileNotFoundError, match=r"entry 0 lidar_sweeps\[0\].*gone.bin"):
        dataset[0]
    no_transform = [{"lidar_points": {"lidar_path": "a.bin"}, "timestamp": 1.0,
                     "lidar_sweeps": [{"lidar_points": {"lidar_path": "a.bin"}, "timestamp": 0.9}]}]
    with pytest.raises(InfoFileError, match=r"lidar_sweeps\[0\]: no lidar2sensor"):
        LidarSweeps(info_file=write_info(tmp_path, no_transform), num_sweeps=2)[0]
    v1 = tmp_path / "v1.pkl"
    v1.write_bytes(pickle.dumps({"infos": [], "metadata": {"version": "v1.0"}}))
    with pytest.raises(InfoFileError, match="v0.x info file"):
        LidarSweeps(info_file=str(v1))
    with pytest.raises(ValueError, match="num_sweeps > 1 needs an info_file"):
        LidarSweeps(root=str(tmp_path), layout="kitti", num_sweeps=2)


def test_label_only_entries_are_skipped(tmp_path):
    """The converters keep labels of frames whose points were lost as flagged entries with no lidar file."""
    write_bin(tmp_path / "a.bin", [[1.0, 2.0, 3.0, 0.5]])
    label_only = {"lidar_points": {"lidar_path": "", "num_points": 0}, "label_only": True, "instances": [{}]}
    dataset = LidarSweeps(info_file=write_info(tmp_path, [label_only, {"lidar_points": {"lidar_path": "a.bin"}}]))
    assert len(dataset) == 1 and dataset[0]["points"].shape == (1, 4)
    with pytest.raises(InfoFileError, match="all 1 entries are label-only"):
        LidarSweeps(info_file=write_info(tmp_path, [label_only]))


def test_empty_sweep_error_or_flag(tmp_path):
    write_bin(tmp_path / "a.bin", [[1.0, 2.0, 3.0, 0.5], [2.0, 2.0, 3.0, 0.5]])
    write_bin(tmp_path / "b.bin", [[100.0, 2.0, 3.0, 0.5]])
    far = [50, -10, -10, 200, 10, 10]
    with pytest.raises(EmptySweepError, match=r"LidarSweeps\[0\] \(.*a.bin\): no points left of 2.*allow_empty"):
        LidarSweeps(root=str(tmp_path), layout="kitti", point_cloud_range=far)[0]
    dataset = LidarSweeps(root=str(tmp_path), layout="kitti", point_cloud_range=far, allow_empty=True)
    batch = collate_sweeps([dataset[0], dataset[1]])
    assert batch["points"].counts().tolist() == [0, 1] and batch["points"].points.shape == (1, 4)


def test_collate_packs_without_padding(tmp_path):
    write_bin(tmp_path / "a.bin", np.arange(12).reshape(3, 4))
    write_bin(tmp_path / "b.bin", np.arange(8).reshape(2, 4) + 100)
    dataset = LidarSweeps(root=str(tmp_path), layout="kitti")
    batch = collate_sweeps([dataset[1], dataset[0]])
    assert batch["points"].batch_idx.tolist() == [0, 0, 1, 1, 1]
    assert batch["points"].points[:, 0].tolist() == [100, 104, 0, 4, 8]
    assert batch["poses"].shape == (2, 4, 4) and batch["poses"].dtype == torch.float64
    assert batch["sample_idx"].tolist() == [1, 0] and batch["lidar_paths"][0].endswith("b.bin")
    narrow = dict(dataset[0], points=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"different point columns \[3, 4\]"):
        collate_sweeps([dataset[0], narrow])


# ------------------------------------------------------------------------------------------ simulated sweeps
def test_simulated_sweeps_are_deterministic_and_cached_safely():
    kwargs = dict(num_frames=4, frames_per_scene=2, beams="hdl32", azimuth_resolution=0.5, seed=3)
    a, b = SimulatedLidarSweeps(**kwargs), SimulatedLidarSweeps(**kwargs)
    for i in (3, 1):
        b[i]
    item = a[1]
    assert torch.equal(item["points"], b[1]["points"]) and torch.equal(item["pose"], b[1]["pose"])
    assert item["points"].shape[1] == 5 and len(item["object_id"]) == len(item["points"])
    assert item["scene_idx"] == 0 and item["frame_idx"] == 1 and item["timestamp"] == pytest.approx(0.1)
    item["points"].zero_()  # the cache must not hand out its own storage
    assert a[1]["points"].abs().sum() > 0
    assert not torch.equal(a[0]["points"], a[2]["points"])  # another scene
    other_seed = SimulatedLidarSweeps(**{**kwargs, "seed": 4})[1]["points"]
    assert other_seed.shape != item["points"].shape or not torch.equal(other_seed, a[1]["points"])
    with pytest.raises(IndexError):
        a[4]


def test_simulated_boxes_contain_their_points_and_registry():
    dataset = DATASETS.build({"type": "SimulatedLidarSweeps", "num_frames": 2, "azimuth_resolution": 0.5,
                              "point_cloud_range": [-40, -40, -3, 40, 40, 3]})
    item = dataset[1]
    assert item["points"][:, :3].abs().max() <= 40 and len(item["gt_boxes"]) == len(item["gt_names"]) > 5
    points, object_id = item["points"][:, :3].double().numpy(), item["object_id"].numpy()
    boxes, box_object = item["gt_boxes"].double().numpy(), item["gt_object_id"].tolist()
    hit = np.unique(object_id[object_id >= 0])
    labelled = [k for k in hit if k in box_object]  # a box whose centre is outside the range is cropped
    assert len(labelled) > 5
    for k in labelled:
        box = boxes[box_object.index(k)]
        assert item["gt_names"][box_object.index(k)] == dataset.scene(0).objects[k].kind
        assert np.all(np.abs(box_local(points[object_id == k], box)) <= box[3:6] / 2 + 0.1)
    batch = collate_sweeps([dataset[0], item])
    assert batch["object_id"].shape == (batch["points"].points.shape[0],) and len(batch["gt_boxes"]) == 2
    with pytest.raises(ConfigError, match="SimulatedLidarSweeps.frames_per_scen'.*frames_per_scene"):
        DATASETS.build({"type": "SimulatedLidarSweeps", "frames_per_scen": 4}, where="SimulatedLidarSweeps")
    assert "LidarSweeps" in DATASETS


# ------------------------------------------------------------------------------------------ transforms
def sample_item(pose=None):
    rng = np.random.default_rng(0)
    return {"points": rng.normal(size=(50, 4)).astype(np.float32), "pose": np.eye(4) if pose is None else pose,
            "gt_boxes": np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3]], np.float32), "gt_names": ["car"],
            "object_id": np.arange(50), "timestamp": 0.0, "sample_idx": 0, "lidar_path": "x"}


def test_rotation_scale_moves_points_pose_and_boxes_consistently():
    pose = homogeneous(rot_z(0.7), [5.0, -3.0, 1.0])
    item = sample_item(pose)
    out = GlobalRotScale(rot_range=[math.pi / 2, math.pi / 2], scale_range=[2.0, 2.0])(item, np.random.default_rng())
    p, q = item["points"], out["points"]
    np.testing.assert_allclose(q[:, :3], np.stack([-2 * p[:, 1], 2 * p[:, 0], 2 * p[:, 2]], 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(q[:, 3], p[:, 3])
    # the global position of every point is unchanged: pose_new @ p_new == pose @ p
    to_global = lambda pts, m: pts[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(to_global(q, out["pose"]), to_global(p, pose), atol=1e-5)
    np.testing.assert_allclose(out["gt_boxes"][0], [-4.0, 2.0, 1.0, 8.0, 4.0, 3.0, 0.3 + math.pi / 2], atol=1e-5)
    np.testing.assert_array_equal(item["points"], sample_item(pose)["points"])  # input untouched


@pytest.mark.parametrize("axis, expected_yaw", [("y", -0.3), ("x", math.pi - 0.3)])
def test_flip_mirrors_points_and_boxes(axis, expected_yaw):
    item = sample_item()
    out = RandomFlip(axes=[axis], prob=1.0)(item, np.random.default_rng())
    column = "xyz".index(axis)
    np.testing.assert_array_equal(out["points"][:, column], -item["points"][:, column])
    np.testing.assert_array_equal(out["points"][:, 2:], item["points"][:, 2:])
    assert out["gt_boxes"][0, column] == -item["gt_boxes"][0, column]
    assert out["gt_boxes"][0, 6] == pytest.approx(expected_yaw)
    assert RandomFlip(axes=[axis], prob=0.0)(item, np.random.default_rng())["points"] is item["points"]


def test_random_augmentations_keep_object_points_in_their_boxes():
    source = SimulatedLidarSweeps(num_frames=1, azimuth_resolution=1.0)
    item = dict(source.frame(0))
    pipeline = Compose([{"type": "GlobalRotScale"}, {"type": "RandomFlip", "axes": ["x", "y"]},
                        {"type": "RangeCrop", "point_cloud_range": [-30, -30, -5, 30, 30, 5]}])
    for seed in range(3):
        out = pipeline(item, np.random.default_rng(seed))
        assert len(out["object_id"]) == len(out["points"]) < len(item["points"])
        assert len(out["gt_boxes"]) == len(out["gt_names"]) == len(out["gt_object_id"]) < len(item["gt_boxes"])
        assert np.all(np.abs(out["gt_boxes"][:, :2]) < 30)
        for box, k in zip(out["gt_boxes"].astype(np.float64), out["gt_object_id"]):
            local = box_local(out["points"][out["object_id"] == k, :3].astype(np.float64), box)
            assert np.all(np.abs(local) <= box[3:6] / 2 + 0.1)


def test_transforms_numpy_and_torch_agree():
    item = sample_item()
    torch_item = {**item, "points": torch.from_numpy(item["points"]), "pose": torch.from_numpy(item["pose"]),
                  "gt_boxes": torch.from_numpy(item["gt_boxes"]), "object_id": torch.from_numpy(item["object_id"])}
    pipeline = Compose([{"type": "GlobalRotScale"}, {"type": "RandomFlip", "axes": ["x", "y"], "prob": 0.5}])
    a, b = pipeline(item, np.random.default_rng(5)), pipeline(torch_item, np.random.default_rng(5))
    assert isinstance(b["points"], torch.Tensor) and isinstance(b["pose"], torch.Tensor)
    np.testing.assert_allclose(b["points"].numpy(), a["points"], atol=1e-6)
    np.testing.assert_allclose(b["pose"].numpy(), a["pose"], atol=1e-12)
    np.testing.assert_allclose(b["gt_boxes"].numpy(), a["gt_boxes"], atol=1e-6)
    crop = RangeCrop([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5])
    assert torch.equal(crop(torch_item)["object_id"], torch.from_numpy(crop(item)["object_id"]))


def test_compose_config_errors():
    with pytest.raises(ConfigError, match=r"unknown config key 'transforms\[0\].rot_rnge'.*rot_range"):
        Compose([{"type": "GlobalRotScale", "rot_rnge": [0, 1]}])
    with pytest.raises(ConfigError, match="unknown lidar transform type 'RandomFlp'.*RandomFlip"):
        Compose([{"type": "RandomFlip"}, {"type": "RandomFlp"}])
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(RangeCrop\).*point_cloud_range"):
        Compose([{"type": "RangeCrop"}])
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(RandomFlip\).*axes"):
        Compose([{"type": "RandomFlip", "axes": ["z"]}])


def test_dataset_augmentation_seed(tmp_path):
    write_bin(tmp_path / "a.bin", np.random.default_rng(0).normal(size=(20, 4)))
    config = [{"type": "GlobalRotScale", "rot_range": [-3, 3]}]
    fixed = [LidarSweeps(root=str(tmp_path), layout="kitti", transforms=config, augment_seed=1)[0] for _ in range(2)]
    assert torch.equal(fixed[0]["points"], fixed[1]["points"])
    free = LidarSweeps(root=str(tmp_path), layout="kitti", transforms=config)
    torch.manual_seed(0)
    first = free[0]["points"]
    assert not torch.equal(first, free[0]["points"])  # a new draw each time (per epoch)
    torch.manual_seed(0)
    assert torch.equal(first, free[0]["points"])  # reproducible from torch's seed


def test_pcd_sweeps_read_the_layout_fields_by_name():
    pcd = shared_data_path("pcl", "test", "lamppost.pcd")  # x y z only
    assert LidarSweeps(sweeps=[str(pcd)])[0]["points"].shape == (1771, 3)
    with pytest.raises(ValueError, match="no field 'intensity'"):
        LidarSweeps(sweeps=[str(pcd)], layout="kitti")[0]


def test_info_file_point_columns_give_the_bin_width(tmp_path):
    """pcmae's converters of other sources (folders, ROS bags) name their columns instead of a dataset layout."""
    points = np.arange(21, dtype=np.float32).reshape(7, 3)
    points.tofile(tmp_path / "a.bin")
    info = {"metainfo": {"dataset": "rosbag", "point_columns": ["x", "y", "z"]},
            "data_list": [{"lidar_points": {"lidar_path": "a.bin", "num_pts_feats": 3}}]}
    with open(tmp_path / "infos.pkl", "wb") as f:
        pickle.dump(info, f)
    item = LidarSweeps(info_file=str(tmp_path / "infos.pkl"))[0]
    assert torch.equal(item["points"], torch.from_numpy(points))
    with pytest.raises(ValueError, match="pass layout="):  # without metainfo columns the width is unknown
        info["metainfo"] = {"dataset": "rosbag"}
        with open(tmp_path / "infos.pkl", "wb") as f:
            pickle.dump(info, f)
        LidarSweeps(info_file=str(tmp_path / "infos.pkl"))[0]
