"""Converters of the real consecutive sweeps in the shared data: Argoverse 2 (.feather + city poses), Ouster
(.osf / .pcap + the KITTI pose file shipped with them), and --estimate-poses (KISS-ICP) on the folder, ROS-bag and
Ouster converters, checked against the recorded poses. Bad inputs (cut files, a sweep without a pose row, a
non-rigid pose) must end in one line naming the file."""
from __future__ import annotations

import importlib.util
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_converters.odometry import relative_errors
from tests.shared_data import shared_data_path

AV2_LOG = ("av2-api", "tests", "unit", "test_data", "sensor", "val", "7fab2350-7eaf-3b7e-a39d-6937a4c1bede")
OUSTER_STEM = "OS-1-128_v2.3.0_1024x10_lb_n3"
# KISS-ICP (defaults of data_converters.odometry) on the 3 lb_n3 scans against the shipped KITTI poses, measured
# with benchmarks/odometry.py: 0.012 / 0.022 m and 0.020 / 0.037 deg per scan pair; the scans move ~0.25 m each
MOTION_TOLERANCE_M, ROTATION_TOLERANCE_DEG = 0.05, 0.1

needs_pyarrow = pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                                   reason="the AV2 converter needs the optional package pyarrow")
needs_ouster = pytest.mark.skipif(importlib.util.find_spec("ouster") is None or
                                  importlib.util.find_spec("ouster.sdk") is None,
                                  reason="the Ouster converter needs ouster-sdk (pip install --no-deps ouster-sdk)")
needs_kiss_icp = pytest.mark.skipif(importlib.util.find_spec("kiss_icp") is None,
                                    reason="--estimate-poses needs the optional package kiss-icp")


def load_pickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def stored_points(out: Path, entry: dict, columns: int) -> np.ndarray:
    return np.fromfile(out / "points" / entry["lidar_points"]["lidar_path"], "<f4").reshape(-1, columns)


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def kitti_poses(path: Path) -> np.ndarray:
    """(T, 4, 4) of a KITTI pose file, parsed here independently of data_converters.folder."""
    rows = np.loadtxt(path, ndmin=2).reshape(-1, 3, 4)
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3] = rows
    return poses


def assert_motion_matches(estimated: np.ndarray, recorded: np.ndarray) -> None:
    errors = np.asarray(relative_errors(estimated, recorded))
    assert errors.shape == (len(recorded) - 1, 2)
    assert (errors[:, 0] < MOTION_TOLERANCE_M).all() and (errors[:, 1] < ROTATION_TOLERANCE_DEG).all(), errors
    np.testing.assert_allclose(estimated[0], np.eye(4), atol=1e-12)  # frame 0 is the odometry origin


# ------------------------------------------------------------------------------------------------ Argoverse 2
@pytest.fixture(scope="module")
def av2_log() -> Path:
    return shared_data_path(*AV2_LOG)


def city_pose(log: Path, stamp: int) -> np.ndarray:
    """ego -> city at ``stamp``, from the feather through scipy's quaternion convention (scalar last)."""
    import pyarrow.feather as feather
    from scipy.spatial.transform import Rotation

    table = feather.read_table(log / "city_SE3_egovehicle.feather").to_pandas()
    (row,) = table[table["timestamp_ns"] == stamp].itertuples()
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat([row.qx, row.qy, row.qz, row.qw]).as_matrix()
    pose[:3, 3] = [row.tx_m, row.ty_m, row.tz_m]
    return pose


