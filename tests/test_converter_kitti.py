"""KITTI converter on the real 5-frame subset (read in place) and on a tiny raw drive written here.

Independent references: OpenPCDet's gt_database crops (points inside each label box, box-centred, taken with
OpenPCDet's 0.01 m x/y margin) and mmdet3d's own v2 info fixtures for KITTI frames 000000 and 000008.
"""
from __future__ import annotations

import calendar
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from data_converters import kitti
from data_converters.common import ConversionError, FrameTask
from tests.mmdet3d_helpers import build_mmdet3d_dataset, import_mmdet3d_datasets
from tests.shared_data import shared_data_path

REPO = Path(__file__).resolve().parents[1]
EARTH_RADIUS_M = 6378137.0


@pytest.fixture(scope="module")
def kitti_root() -> Path:
    return shared_data_path("openpcdet", "data", "kitti")


@pytest.fixture(scope="module")
def converted(kitti_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("kitti_out")
    assert kitti.main(["--root", str(kitti_root), "--out", str(out)]) == 0
    with open(out / "kitti_infos_training.pkl", "rb") as f:
        return out, pickle.load(f)


def load_pickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


# ------------------------------------------------------------------------------------------------ real frames
def test_num_lidar_pts_agrees_with_openpcdet_gt_database(kitti_root, converted):
    _, info = converted
    entries = {e["token"]: e for e in info["data_list"]}
    crops = sorted((kitti_root / "gt_database").glob("*.bin"))
    assert len(crops) == 9
    for crop_file in crops:  # <frame>_<Class>_<label line>.bin
        frame_id, name, line = crop_file.stem.split("_")
        crop = np.fromfile(crop_file, dtype="<f4").reshape(-1, 4)
        instance = entries[frame_id]["instances"][int(line)]
        assert kitti.CLASSES[instance["bbox_label_3d"]] == name
        calib = kitti.read_object_calib(kitti_root / "training" / "calib" / f"{frame_id}.txt")
        box = kitti.camera_boxes_to_lidar(np.array([instance["bbox_3d"]]), calib["R0_rect"] @ calib["Tr_velo_to_cam"])
        velodyne = np.fromfile(kitti_root / "training" / "velodyne" / f"{frame_id}.bin", "<f4").reshape(-1, 4)
        # OpenPCDet cut its crops with a 0.01 m x/y margin: same rule, same count
        assert kitti.count_points_in_boxes(velodyne, box, margin=0.01)[0] == len(crop), crop_file.name
        # the converter's count (no margin, as mmdet3d) misses only points of that 1 cm rim
        assert 0 <= len(crop) - instance["num_lidar_pts"] <= 6, crop_file.name
        # crops are centred on the box's gravity centre: shifting them back gives velodyne points
        centre = box[0, :3] + (0, 0, box[0, 5] / 2)
        shifted = crop[:, :3].astype(np.float64) + centre
        distance, _ = cKDTree(velodyne[:, :3]).query(shifted)
        assert distance.max() < 1e-4, crop_file.name


def test_instances_match_mmdet3d_fixture_for_frame_000000(converted):
    fixture = load_pickle(shared_data_path("mmdet3d", "tests", "data", "kitti", "kitti_infos_train.pkl"))
    expected = fixture["data_list"][0]
    _, info = converted
    ours = next(e for e in info["data_list"] if e["token"] == "000000")
    assert ours["sample_idx"] == expected["sample_idx"] == 0
    assert info["metainfo"]["categories"] == fixture["metainfo"]["categories"]
    assert len(ours["instances"]) == len(expected["instances"]) == 1
    got, want = ours["instances"][0], expected["instances"][0]
    for key, value in want.items():
        if isinstance(value, (list, float)):
            np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-5, err_msg=key)
        else:
            assert got[key] == value, key
    assert got["num_lidar_pts"] == 377  # mmdet3d's count on the full-resolution frame
    for camera, fields in expected["images"].items():
        if camera == "R0_rect":
            np.testing.assert_allclose(ours["images"]["R0_rect"], fields, atol=1e-6)
            continue
        for key, value in fields.items():
            if key in ("img_path", "height", "width"):
                assert ours["images"][camera][key] == value, (camera, key)
            else:  # the fixture's matrices went through float32
                np.testing.assert_allclose(ours["images"][camera][key], value, rtol=1e-5, atol=1e-4,
                                           err_msg=f"{camera}.{key}")
    for key in ("Tr_velo_to_cam", "Tr_imu_to_velo"):
        np.testing.assert_allclose(ours["lidar_points"][key], expected["lidar_points"][key], atol=1e-6)
    assert ours["lidar_points"]["lidar_path"] == "kitti_training_000000.bin"
    assert ours["lidar_points"]["num_pts_feats"] == expected["lidar_points"]["num_pts_feats"] == 4


