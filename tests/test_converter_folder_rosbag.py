"""Folder converter on real files (read in place through symlinks) and the ROS bag converter on bags written
here with rosbags' own writers, from known points laid out with padding, extra fields and both byte orders."""
from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from data_converters import folder, rosbag
from data_converters.common import ConversionError, run_conversion
from pcmae.io import load_points
from tests.shared_data import shared_data_path


def load_pickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def link(files, target: Path, names=None) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        (target / (names[i] if names else path.name)).symlink_to(path)
    return target


# ------------------------------------------------------------------------------------------------ folder
@pytest.fixture(scope="module")
def kitti_velodyne() -> Path:
    return shared_data_path("openpcdet", "data", "kitti", "training", "velodyne")


def test_folder_of_bins_with_tum_poses(kitti_velodyne, tmp_path, capsys):
    from pcmae.data import LidarSweeps

    files = [kitti_velodyne / f"{i:06d}.bin" for i in (2, 0, 1)]
    root = link(files, tmp_path / "drive", names=["c.bin", "a.bin", "b.bin"])  # frames a, b, c = 000000, 1, 2
    (tmp_path / "poses.txt").write_text("# timestamp tx ty tz qx qy qz qw\n"
                                        "100.0 0 0 0 0 0 0 1\n"
                                        "100.1 1 2 3 0 0 0.70710678 0.70710678\n"  # 90 deg about z
                                        "100.2 0 0 0 1 0 0 0\n")                    # 180 deg about x
    out = tmp_path / "out"
    assert folder.main(["--root", str(root), "--out", str(out), "--layout", "kitti",
                        "--poses", str(tmp_path / "poses.txt")]) == 0
    info = load_pickle(out / "folder_infos_all.pkl")
    assert info["metainfo"]["point_columns"] == ["x", "y", "z", "intensity"]
    entries = info["data_list"]
    assert [e["token"] for e in entries] == ["a.bin", "b.bin", "c.bin"]
    assert [(e["scene"], e["frame_index"], e["timestamp"]) for e in entries] == [
        ("drive", 0, 100.0), ("drive", 1, 100.1), ("drive", 2, 100.2)]
    np.testing.assert_allclose(entries[1]["ego2global"], [[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]],
                               atol=1e-8)
    np.testing.assert_allclose(entries[2]["ego2global"], np.diag([1.0, -1.0, -1.0, 1.0]), atol=1e-12)
    dataset = LidarSweeps(info_file=str(out / "folder_infos_all.pkl"), data_prefix={"pts": "points"}, layout="kitti")
    for i, item in enumerate(dataset):
        velodyne = np.fromfile(kitti_velodyne / f"{i:06d}.bin", "<f4").reshape(-1, 4)
        np.testing.assert_array_equal(item["points"].numpy(), velodyne)
        np.testing.assert_allclose(item["pose"].numpy(), entries[i]["ego2global"])
    # a second run converts nothing and leaves every point file as it was
    written = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    assert folder.main(["--root", str(root), "--out", str(out), "--layout", "kitti",
                        "--poses", str(tmp_path / "poses.txt")]) == 0
    assert "converted 0, already done 3" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()} == written