@needs_pyarrow
def test_av2_log_points_poses_order_and_resume(av2_log, tmp_path, capsys):
    import pyarrow.feather as feather

    from data_converters import av2
    from pcmae.data import LidarSweeps

    out = tmp_path / "out"
    assert av2.main(["--root", str(av2_log), "--out", str(out)]) == 0
    info = load_pickle(out / "av2_infos_val.pkl")  # the split is the folder holding the log
    assert info["metainfo"]["point_columns"] == ["x", "y", "z", "intensity", "laser_number"]
    entries = info["data_list"]
    sweeps = sorted((av2_log / "sensors" / "lidar").glob("*.feather"), key=lambda p: int(p.stem))
    assert len(entries) == len(sweeps) == 2
    for index, (entry, sweep) in enumerate(zip(entries, sweeps)):
        assert (entry["scene"], entry["frame_index"], entry["timestamp_ns"]) == (av2_log.name, index, int(sweep.stem))
        assert entry["timestamp"] == pytest.approx(int(sweep.stem) * 1e-9, abs=1e-6)
        table = feather.read_table(sweep)
        expected = np.column_stack([table[c].to_numpy().astype(np.float32)
                                    for c in ("x", "y", "z", "intensity", "laser_number")])
        np.testing.assert_array_equal(stored_points(out, entry, 5), expected)
        np.testing.assert_allclose(entry["lidar2global"], city_pose(av2_log, int(sweep.stem)), atol=1e-9)
        assert entry["ego2global"] == entry["lidar2global"] and entry["lidar_points"]["lidar2ego"] == np.eye(4).tolist()
    assert [len(stored_points(out, e, 5)) for e in entries] == [99229, 99466]  # as counted in the data README
    assert entries[1]["timestamp"] - entries[0]["timestamp"] == pytest.approx(0.1, abs=0.01)  # 10 Hz
    # the log's own sweep-to-sweep motion (ego_motion.npz: sweep 0 in sweep 1's frame) agrees with the city poses
    first, second = (np.asarray(e["lidar2global"]) for e in entries)
    ego_motion = np.load(av2_log / "ego_motion.npz")["ego_motion"][0]
    np.testing.assert_allclose(np.linalg.inv(second) @ first, ego_motion, atol=2e-3)
    # the sweep dataset reads the sequence fields
    dataset = LidarSweeps(info_file=str(out / "av2_infos_val.pkl"), data_prefix={"pts": "points"})
    item = dataset[1]
    assert (item["scene"], item["frame_index"]) == (av2_log.name, 1)
    np.testing.assert_allclose(np.asarray(item["lidar2global"]), second)
    # a second run converts nothing and rewrites no points
    written = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    capsys.readouterr()
    assert av2.main(["--root", str(av2_log.parent), "--out", str(out)]) == 0  # the split folder: same log
    assert "converted 0, already done 2" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()} == written


def copy_av2_log(log: Path, target: Path) -> Path:
    """A log of symlinks to the real files (replace the ones a test damages)."""
    (target / "sensors" / "lidar").mkdir(parents=True)
    for path in (log / "sensors" / "lidar").glob("*.feather"):
        (target / "sensors" / "lidar" / path.name).symlink_to(path)
    (target / "city_SE3_egovehicle.feather").symlink_to(log / "city_SE3_egovehicle.feather")
    return target