def test_box_counts_and_difficulty_match_mmdet3d_demo_frame_000008():
    """Frame 000008 is not in the raw subset; mmdet3d's demo ships its image-cropped sweep and v2 info."""
    demo = shared_data_path("mmdet3d", "demo", "data", "kitti")
    entry = load_pickle(demo / "000008.pkl")["data_list"][0]
    points = np.fromfile(demo / "000008.bin", "<f4").reshape(-1, 4)
    cared = [i for i in entry["instances"] if i["bbox_label_3d"] != -1]
    boxes = kitti.camera_boxes_to_lidar(np.array([i["bbox_3d"] for i in cared]),
                                        np.array(entry["images"]["CAM2"]["lidar2cam"]))
    assert kitti.count_points_in_boxes(points, boxes).tolist() == [i["num_lidar_pts"] for i in cared]
    for instance in entry["instances"]:
        if instance["bbox_label_3d"] != -1:
            assert kitti.difficulty(instance["bbox"], instance["occluded"], instance["truncated"]) \
                == instance["difficulty"], instance


def test_frames_read_back_with_lidar_sweeps(kitti_root, converted):
    from pcmae.data import LidarSweeps

    out, info = converted
    assert [e["token"] for e in info["data_list"]] == ["000000", "000001", "000002", "000003", "000004"]
    dataset = LidarSweeps(info_file=str(out / "kitti_infos_training.pkl"), data_prefix={"pts": "points"})
    assert len(dataset) == 5
    for i, item in enumerate(dataset):
        velodyne = np.fromfile(kitti_root / "training" / "velodyne" / f"{i:06d}.bin", "<f4").reshape(-1, 4)
        np.testing.assert_array_equal(item["points"].numpy(), velodyne)
        np.testing.assert_array_equal(item["pose"].numpy(), np.eye(4))
    entry = info["data_list"][1]
    assert (entry["scene"], entry["frame_index"], entry["timestamp"]) == ("000001", 0, 0.0)
    names = [kitti.CLASSES[i["bbox_label_3d"]] if i["bbox_label_3d"] >= 0 else "DontCare" for i in entry["instances"]]
    assert names == ["Truck", "Car", "Cyclist"] + ["DontCare"] * 4
    assert [i["index"] for i in entry["instances"]] == [0, 1, 2, -1, -1, -1, -1]
    assert [i["num_lidar_pts"] for i in entry["instances"]][3:] == [-1] * 4


def test_cli_second_run_converts_nothing_and_two_workers_agree(kitti_root, converted, tmp_path, capsys):
    out, info = converted
    assert kitti.main(["--root", str(kitti_root), "--out", str(out)]) == 0
    assert "converted 0, already done 5, failed 0" in capsys.readouterr().out
    assert load_pickle(out / "kitti_infos_training.pkl") == info
    assert kitti.main(["--root", str(kitti_root), "--out", str(tmp_path), "--workers", "2"]) == 0
    assert "converted 5, already done 0" in capsys.readouterr().out
    assert load_pickle(tmp_path / "kitti_infos_training.pkl") == info
    for entry in info["data_list"]:
        name = entry["lidar_points"]["lidar_path"]
        assert (tmp_path / "points" / name).read_bytes() == (out / "points" / name).read_bytes()