def test_folder_of_named_formats(tmp_path, capsys):
    files = [shared_data_path("pcl", "test", "lamppost.pcd"),             # ascii PCD
             shared_data_path("pcl", "test", "milk.pcd"),                 # binary_compressed PCD
             shared_data_path("laspy", "tests", "data", "simple.las"),
             shared_data_path("open3d", "examples", "test_data", "bathtub_0154.ply")]
    root = link(files, tmp_path / "mixed")
    out = tmp_path / "out"
    # the LAS survey coordinates (~8.5e5 m) lose 3 cm in float32: refused without an origin, one line
    assert folder.main(["--root", str(root), "--out", str(out), "--scene", "mixed scans"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {root / 'simple.las'} (record 3): ") and "lose 0.03 m in float32" in line
    assert line.endswith("(folder converter: --origin header or --origin X,Y,Z)")
    assert not (out / "folder_infos_all.pkl").exists()
    origin = (635619.0, 848899.0, 406.0)
    args = ["--root", str(root), "--out", str(out), "--scene", "mixed scans", "--origin", ",".join(map(str, origin))]
    assert folder.main(args) == 1  # frames 0-2 were converted without an origin: another setting
    assert "(origin None -> [635619.0, 848899.0, 406.0]); pass --overwrite" in capsys.readouterr().err
    assert folder.main(args + ["--overwrite"]) == 0
    info = load_pickle(out / "folder_infos_all.pkl")
    assert info["metainfo"]["point_columns"] == ["x", "y", "z"] and info["metainfo"]["origin"] == origin
    keys = [Path(e["lidar_points"]["lidar_path"]).stem for e in info["data_list"]]
    assert keys == ["folder_mixed_scans_bathtub_0154", "folder_mixed_scans_lamppost", "folder_mixed_scans_milk",
                    "folder_mixed_scans_simple"]  # no more name.pcd.bin
    # the ASCII PCD, parsed here independently: the numbers after the DATA line
    lines = files[0].read_text().splitlines()
    expected = np.loadtxt(lines[next(i for i, l in enumerate(lines) if l.startswith("DATA")) + 1:], dtype=np.float32)
    got = np.fromfile(out / "points" / "folder_mixed_scans_lamppost.bin", "<f4").reshape(-1, 3)
    np.testing.assert_array_equal(got, expected)
    for path in (files[1], files[3]):
        got = np.fromfile(out / "points" / f"folder_mixed_scans_{path.stem}.bin", "<f4").reshape(-1, 3)
        np.testing.assert_array_equal(got, load_points(path, drop_nonfinite=True))
    # LAS: laspy's float64 coordinates, independently; the stored float32 points + origin are within 1 mm
    import laspy

    survey = np.asarray(laspy.read(files[2]).xyz, np.float64)
    local = np.fromfile(out / "points" / "folder_mixed_scans_simple.bin", "<f4").reshape(-1, 3)
    assert local.shape == (1065, 3)
    entry = info["data_list"][3]
    assert entry["lidar_points"]["origin"] == list(origin)
    world = local.astype(np.float64) @ np.asarray(entry["lidar2global"])[:3, :3].T + np.asarray(
        entry["lidar2global"])[:3, 3]
    assert np.abs(world - survey).max() < 1e-3
    assert np.abs(survey.astype(np.float32).astype(np.float64) - survey).max() > 0.01  # what a plain cast loses
    assert info["data_list"][0]["lidar_points"]["origin"] == [0.0, 0.0, 0.0]  # the origin is for LAS/LAZ only


def test_folder_origin_header_and_bad_origin(tmp_path, capsys):
    las = shared_data_path("laspy", "tests", "data", "1_4_w_evlr.las")  # header offset (1692500.352, 1817499.596, ...)
    from pcmae.io import las_header_offset

    root = link([las], tmp_path / "survey")
    out = tmp_path / "out"
    offset = las_header_offset(las)
    assert folder.main(["--root", str(root), "--out", str(out)]) == 1  # a plain float32 cast is lossy here
    assert "--origin header" in capsys.readouterr().err
    assert folder.main(["--root", str(root), "--out", str(out), "--origin", "header"]) == 0
    entry = load_pickle(out / "folder_infos_all.pkl")["data_list"][0]
    assert entry["lidar_points"]["origin"] == list(offset)
    np.testing.assert_allclose(np.asarray(entry["ego2global"])[:3, 3], offset)
    stored = np.fromfile(out / "points" / entry["lidar_points"]["lidar_path"], "<f4").reshape(-1, 3)
    import laspy

    survey = np.asarray(laspy.read(las).xyz, np.float64)
    assert np.abs(stored.astype(np.float64) + offset - survey).max() < 1e-3
    capsys.readouterr()
    assert folder.main(["--root", str(root), "--out", str(tmp_path / "o2"), "--origin", "1,2"]) == 1
    assert capsys.readouterr().err.strip() == "error: --origin '1,2': expected 'header' or three finite numbers X,Y,Z"


def test_folder_rerun_with_another_layout_is_refused(kitti_velodyne, tmp_path, capsys):
    """The same 3000 float32 values are 750 x 4 (kitti) or 1000 x 3 (xyz): a second run with another --layout must
    not rewrite the info file over the first run's points files."""
    from pcmae.data import LidarSweeps

    root = tmp_path / "drive"
    root.mkdir()
    velodyne = np.fromfile(kitti_velodyne / "000000.bin", "<f4").reshape(-1, 4)
    for i in range(2):
        velodyne[i * 750:(i + 1) * 750].tofile(root / f"{i:06d}.bin")  # 3000 values each
    out = tmp_path / "out"
    assert folder.main(["--root", str(root), "--out", str(out), "--layout", "kitti"]) == 0
    first = (out / "folder_infos_all.pkl").read_bytes()
    assert sorted(p.name for p in (out / "points").iterdir()) == ["folder_drive_000000.bin", "folder_drive_000001.bin"]
    capsys.readouterr()
    assert folder.main(["--root", str(root), "--out", str(out), "--layout", "xyz"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: {out} holds a folder conversion with other settings (layout 'kitti' -> 'xyz'; "
                    f"point_columns ['x', 'y', 'z', 'intensity'] -> ['x', 'y', 'z']); pass --overwrite to convert "
                    f"every frame again, or choose another --out")
    assert (out / "folder_infos_all.pkl").read_bytes() == first
    assert len(LidarSweeps(info_file=str(out / "folder_infos_all.pkl"), data_prefix={"pts": "points"})[0]["points"]) \
        == 750
    assert folder.main(["--root", str(root), "--out", str(out), "--layout", "xyz", "--overwrite"]) == 0
    dataset = LidarSweeps(info_file=str(out / "folder_infos_all.pkl"), data_prefix={"pts": "points"})
    np.testing.assert_array_equal(dataset[1]["points"].numpy(), velodyne[750:1500].reshape(-1, 3))
    # an edited pose file is another setting too
    poses = tmp_path / "poses.txt"
    poses.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 1 0 1 0 0 0 0 1 0\n")
    args = ["--root", str(root), "--out", str(tmp_path / "posed"), "--layout", "kitti", "--poses", str(poses)]
    assert folder.main(args) == 0
    poses.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 2 0 1 0 0 0 0 1 0\n")
    capsys.readouterr()
    assert folder.main(args) == 1
    assert "poses_sha256" in capsys.readouterr().err


def test_folder_columns_select_layout_fields(tmp_path):
    nuscenes = shared_data_path("mmdet3d", "tests", "data", "nuscenes", "sweeps", "LIDAR_TOP")
    files = sorted(nuscenes.glob("*.pcd.bin"))
    root = link(files, tmp_path / "nus")
    out = tmp_path / "out"
    assert folder.main(["--root", str(root), "--out", str(out), "--layout", "nuscenes", "--columns", "ring"]) == 0
    entries = load_pickle(out / "folder_infos_all.pkl")["data_list"]
    assert len(entries) == len(files) >= 2
    for path, entry in zip(files, entries):
        raw = np.fromfile(path, "<f4").reshape(-1, 5)
        got = np.fromfile(out / "points" / entry["lidar_points"]["lidar_path"], "<f4").reshape(-1, 4)
        np.testing.assert_array_equal(got, raw[:, [0, 1, 2, 4]])


def test_folder_kitti_odometry_poses_and_errors(kitti_velodyne, tmp_path, capsys):
    root = link([kitti_velodyne / "000000.bin", kitti_velodyne / "000001.bin"], tmp_path / "seq")
    poses = tmp_path / "poses.txt"
    poses.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 5.5 0 1 0 0 0 0 1 -1\n")
    assert folder.main(["--root", str(root), "--out", str(tmp_path / "o1"), "--layout", "kitti",
                        "--poses", str(poses)]) == 0
    second = load_pickle(tmp_path / "o1" / "folder_infos_all.pkl")["data_list"][1]
    np.testing.assert_array_equal(np.array(second["ego2global"])[:3, 3], [5.5, 0, -1])
    assert second["timestamp"] == 0.0

    poses.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n")
    capsys.readouterr()
    assert folder.main(["--root", str(root), "--out", str(tmp_path / "o2"), "--layout", "kitti",
                        "--poses", str(poses)]) == 1
    assert f"{poses}: 1 poses for 2 point-cloud files in {root}" in capsys.readouterr().err
    poses.write_text("1 2 3\n")
    assert folder.main(["--root", str(root), "--out", str(tmp_path / "o2"), "--layout", "kitti",
                        "--poses", str(poses)]) == 1
    assert f"{poses}: line 1 has 3 numbers; expected 8" in capsys.readouterr().err
    assert folder.main(["--root", str(root), "--out", str(tmp_path / "o3")]) == 1
    assert ".bin files need --layout" in capsys.readouterr().err


def test_folder_of_npy_arrays_names_unknown_columns(kitti_velodyne, tmp_path):
    root = tmp_path / "npy"
    root.mkdir()
    velodyne = np.fromfile(kitti_velodyne / "000003.bin", "<f4").reshape(-1, 4)
    np.save(root / "scan_0.npy", velodyne)
    np.save(root / "scan_1.npy", velodyne[::2].astype(np.float64))
    assert folder.main(["--root", str(root), "--out", str(tmp_path / "out")]) == 0
    info = load_pickle(tmp_path / "out" / "folder_infos_all.pkl")
    assert info["metainfo"]["point_columns"] == ["x", "y", "z", "f3"]
    second = info["data_list"][1]["lidar_points"]["lidar_path"]
    got = np.fromfile(tmp_path / "out" / "points" / second, "<f4").reshape(-1, 4)
    np.testing.assert_array_equal(got, velodyne[::2])


def test_folder_truncated_file_is_reported_by_name(kitti_velodyne, tmp_path):
    root = link([kitti_velodyne / "000000.bin"], tmp_path / "seq")
    (root / "000001.bin").write_bytes(b"\0" * 20)  # 20 bytes: not a whole number of 16-byte points
    tasks, columns = folder.build_tasks(root, "kitti", [], None, "seq")
    summary = run_conversion(dataset="folder", split="all", tasks=tasks, convert_one=folder.convert_one,
                             out_dir=tmp_path / "out", columns=columns, on_error="skip")
    assert summary.converted == 1
    (failure,) = summary.failed
    assert failure["index"] == 1 and f"{root / '000001.bin'}: 20 bytes is not a multiple of 16" in failure["error"]


# ------------------------------------------------------------------------------------------------ ROS bags
needs_rosbags = pytest.mark.skipif(importlib.util.find_spec("rosbags") is None,
                                   reason="the bag converter needs the optional package rosbags")

FLOAT32, UINT8, UINT16 = 7, 2, 4
# x y z at 0/4/8, 4 padding bytes, intensity f4 at 16, ring u2 at 20, label u1 at 22, 9 padding bytes -> 32
FIELDS = [("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("intensity", 16, FLOAT32),
          ("ring", 20, UINT16), ("label", 22, UINT8)]
POINT_STEP = 32


def known_points(seed: int, n: int) -> np.ndarray:
    """(n, 5) float32: x, y, z, intensity, ring; row 1 has a NaN x (to be dropped)."""
    rng = np.random.default_rng(seed)
    points = np.c_[rng.normal(0, 20, (n, 3)), rng.uniform(0, 255, n), rng.integers(0, 32, n)].astype(np.float32)
    points[1, 0] = np.nan
    return points


def cloud_bytes(points: np.ndarray, big_endian: bool, width: int, row_padding: int) -> bytes:
    order = ">" if big_endian else "<"
    record = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "label"],
                       "formats": [order + "f4"] * 4 + [order + "u2", "u1"],
                       "offsets": [0, 4, 8, 16, 20, 22], "itemsize": POINT_STEP})
    rows = []
    for start in range(0, len(points), width):
        chunk = points[start:start + width]
        data = np.zeros(len(chunk), record)
        for c, name in enumerate(["x", "y", "z", "intensity", "ring"]):
            data[name] = chunk[:, c]
        data["label"] = 7
        rows.append(data.tobytes() + b"\xab" * row_padding)
    return b"".join(rows)


def make_cloud(ts, points, stamp, big_endian=False, width=None, row_padding=0, fields=FIELDS, ros1=False):
    width = width or len(points)
    header = make_header(ts, stamp, "velodyne", ros1)
    field_type = ts.types["sensor_msgs/msg/PointField"]
    return ts.types["sensor_msgs/msg/PointCloud2"](
        header=header, height=len(points) // width, width=width,
        fields=[field_type(name=n, offset=o, datatype=d, count=1) for n, o, d in fields],
        is_bigendian=big_endian, point_step=POINT_STEP, row_step=width * POINT_STEP + row_padding,
        data=np.frombuffer(cloud_bytes(points, big_endian, width, row_padding), np.uint8), is_dense=False)


def make_header(ts, stamp: float, frame_id: str, ros1: bool):
    time = ts.types["builtin_interfaces/msg/Time"](sec=int(stamp), nanosec=round((stamp % 1) * 1e9))
    header = ts.types["std_msgs/msg/Header"]
    return header(seq=0, stamp=time, frame_id=frame_id) if ros1 else header(stamp=time, frame_id=frame_id)


def make_odometry(ts, stamp, xyz, yaw, ros1):
    t = ts.types
    pose = t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=xyz[0], y=xyz[1], z=xyz[2]),
                                       orientation=t["geometry_msgs/msg/Quaternion"](
                                           x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
    zero = t["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
    return t["nav_msgs/msg/Odometry"](
        header=make_header(ts, stamp, "odom", ros1), child_frame_id="velodyne",
        pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
        twist=t["geometry_msgs/msg/TwistWithCovariance"](twist=t["geometry_msgs/msg/Twist"](linear=zero, angular=zero),
                                                          covariance=np.zeros(36)))


def write_bag(path: Path, ros1: bool, messages) -> Path:
    """messages: [(topic, msgtype, log_time_s, message)]."""
    from rosbags.rosbag1 import Writer as Writer1
    from rosbags.rosbag2 import Writer as Writer2

    ts = typestore(ros1)
    writer = Writer1(path) if ros1 else Writer2(path, version=9)
    with writer:
        connections = {}
        for topic, msgtype, log_time, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            data = ts.serialize_ros1(msg, msgtype) if ros1 else ts.serialize_cdr(msg, msgtype)
            writer.write(connections[topic], int(round(log_time * 1e9)), data)
    return path


def typestore(ros1: bool):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)


CLOUDS = [  # (seed, points, stamp s, big-endian, width, row padding): a flat cloud, an organised 2-row cloud
    (0, 10, 1700000000.25, False, None, 0),   # with 8 padding bytes after each row, and a big-endian cloud
    (1, 12, 1700000000.35, False, 6, 8),
    (2, 7, 1700000000.45, True, None, 0),
]


def cloud_messages(ros1: bool):
    ts = typestore(ros1)
    messages = []
    for seed, n, stamp, big, width, pad in CLOUDS:
        msg = make_cloud(ts, known_points(seed, n), stamp, big, width, pad, ros1=ros1)
        messages.append(("/points", rosbag.POINTCLOUD2, stamp + 0.01, msg))
        header = make_header(ts, stamp, "x", ros1)
        messages.append(("/other", "std_msgs/msg/Header", stamp + 0.02, header))
    return messages


@needs_rosbags
@pytest.mark.parametrize("ros1", [True, False], ids=["ros1", "ros2"])
def test_bag_points_round_trip(tmp_path, ros1, capsys):
    bag = write_bag(tmp_path / ("drive.bag" if ros1 else "drive"), ros1, cloud_messages(ros1))
    out = tmp_path / "out"
    assert rosbag.main(["--root", str(bag), "--out", str(out), "--topic", "/points"]) == 0
    info = load_pickle(out / "rosbag_infos_all.pkl")
    assert info["metainfo"]["point_columns"] == ["x", "y", "z", "intensity"]
    assert info["metainfo"]["zero_filled_columns"] == []
    entries = info["data_list"]
    assert [(e["scene"], e["frame_index"]) for e in entries] == [("drive", 0), ("drive", 1), ("drive", 2)]
    for entry, (seed, n, stamp, *_) in zip(entries, CLOUDS):
        expected = np.delete(known_points(seed, n), 1, axis=0)[:, :4]  # the NaN point is dropped
        got = np.fromfile(out / "points" / entry["lidar_points"]["lidar_path"], "<f4").reshape(-1, 4)
        np.testing.assert_array_equal(got, expected)
        assert entry["timestamp"] == pytest.approx(stamp, abs=1e-6)
        assert entry["lidar_points"]["frame_id"] == "velodyne"
    assert rosbag.main(["--root", str(bag), "--out", str(out), "--topic", "/points"]) == 0  # again: nothing to do
    assert "converted 0, already done 3" in capsys.readouterr().out

    assert rosbag.main(["--root", str(bag), "--out", str(tmp_path / "nus"), "--topic", "/points",
                        "--layout", "nuscenes", "--workers", "2"]) == 0
    entry = load_pickle(tmp_path / "nus" / "rosbag_infos_all.pkl")["data_list"][1]
    got = np.fromfile(tmp_path / "nus" / "points" / entry["lidar_points"]["lidar_path"], "<f4").reshape(-1, 5)
    np.testing.assert_array_equal(got, np.delete(known_points(1, 12), 1, axis=0))


@needs_rosbags
def test_bag_cloud_without_intensity_gets_zeros(tmp_path):
    ts = typestore(False)
    xyz_only = [f for f in FIELDS if f[0] in "xyz"]
    points = known_points(5, 6)
    bag = write_bag(tmp_path / "bag", False,
                    [("/points", rosbag.POINTCLOUD2, 1.0, make_cloud(ts, points, 1.0, fields=xyz_only))])
    assert rosbag.main(["--root", str(bag), "--out", str(tmp_path / "out"), "--topic", "/points"]) == 0
    info = load_pickle(tmp_path / "out" / "rosbag_infos_all.pkl")
    assert info["metainfo"]["zero_filled_columns"] == ["intensity"]
    got = np.fromfile(tmp_path / "out" / "points" / info["data_list"][0]["lidar_points"]["lidar_path"], "<f4")
    expected = np.delete(points, 1, axis=0)
    np.testing.assert_array_equal(got.reshape(-1, 4), np.c_[expected[:, :3], np.zeros(len(expected), np.float32)])


@needs_rosbags
@pytest.mark.parametrize("ros1", [True, False], ids=["ros1", "ros2"])
def test_bag_without_the_topic_is_a_clear_error(tmp_path, capsys, ros1):
    bag = write_bag(tmp_path / ("b.bag" if ros1 else "b"), ros1, cloud_messages(ros1))
    assert rosbag.main(["--root", str(bag), "--out", str(tmp_path / "out"), "--topic", "/velodyne_points"]) == 1
    err = capsys.readouterr().err
    assert f"{bag}: no topic '/velodyne_points' in the bag (topics: /other [std_msgs/msg/Header], " \
           f"/points [sensor_msgs/msg/PointCloud2])" in err
    assert rosbag.main(["--root", str(bag), "--out", str(tmp_path / "out"), "--topic", "/other"]) == 1
    assert "topic '/other' carries std_msgs/msg/Header, expected sensor_msgs/msg/PointCloud2" in capsys.readouterr().err


@needs_rosbags
def test_unreadable_bag_is_a_clear_error(tmp_path, capsys):
    bag = tmp_path / "broken.bag"
    bag.write_bytes(b"#ROSBAG V2.0\n" + b"\x00" * 7)  # a ROS1 bag cut short after its magic line
    assert rosbag.main(["--root", str(bag), "--out", str(tmp_path / "out"), "--topic", "/points"]) == 1
    assert f"error: {bag}: cannot read the bag (" in capsys.readouterr().err


@needs_rosbags
def test_bag_poses_from_odometry(tmp_path):
    ts = typestore(False)
    messages = [("/odom", rosbag.ODOMETRY, t, make_odometry(ts, t, (t - 10, 2.0, 0.5), yaw, False))
                for t, yaw in ((10.0, 0.0), (10.5, math.pi / 2), (11.0, math.pi))]
    for i, t in enumerate((10.02, 10.46, 12.0)):  # the last cloud is 1 s from any odometry
        messages.append(("/points", rosbag.POINTCLOUD2, t, make_cloud(ts, known_points(i, 4), t)))
    bag = write_bag(tmp_path / "odom_bag", False, sorted(messages, key=lambda m: m[2]))
    tasks, meta = rosbag.bag_tasks(bag, "/points", ("x", "y", "z", "intensity"), "/odom", 0.1)
    summary = run_conversion(dataset="rosbag", split="all", tasks=tasks, convert_one=rosbag.convert_one,
                             out_dir=tmp_path / "out", columns=("x", "y", "z", "intensity"), metainfo=meta,
                             on_error="skip")
    assert summary.converted == 2
    assert summary.failed[0]["index"] == 2 and "nearest /odom message is 1.000 s away" in summary.failed[0]["error"]
    entries = load_pickle(summary.info_file)["data_list"]
    np.testing.assert_allclose(entries[0]["ego2global"], [[1, 0, 0, 0], [0, 1, 0, 2], [0, 0, 1, 0.5], [0, 0, 0, 1]],
                               atol=1e-12)
    np.testing.assert_allclose(entries[1]["ego2global"], [[0, -1, 0, 0.5], [1, 0, 0, 2], [0, 0, 1, 0.5], [0, 0, 0, 1]],
                               atol=1e-12)


@needs_rosbags
def test_decode_pointcloud2_rejects_inconsistent_messages():
    ts = typestore(False)
    msg = make_cloud(ts, known_points(0, 4), 1.0)
    msg.data = msg.data[:-1]
    with pytest.raises(ConversionError, match=r"cloud 7: data has 127 bytes, 1 rows of 4 points need 128"):
        rosbag.decode_pointcloud2(msg, ("x", "y", "z"), "cloud 7")
    msg = make_cloud(ts, known_points(0, 4), 1.0, fields=[f for f in FIELDS if f[0] != "z"])
    with pytest.raises(ConversionError, match="cloud 7: no 'z' field"):
        rosbag.decode_pointcloud2(msg, ("x", "y", "z"), "cloud 7")


def test_missing_rosbags_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "rosbags.highlevel", None)
    with pytest.raises(ImportError, match="pip install rosbags"):
        rosbag._any_reader()


@needs_rosbags
@pytest.mark.parametrize("ros1", [True, False], ids=["ros1", "ros2"])
def test_bag_topic_as_a_stream_of_clouds(tmp_path, ros1):
    """data_converters.rosbag.iter_clouds (tools/tta.py --bag): the clouds of one topic in log order, exact."""
    bag = write_bag(tmp_path / ("drive.bag" if ros1 else "drive"), ros1, cloud_messages(ros1))
    clouds = list(rosbag.iter_clouds(bag, "/points"))
    assert [i for i, _ in clouds] == [0, 1, 2]
    for (_, cloud), (seed, n, *_rest) in zip(clouds, CLOUDS):
        expected = known_points(seed, n)[:, :3]
        np.testing.assert_array_equal(cloud, np.delete(expected, 1, axis=0))  # row 1's NaN x is dropped
    with pytest.raises(rosbag.ConversionError, match="no topic '/lidar'"):
        list(rosbag.iter_clouds(bag, "/lidar"))