@needs_pyarrow
def test_av2_cut_sweep_and_missing_pose_row_are_named(av2_log, tmp_path, capsys):
    import pyarrow.compute as pc
    import pyarrow.feather as feather

    from data_converters import av2

    log = copy_av2_log(av2_log, tmp_path / "val" / av2_log.name)
    first, second = sorted((log / "sensors" / "lidar").iterdir(), key=lambda p: int(p.stem))
    data = second.read_bytes()
    second.unlink()
    second.write_bytes(data[: len(data) // 2])
    assert av2.main(["--root", str(log), "--out", str(tmp_path / "o1")]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: {second} (record 1): ") and "unreadable .feather file" in line
    assert not (tmp_path / "o1" / "av2_infos_val.pkl").exists()

    second.unlink()
    second.symlink_to(av2_log / "sensors" / "lidar" / second.name)
    poses = feather.read_table(av2_log / "city_SE3_egovehicle.feather")
    (log / "city_SE3_egovehicle.feather").unlink()
    feather.write_feather(poses.filter(pc.not_equal(poses["timestamp_ns"], int(second.stem))),
                          str(log / "city_SE3_egovehicle.feather"))
    assert av2.main(["--root", str(log), "--out", str(tmp_path / "o2"), "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    info = load_pickle(tmp_path / "o2" / "av2_infos_val.pkl")
    assert [e["timestamp_ns"] for e in info["data_list"]] == [int(first.stem)]
    (failure,) = info["metainfo"]["failed"]
    assert failure["source"] == str(second) and f"no pose row at timestamp_ns {second.stem}" in failure["error"]
    assert "exact match required; nearest pose row is" in failure["error"] and "  failed: " in out
    assert av2.main(["--root", str(log), "--out", str(tmp_path / "o3")]) == 1
    assert one_error_line(capsys).startswith(f"error: {second} (record 1): no pose row at timestamp_ns")


# ------------------------------------------------------------------------------------------------ Ouster
@pytest.fixture(scope="module")
def ouster_files():
    tests = shared_data_path("ouster-sdk", "tests")
    files = {"osf": tests / "osfs" / f"{OUSTER_STEM}.osf", "pcap": tests / "pcaps" / f"{OUSTER_STEM}.pcap",
             "json": tests / "pcaps" / "OS-1-128_v2.3.0_1024x10.json",
             "poses": tests / "pcaps" / f"{OUSTER_STEM}_poses_kitti.txt"}
    for path in files.values():
        if not path.is_file():
            pytest.skip(f"real sample data not found at {path}")
    return files


def direct_ouster_points(path: Path):
    """[(frame_id, (N, 5) x, y, z, reflectivity, ring)] of every scan, read with ouster-sdk here."""
    from ouster.sdk import core, open_source

    source = open_source(str(path))
    lut = core.XYZLut(source.sensor_info[0])
    scans = []
    for (scan,) in source:
        valid = scan.field(core.ChanField.RANGE) > 0
        rows = np.nonzero(valid)[0]
        scans.append((int(scan.frame_id), np.column_stack(
            [lut(scan)[valid], scan.field(core.ChanField.REFLECTIVITY)[valid], rows]).astype(np.float32)))
    return scans


@needs_ouster
def test_ouster_osf_and_pcap_points_poses_and_resume(ouster_files, tmp_path, capsys):
    from data_converters import ouster

    results = {}
    for kind in ("osf", "pcap"):
        out = tmp_path / kind
        assert ouster.main(["--root", str(ouster_files[kind]), "--out", str(out), "--poses",
                            str(ouster_files["poses"])]) == 0  # the pcap finds its .json by name
        info = load_pickle(out / "ouster_infos_all.pkl")
        assert info["metainfo"]["point_columns"] == ["x", "y", "z", "reflectivity", "ring"]
        results[kind] = (out, info["data_list"])
    direct = direct_ouster_points(ouster_files["osf"])
    recorded = kitti_poses(ouster_files["poses"])
    (osf_out, osf_entries), (pcap_out, pcap_entries) = results["osf"], results["pcap"]
    assert len(osf_entries) == len(pcap_entries) == len(direct) == len(recorded) == 3
    for index, (entry, other, (frame_id, expected)) in enumerate(zip(osf_entries, pcap_entries, direct)):
        assert (entry["scene"], entry["frame_index"]) == (OUSTER_STEM, index)
        assert entry["lidar_points"]["frame_id"] == frame_id
        points = stored_points(osf_out, entry, 5)
        np.testing.assert_array_equal(points, expected)
        assert 100_000 < len(points) < 128 * 1024 and (np.linalg.norm(points[:, :3], axis=1) > 0).all()
        np.testing.assert_array_equal(stored_points(pcap_out, other, 5), points)  # the same recording twice
        assert other["timestamp"] == entry["timestamp"]
        np.testing.assert_allclose(entry["lidar2global"], recorded[index], atol=1e-12)
    stamps = [e["timestamp"] for e in osf_entries]
    np.testing.assert_allclose(np.diff(stamps), 0.1, atol=0.005)  # 1024x10: 10 scans a second
    capsys.readouterr()
    assert ouster.main(["--root", str(ouster_files["osf"]), "--out", str(osf_out), "--poses",
                        str(ouster_files["poses"])]) == 0
    assert "converted 0, already done 3" in capsys.readouterr().out


@needs_ouster
def test_ouster_time_and_column_values(ouster_files, tmp_path):
    from data_converters import ouster

    out = tmp_path / "out"
    assert ouster.main(["--root", str(ouster_files["osf"]), "--out", str(out), "--limit", "1",
                        "--columns", "near_ir", "column", "time"]) == 0
    (entry,) = load_pickle(out / "ouster_infos_all.pkl")["data_list"]
    points = stored_points(out, entry, 6)
    column, time = points[:, 4], points[:, 5]
    assert column.min() >= 0 and column.max() <= 1023 and time.min() == 0.0
    # one scan lasts 0.1 s: the column times grow with the measurement id, ~97.7 us apart
    order = np.argsort(column, kind="stable")
    assert (np.diff(time[order]) >= 0).all()
    assert float(time.max()) == pytest.approx(0.1 * column.max() / 1024, rel=0.01)
    np.testing.assert_allclose(entry["lidar2global"], np.eye(4))  # no poses given


@needs_ouster
def test_ouster_bad_inputs_are_one_line(ouster_files, tmp_path, capsys):
    from data_converters import ouster

    cut = tmp_path / "rec"
    cut.mkdir()
    shutil.copy(ouster_files["json"], cut / ouster_files["json"].name)
    pcap = cut / f"{OUSTER_STEM}_cut.pcap"
    pcap.write_bytes(ouster_files["pcap"].read_bytes()[:1_000_000])  # the recording stops inside scan 1
    assert ouster.main(["--root", str(pcap), "--out", str(tmp_path / "o1")]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: {pcap} (record 1): scan 1 (frame_id ") and "is incomplete: " in line
    assert ouster.main(["--root", str(pcap), "--out", str(tmp_path / "o2"), "--on-error", "skip"]) == 0
    assert len(load_pickle(tmp_path / "o2" / "ouster_infos_all.pkl")["data_list"]) == 1

    osf = tmp_path / "cut.osf"
    osf.write_bytes(ouster_files["osf"].read_bytes()[:300_000])
    assert ouster.main(["--root", str(osf), "--out", str(tmp_path / "o3")]) == 1
    assert one_error_line(capsys) == f"error: {osf}: damaged or truncated OSF file (no metadata chunk at its end)"

    lines = ouster_files["poses"].read_text().splitlines()
    values = lines[1].split()
    values[0] = repr(float(values[0]) * 1.2)  # R[0, 0] scaled: not a rotation
    poses = tmp_path / "poses.txt"
    poses.write_text("\n".join([lines[0], " ".join(values), lines[2]]) + "\n")
    assert ouster.main(["--root", str(ouster_files["osf"]), "--out", str(tmp_path / "o4"),
                        "--poses", str(poses)]) == 1
    assert one_error_line(capsys).startswith(f"error: {poses}: line 2 is not a rigid transform (|R^T R - I| = ")
    poses.write_text("\n".join(lines[:2]) + "\n")
    assert ouster.main(["--root", str(ouster_files["osf"]), "--out", str(tmp_path / "o4"),
                        "--poses", str(poses)]) == 1
    assert one_error_line(capsys) == f"error: {poses}: 2 poses for 3 scans in {ouster_files['osf']}"
    assert ouster.main(["--root", str(ouster_files["osf"]), "--out", str(tmp_path / "o4"), "--poses", str(poses),
                        "--estimate-poses"]) == 1
    assert one_error_line(capsys) == "error: --poses and --estimate-poses exclude each other"
    assert ouster.main(["--root", str(ouster_files["osf"]), "--out", str(tmp_path / "o4"),
                        "--columns", "signal"]) == 1  # the low-bandwidth profile has no SIGNAL field
    assert "scans have no signal field (fields: near_ir, reflectivity)" in one_error_line(capsys)


# ------------------------------------------------------------------------------------------------ --estimate-poses
@needs_ouster
@needs_kiss_icp
def test_ouster_estimate_poses_match_recorded_and_are_kept(ouster_files, tmp_path, capsys):
    from data_converters import ouster

    out = tmp_path / "out"
    args = ["--root", str(ouster_files["osf"]), "--out", str(out), "--estimate-poses"]
    assert ouster.main(args) == 0
    assert f"odometry (KISS-ICP): 3 frames of {OUSTER_STEM}" in capsys.readouterr().out
    entries = load_pickle(out / "ouster_infos_all.pkl")["data_list"]
    estimated = np.asarray([e["lidar2global"] for e in entries])
    assert_motion_matches(estimated, kitti_poses(ouster_files["poses"]))
    assert [e["ego2global"] for e in entries] == [e["lidar2global"] for e in entries]
    # the poses are kept: a re-run reads them; without the file odometry gives the same poses bit for bit
    poses_file = out / "ouster_odometry.json"
    kept = poses_file.read_bytes()
    assert ouster.main(args) == 0
    assert "odometry" not in capsys.readouterr().out
    poses_file.unlink()
    assert ouster.main(args + ["--overwrite"]) == 0
    assert poses_file.read_bytes() == kept
    again = np.asarray([e["lidar2global"] for e in load_pickle(out / "ouster_infos_all.pkl")["data_list"]])
    np.testing.assert_array_equal(again, estimated)
    capsys.readouterr()
    assert ouster.main(args + ["--odometry-min-range", "1"]) == 1  # other odometry settings: refused
    assert "other settings (odometry " in one_error_line(capsys)


@pytest.fixture(scope="module")
def ouster_scans(ouster_files):
    """The 3 real scans as (N, 5) float32 x, y, z, reflectivity, ring (read with ouster-sdk)."""
    if importlib.util.find_spec("ouster") is None:
        pytest.skip("needs ouster-sdk (pip install --no-deps ouster-sdk) to read the scans")
    return [points for _, points in direct_ouster_points(ouster_files["osf"])]


@needs_kiss_icp
def test_folder_estimate_poses_on_real_scans(ouster_scans, ouster_files, tmp_path, capsys):
    from data_converters import folder

    root = tmp_path / "scans"
    root.mkdir()
    for index, points in enumerate(ouster_scans):
        np.save(root / f"{index:06d}.npy", points[:, :4])
    (root / "000003.npy").write_bytes(b"\x93NUMPY cut")  # a damaged 4th file
    out = tmp_path / "out"
    assert folder.main(["--root", str(root), "--out", str(out), "--estimate-poses"]) == 1
    assert one_error_line(capsys).startswith(f"error: {root / '000003.npy'} (record 3): ")
    assert folder.main(["--root", str(root), "--out", str(out), "--estimate-poses", "--on-error", "skip"]) == 0
    info = load_pickle(out / "folder_infos_all.pkl")
    assert [f["index"] for f in info["metainfo"]["failed"]] == [3]
    estimated = np.asarray([e["lidar2global"] for e in info["data_list"]])
    assert_motion_matches(estimated, kitti_poses(ouster_files["poses"]))
    assert [e["frame_index"] for e in info["data_list"]] == [0, 1, 2]
    # the damaged file repaired: odometry now sees 4 frames; the 3 converted ones keep their poses (KISS-ICP is
    # causal), so the run only adds frame 3 ...
    capsys.readouterr()
    np.save(root / "000003.npy", ouster_scans[2][:, :4])
    assert folder.main(["--root", str(root), "--out", str(out), "--estimate-poses", "--on-error", "skip"]) == 0
    assert "converted 1, already done 3" in capsys.readouterr().out
    info = load_pickle(out / "folder_infos_all.pkl")
    np.testing.assert_array_equal([e["lidar2global"] for e in info["data_list"][:3]], estimated)
    # ... but a changed source that moves the poses of converted frames is refused (one scene, one trajectory)
    np.save(root / "000001.npy", ouster_scans[0][:, :4])
    assert folder.main(["--root", str(root), "--out", str(out), "--estimate-poses"]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: {out / 'folder_odometry.json'}: odometry now gives other poses for ")
    assert line.endswith("pass --overwrite to convert every frame with the new poses")
    assert folder.main(["--root", str(root), "--out", str(out), "--estimate-poses", "--overwrite"]) == 0
    assert folder.main(["--root", str(root), "--out", str(tmp_path / "o2"), "--estimate-poses", "--poses",
                        str(ouster_files["poses"])]) == 1
    assert one_error_line(capsys) == "error: --poses and --estimate-poses exclude each other"


@needs_kiss_icp
def test_rosbag_estimate_poses_on_real_scans(ouster_scans, ouster_files, tmp_path):
    pytest.importorskip("rosbags", reason="the bag converter needs the optional package rosbags")
    from data_converters import rosbag
    from tests.test_converter_folder_rosbag import make_cloud, typestore, write_bag

    ts = typestore(False)
    messages = [("/points", rosbag.POINTCLOUD2, 100.0 + 0.1 * i, make_cloud(ts, points, 100.0 + 0.1 * i))
                for i, points in enumerate(ouster_scans)]
    bag = write_bag(tmp_path / "drive", False, messages)
    out = tmp_path / "out"
    assert rosbag.main(["--root", str(bag), "--out", str(out), "--topic", "/points", "--estimate-poses"]) == 0
    entries = load_pickle(out / "rosbag_infos_all.pkl")["data_list"]
    assert [(e["scene"], e["frame_index"]) for e in entries] == [("drive", 0), ("drive", 1), ("drive", 2)]
    assert_motion_matches(np.asarray([e["lidar2global"] for e in entries]), kitti_poses(ouster_files["poses"]))
    assert [e["timestamp"] for e in entries] == pytest.approx([100.0, 100.1, 100.2])


def test_missing_kiss_icp_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from data_converters import folder

    kitti = shared_data_path("openpcdet", "data", "kitti", "training", "velodyne")
    root = tmp_path / "seq"
    root.mkdir()
    (root / "000000.bin").symlink_to(kitti / "000000.bin")
    monkeypatch.setitem(__import__("sys").modules, "kiss_icp.kiss_icp", None)
    assert folder.main(["--root", str(root), "--out", str(tmp_path / "out"), "--layout", "kitti",
                        "--estimate-poses"]) == 1
    assert one_error_line(capsys) == ("error: --estimate-poses needs the optional package 'kiss-icp': "
                                      "pip install kiss-icp")