def test_testing_split_has_no_instances(kitti_root, tmp_path):
    assert kitti.main(["--root", str(kitti_root), "--out", str(tmp_path), "--split", "testing"]) == 0
    info = load_pickle(tmp_path / "kitti_infos_testing.pkl")
    assert [e["lidar_points"]["lidar_path"] for e in info["data_list"]] == ["kitti_testing_000000.bin",
                                                                            "kitti_testing_000001.bin"]
    assert all(e["instances"] == [] for e in info["data_list"])


def linked_root(kitti_root: Path, tmp_path: Path) -> Path:
    """A KITTI root whose frame files are symlinks to the shared data (so single files can be replaced)."""
    root = tmp_path / "kitti"
    for sub in ("velodyne", "calib", "label_2", "image_2"):
        (root / "training" / sub).mkdir(parents=True)
        for path in (kitti_root / "training" / sub).iterdir():
            (root / "training" / sub / path.name).symlink_to(path)
    return root


def test_imagesets_split_list(kitti_root, tmp_path):
    root = linked_root(kitti_root, tmp_path)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "val.txt").write_text("000003\n000001\n")
    assert kitti.main(["--root", str(root), "--out", str(tmp_path / "out"), "--split", "val"]) == 0
    info = load_pickle(tmp_path / "out" / "kitti_infos_val.pkl")
    assert [e["token"] for e in info["data_list"]] == ["000001", "000003"]
    assert kitti.main(["--root", str(root), "--out", str(tmp_path / "out"), "--split", "train"]) == 1


def test_bad_calibration_and_labels_name_the_file(kitti_root, tmp_path, capsys):
    root = linked_root(kitti_root, tmp_path)
    calib = root / "training" / "calib"
    (calib / "000001.txt").unlink()
    (calib / "000002.txt").unlink()
    (calib / "000002.txt").write_text("P0: 1 2 3\n")
    label = root / "training" / "label_2" / "000003.txt"
    label.unlink()
    label.write_text("Car 0.00 0 1.0 1 2 3 4 1.5 1.6 3.9 1 2 10 0.1\nCar 0 0 bad\n")
    assert kitti.main(["--root", str(root), "--out", str(tmp_path / "out"), "--on-error", "skip"]) == 0
    failed = {f["index"]: f["error"] for f in load_pickle(tmp_path / "out" / "kitti_infos_training.pkl")
              ["metainfo"]["failed"]}
    velodyne = root / "training" / "velodyne"
    assert failed[1] == f"{velodyne / '000001.bin'} (record 1): {calib / '000001.txt'}: calibration file not found"
    assert failed[2].endswith(f"{calib / '000002.txt'}: P0 has 3 numbers, expected 12")
    assert failed[3].endswith(f"{label}: line 2 has 4 fields, expected 15 "
                              f"(type truncated occluded alpha bbox(4) h w l x y z rotation_y)")
    assert sorted(failed) == [1, 2, 3]
    capsys.readouterr()
    assert kitti.main(["--root", str(root), "--out", str(tmp_path / "stop")]) == 1
    assert f"error: {velodyne / '000001.bin'} (record 1)" in capsys.readouterr().err


def test_truncated_velodyne_file_is_a_clear_error(kitti_root, tmp_path):
    root = linked_root(kitti_root, tmp_path)
    bad = root / "training" / "velodyne" / "000004.bin"
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[:-6])
    task = kitti.object_tasks(root, "training")[4]
    with pytest.raises(Exception, match=r"000004\.bin: .* is not a multiple of 16"):
        kitti.convert_one(task)


def replace_file(path: Path, data) -> None:
    """Swap a symlinked frame file for damaged bytes / text (the shared data stays untouched)."""
    path.unlink()
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)


def velodyne_bytes(kitti_root: Path, frame: str) -> np.ndarray:
    return np.fromfile(kitti_root / "training" / "velodyne" / f"{frame}.bin", "<f4").reshape(-1, 4)


def test_damaged_frames_are_failures_not_written(kitti_root, tmp_path, capsys):
    """NaN / inf / far-off coordinates, an empty and a 1-point sweep, NaN calibration and a NaN label box: each
    frame fails with a line naming its file; nothing of it is written, the sound frame converts."""
    root = linked_root(kitti_root, tmp_path)
    velodyne, calib, labels = (root / "training" / name for name in ("velodyne", "calib", "label_2"))
    damaged = {}
    for index, value in ((0, np.nan), (1, np.inf)):
        points = velodyne_bytes(kitti_root, f"00000{index}")
        points[::1000, 1] = value
        replace_file(velodyne / f"00000{index}.bin", points.tobytes())
        damaged[index] = f"00000{index}.bin: {-(-len(points) // 1000)} of {len(points)} points have NaN/inf coordinates"
    replace_file(velodyne / "000002.bin", b"")
    replace_file(velodyne / "000003.bin", velodyne_bytes(kitti_root, "000003")[:1].tobytes())
    damaged.update({2: "000002.bin: the file holds no points",
                    3: "points: 1 point(s), fewer than --min-points 100 (an empty or cut-short sweep)"})
    out = tmp_path / "out"
    assert kitti.main(["--root", str(root), "--out", str(out), "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "converted 1, already done 0, failed 4" in printed
    info = load_pickle(out / "kitti_infos_training.pkl")
    failed = {f["index"]: f["error"] for f in info["metainfo"]["failed"]}
    assert sorted(failed) == sorted(damaged)
    for index, message in damaged.items():
        assert failed[index].startswith(f"{velodyne / f'00000{index}.bin'} (record {index}): ")
        assert message in failed[index], failed[index]
        assert f"  failed: {failed[index]}" in printed
    assert [e["token"] for e in info["data_list"]] == ["000004"]
    assert sorted(p.name for p in (out / "points").iterdir()) == ["kitti_training_000004.bin"]

    # calibration and labels of frame 000004
    text = (calib / "000004.txt").read_text()
    for bad_text, message in (
            (text.replace("P2: ", "P2: nan ", 1), "P2 has 13 numbers"),
            (_scale_first_value(text, "P2", float("nan")), "P2 has NaN/inf values"),
            (_scale_first_value(text, "R0_rect", 10.0), "R0_rect: rotation block is not a rotation"),
            (_scale_first_value(text, "Tr_velo_to_cam", float("inf")), "Tr_velo_to_cam has NaN/inf values")):
        replace_file(calib / "000004.txt", bad_text)
        with pytest.raises(ConversionError, match=message):
            kitti.convert_one(kitti.object_tasks(root, "training")[4])
    replace_file(calib / "000004.txt", text)
    label_text = (labels / "000004.txt").read_text().splitlines()
    fields = label_text[0].split()
    for column, value, message in ((11, "nan", "line 1 has NaN/inf values"),
                                   (8, "-1.5", "box size h, w, l = -1.5"),
                                   (1, "1.7", r"truncation 1\.7 outside \[0, 1\]")):
        replace_file(labels / "000004.txt", "\n".join([" ".join(fields[:column] + [value] + fields[column + 1:]),
                                                        *label_text[1:]]) + "\n")
        with pytest.raises(ConversionError, match=message):
            kitti.convert_one(kitti.object_tasks(root, "training")[4])
    (labels / "000004.txt").unlink()  # label_2 holds the other frames' files: a missing one is an error
    with pytest.raises(ConversionError, match=r"000004\.txt: label file not found"):
        kitti.convert_one(kitti.object_tasks(root, "training")[4])


def _scale_first_value(text: str, name: str, factor: float) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            values = line.split()[1:]
            values[0] = repr(float(values[0]) * factor)
            line = f"{name}: {' '.join(values)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_stop_on_damage_exits_1_with_one_line(kitti_root, tmp_path):
    root = linked_root(kitti_root, tmp_path)
    replace_file(root / "training" / "velodyne" / "000002.bin", b"")
    run = subprocess.run([sys.executable, "-m", "data_converters.kitti", "--root", str(root), "--out",
                          str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"error: {root / 'training' / 'velodyne' / '000002.bin'} (record 2): "
        f"{root / 'training' / 'velodyne' / '000002.bin'}: the file holds no points"]
    assert not (tmp_path / "out" / "kitti_infos_training.pkl").exists()


def test_all_frames_damaged_is_exit_1_without_info_file(kitti_root, tmp_path, capsys):
    root = linked_root(kitti_root, tmp_path)
    for path in (root / "training" / "velodyne").iterdir():
        replace_file(path, b"")
    assert kitti.main(["--root", str(root), "--out", str(tmp_path / "out"), "--on-error", "skip"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("  failed: ") == 5
    assert captured.err.strip() == "error: no kitti frame converted: all 5 failed (listed above); no info file written"
    assert not (tmp_path / "out" / "kitti_infos_training.pkl").exists()


def test_without_image_2_the_default_image_size_is_recorded_and_kitti_metric_runs(kitti_root, tmp_path):
    root = linked_root(kitti_root, tmp_path)
    for path in (root / "training" / "image_2").iterdir():
        path.unlink()
    (root / "training" / "image_2").rmdir()
    out = tmp_path / "out"
    assert kitti.main(["--root", str(root), "--out", str(out), "--limit", "2"]) == 0
    info = load_pickle(out / "kitti_infos_training.pkl")
    for entry in info["data_list"]:
        cam2 = entry["images"]["CAM2"]
        assert (cam2["height"], cam2["width"], cam2["size_is_default"]) == (375, 1242, True)
        assert "img_path" not in cam2
    assert info["metainfo"]["default_image_size"] == (375, 1242)
    with_images = tmp_path / "with_images"
    assert kitti.main(["--root", str(kitti_root), "--out", str(with_images), "--limit", "1"]) == 0
    cam2 = load_pickle(with_images / "kitti_infos_training.pkl")["data_list"][0]["images"]["CAM2"]
    from PIL import Image  # an independent PNG reader: KITTI image sizes vary by a few pixels (here 1224 x 370)

    width, height = Image.open(kitti_root / "training" / "image_2" / "000000.png").size
    assert (cam2["height"], cam2["width"], cam2["size_is_default"]) == (height, width, False)

    # mmdet3d's KittiMetric turns predictions (here the ground truth boxes) into KITTI results: it needs CAM2's size
    import_mmdet3d_datasets()
    import torch
    from mmdet3d.evaluation.metrics import KittiMetric
    from mmdet3d.structures import LiDARInstance3DBoxes

    metric = KittiMetric(ann_file=str(out / "kitti_infos_training.pkl"))
    metric.data_infos = {e["sample_idx"]: e for e in info["data_list"]}
    outputs = []
    for entry in info["data_list"]:
        calib = kitti.read_object_calib(kitti_root / "training" / "calib" / f"{entry['token']}.txt")
        cared = [i for i in entry["instances"] if i["bbox_label_3d"] >= 0]
        boxes = kitti.camera_boxes_to_lidar(np.array([i["bbox_3d"] for i in cared]).reshape(-1, 7),
                                            calib["R0_rect"] @ calib["Tr_velo_to_cam"])
        outputs.append({"bboxes_3d": LiDARInstance3DBoxes(torch.tensor(boxes, dtype=torch.float32)),
                        "scores_3d": torch.ones(len(cared)),
                        "labels_3d": torch.tensor([i["bbox_label_3d"] for i in cared])})
    annos = metric.bbox2result_kitti(outputs, [e["sample_idx"] for e in info["data_list"]], list(kitti.CLASSES))
    assert len(annos) == 2 and sum(len(a["name"]) for a in annos) > 0
    assert all((a["bbox"][:, 2] <= 1242).all() and (a["bbox"][:, 3] <= 375).all() for a in annos)


def test_damaged_png_header_is_an_error(kitti_root, tmp_path):
    root = linked_root(kitti_root, tmp_path)
    image = root / "training" / "image_2" / "000001.png"
    data = bytearray(image.read_bytes()[:4096])
    data[18] ^= 0x04  # width byte inside IHDR
    replace_file(image, bytes(data))
    with pytest.raises(ConversionError, match=r"000001\.png: damaged PNG header \(IHDR CRC mismatch\)"):
        kitti.convert_one(kitti.object_tasks(root, "training")[1])
    replace_file(image, b"GIF89a")
    with pytest.raises(ConversionError, match=r"000001\.png: not a PNG image"):
        kitti.convert_one(kitti.object_tasks(root, "training")[1])


def test_command_line_entry_point(kitti_root, tmp_path):
    run = subprocess.run([sys.executable, "-m", "data_converters.kitti", "--root", str(kitti_root), "--out",
                          str(tmp_path), "--limit", "2"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "converted 2, already done 0, failed 0" in run.stdout
    assert len(load_pickle(tmp_path / "kitti_infos_training.pkl")["data_list"]) == 2
    bad = subprocess.run([sys.executable, "-m", "data_converters.kitti", "--root", str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "o"), "--layout", "raw"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "no KITTI raw drives" in bad.stderr


# ------------------------------------------------------------------------------------------------ raw layout
LAT0, LON0, ALT0 = 49.0, 8.4, 110.0
IMU_TO_VELO_T = (-0.81, 0.32, -0.80)
STAMPS = ["2011-09-26 13:02:25.964389445", "2011-09-26 13:02:26.068421483", "2011-09-26 13:02:26.172455000"]


def write_raw_drive(root: Path, oxts_rows, drive="2011_09_26_drive_0001_sync", points_per_frame=150) -> Path:
    date = root / "2011_09_26"
    sync = date / drive
    (sync / "velodyne_points" / "data").mkdir(parents=True)
    (sync / "oxts" / "data").mkdir(parents=True)
    (date / "calib_imu_to_velo.txt").write_text(
        "calib_time: 25-May-2012 16:47:16\nR: 1 0 0 0 1 0 0 0 1\nT: " + " ".join(map(str, IMU_TO_VELO_T)) + "\n")
    (sync / "velodyne_points" / "timestamps.txt").write_text("\n".join(STAMPS[: len(oxts_rows)]) + "\n")
    for i, row in enumerate(oxts_rows):
        points = np.arange(points_per_frame * 4, dtype=np.float32).reshape(-1, 4) % 97 + 10 * i  # within 120 m
        points.tofile(sync / "velodyne_points" / "data" / f"{i:010d}.bin")
        values = list(row) + [0.0] * 24  # the 24 velocity / accuracy / status fields are not used
        (sync / "oxts" / "data" / f"{i:010d}.txt").write_text(" ".join(f"{v:.12f}" for v in values) + "\n")
    return sync


def raw_rows():
    north_10m = math.degrees(10.0 / EARTH_RADIUS_M)
    east_20m = math.degrees(20.0 / (EARTH_RADIUS_M * math.cos(math.radians(LAT0))))
    return [(LAT0, LON0, ALT0, 0.0, 0.0, 0.0),                            # origin, facing east
            (LAT0 + north_10m, LON0, ALT0 + 2.0, 0.0, 0.0, 0.0),          # 10 m north, 2 m up
            (LAT0 + north_10m, LON0 + east_20m, ALT0 + 2.0, 0.0, 0.0, math.pi / 2)]  # then 20 m east, facing north


def test_raw_drive_poses_timestamps_and_order(tmp_path):
    from pcmae.data import LidarSweeps

    sync = write_raw_drive(tmp_path / "raw", raw_rows())
    assert kitti.main(["--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--layout", "raw"]) == 0
    info = load_pickle(tmp_path / "out" / "kitti_infos_raw.pkl")
    entries = info["data_list"]
    assert [(e["scene"], e["frame_index"]) for e in entries] == [(sync.name, 0), (sync.name, 1), (sync.name, 2)]
    expected_t = [(0, 0, 0), (0, 10, 2), (20, 10, 2)]
    for entry, t in zip(entries, expected_t):
        np.testing.assert_allclose(np.array(entry["ego2global"])[:3, 3], t, atol=2e-4)
    np.testing.assert_allclose(np.array(entries[2]["ego2global"])[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
                               atol=1e-12)
    # velodyne -> IMU is the inverse of imu_to_velo (pure translation here): (0.81, -0.32, 0.80)
    np.testing.assert_allclose(np.array(entries[0]["lidar_points"]["lidar2ego"])[:3, 3], (0.81, -0.32, 0.80))
    # frame 2 faces north: the sensor's offset (0.81 forward, -0.32 left) becomes (+0.32 east, +0.81 north)
    np.testing.assert_allclose(np.array(entries[2]["lidar2global"])[:3, 3], (20.32, 10.81, 2.80), atol=2e-4)
    seconds = calendar.timegm((2011, 9, 26, 13, 2, 25, 0, 0, 0))
    np.testing.assert_allclose([e["timestamp"] for e in entries],
                               [seconds + 0.964389445, seconds + 1.068421483, seconds + 1.172455], atol=1e-6)
    dataset = LidarSweeps(info_file=str(tmp_path / "out" / "kitti_infos_raw.pkl"), data_prefix={"pts": "points"})
    item = dataset[2]
    np.testing.assert_allclose(item["pose"].numpy(), entries[2]["lidar2global"])
    velodyne = np.fromfile(sync / "velodyne_points" / "data" / "0000000002.bin", "<f4").reshape(-1, 4)
    np.testing.assert_array_equal(item["points"].numpy(), velodyne)


def test_raw_drive_missing_oxts_and_calibration(tmp_path):
    sync = write_raw_drive(tmp_path / "raw", raw_rows())
    oxts = sync / "oxts" / "data" / "0000000001.txt"
    oxts.unlink()
    tasks = kitti.raw_tasks(tmp_path / "raw")
    with pytest.raises(ConversionError, match=f"{oxts}: OXTS file not found"):
        kitti.convert_one(tasks[1])
    (sync.parent / "calib_imu_to_velo.txt").write_text("R: 1 0 0\n")
    with pytest.raises(ConversionError, match="calib_imu_to_velo.txt: expected 'R:' with 9 numbers"):
        kitti.raw_tasks(tmp_path / "raw")


def test_oxts_pose_yaw_only_is_a_rotation_about_z():
    pose = kitti.oxts_pose((0.0, 0.0, 0.0, 0.0, 0.0, math.radians(30)), scale=1.0)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    np.testing.assert_allclose(pose[:3, :3], [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(pose[:3, 3], 0.0, atol=1e-9)  # the equator / prime meridian is the Mercator origin


def test_task_keys_are_stable_and_safe(kitti_root):
    tasks = kitti.object_tasks(kitti_root, "training")
    assert [t.key for t in tasks] == [f"kitti_training_{i:06d}" for i in range(5)]
    assert all(isinstance(t, FrameTask) and Path(t.source).is_file() for t in tasks)


# ------------------------------------------------------------------------------------------------ mmdet3d
def test_mmdet3d_kitti_dataset_reads_our_info_file(kitti_root, converted):
    """mmdet3d's own KittiDataset and loading transforms over the converted real frames: points, labels, and the
    gt boxes it turns into LiDAR boxes (with CAM2's lidar2cam), checked against OpenPCDet's gt_database crops."""
    import_mmdet3d_datasets()  # skips without mmdet3d / mmcv.ops
    from mmcv.ops import points_in_boxes_cpu

    out, info = converted
    pipeline = [dict(type="LoadPointsFromFile", coord_type="LIDAR", load_dim=4, use_dim=4),
                dict(type="LoadAnnotations3D", with_bbox_3d=True, with_label_3d=True),
                dict(type="Pack3DDetInputs", keys=["points", "gt_bboxes_3d", "gt_labels_3d"])]
    dataset = build_mmdet3d_dataset("KittiDataset", data_root=str(out), ann_file="kitti_infos_training.pkl",
                                    data_prefix=dict(pts="points"), pipeline=pipeline,
                                    modality=dict(use_lidar=True, use_camera=False))
    assert len(dataset) == 5
    # our label ids are mmdet3d's KITTI class indices (DontCare -1)
    assert info["metainfo"]["categories"] == {**{n: i for i, n in enumerate(dataset.metainfo["classes"])},
                                              "DontCare": -1}
    crop_boxes = {}
    for index, ours in enumerate(info["data_list"]):
        frame = ours["token"]
        data = dataset.get_data_info(index)
        assert data["sample_idx"] == int(frame)
        assert data["lidar_points"]["lidar_path"] == str(out / "points" / f"kitti_training_{frame}.bin")
        cared = [i for i in ours["instances"] if i["bbox_label_3d"] != -1]  # mmdet3d drops DontCare
        labels = data["ann_info"]["gt_labels_3d"]
        np.testing.assert_array_equal(labels, [i["bbox_label_3d"] for i in cared])
        boxes = data["ann_info"]["gt_bboxes_3d"]
        assert type(boxes).__name__ == "LiDARInstance3DBoxes" and boxes.tensor.shape == (len(cared), 7)
        calib = kitti.read_object_calib(kitti_root / "training" / "calib" / f"{frame}.txt")
        expected = kitti.camera_boxes_to_lidar(np.array([i["bbox_3d"] for i in cared]),
                                               calib["R0_rect"] @ calib["Tr_velo_to_cam"])
        got = boxes.tensor.numpy().astype(np.float64)
        np.testing.assert_allclose(got[:, :6], expected[:, :6], atol=1e-4, err_msg=frame)
        np.testing.assert_allclose((got[:, 6] - expected[:, 6] + np.pi) % (2 * np.pi) - np.pi, 0, atol=1e-5)
        # the training pipeline loads the raw velodyne points; mmcv's point-in-box op gives our num_lidar_pts
        item = dataset.prepare_data(index)  # None if mmdet3d found no boxes (dataset[i] would draw another frame)
        assert item is not None, frame
        sample = item["data_samples"]
        assert sample.sample_idx == int(frame) and sample.lidar_path == data["lidar_points"]["lidar_path"]
        points = item["inputs"]["points"]
        velodyne = np.fromfile(kitti_root / "training" / "velodyne" / f"{frame}.bin", "<f4").reshape(-1, 4)
        np.testing.assert_array_equal(points.numpy(), velodyne)
        np.testing.assert_array_equal(sample.gt_instances_3d.labels_3d.numpy(), labels)
        np.testing.assert_array_equal(sample.gt_instances_3d.bboxes_3d.tensor.numpy(), boxes.tensor.numpy())
        inside = points_in_boxes_cpu(points[None, :, :3].float(), boxes.tensor[None, :, :7].float())
        assert inside[0].sum(0).tolist() == [i["num_lidar_pts"] for i in cared], frame
        crop_boxes[frame] = boxes, [dataset.metainfo["classes"][label] for label in labels], \
            [i["index"] for i in cared]
    # OpenPCDet's crops (<frame>_<Class>_<label line>.bin) are centred on each box's gravity centre
    crops = sorted((kitti_root / "gt_database").glob("*.bin"))
    assert len(crops) == 9
    for crop_file in crops:
        frame, name, line = crop_file.stem.split("_")
        boxes, names, lines = crop_boxes[frame]
        k = lines.index(int(line))
        assert names[k] == name, crop_file.name
        crop = np.fromfile(crop_file, dtype="<f4").reshape(-1, 4)
        shifted = crop[:, :3].astype(np.float64) + boxes.gravity_center.numpy()[k]
        velodyne = np.fromfile(kitti_root / "training" / "velodyne" / f"{frame}.bin", "<f4").reshape(-1, 4)
        distance, _ = cKDTree(velodyne[:, :3]).query(shifted)
        assert distance.max() < 1e-4, crop_file.name
