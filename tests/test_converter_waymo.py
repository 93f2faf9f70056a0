"""Waymo converter without TensorFlow: TFRecord framing and CRC32C, the real val.tfrecord frame (read in place)
against mmdet3d's independent gt.bin / info fixtures, range-image decoding (hand-computed pixels and a round trip
of real Waymo points through range images built with the real frame's calibrations), and the command line."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scipy.spatial.transform import Rotation

from benchmarks.converter_inputs import full_size_frame, spin_pose
from data_converters import tfrecord, waymo
from data_converters.common import ConversionError, FrameTask
from data_converters.waymo_range_image import (COLUMNS, beam_inclinations, decode_matrix, encode_matrix,
                                               points_to_range_image, range_image_to_points)
from pcmae.data import LidarSweeps
from tests.shared_data import shared_data_path

try:  # optional dependency: the TFRecord tests run without it
    from waymo_open_dataset import dataset_pb2
    from waymo_open_dataset.protos import metrics_pb2
except ImportError:
    dataset_pb2 = metrics_pb2 = None
needs_protos = pytest.mark.skipif(dataset_pb2 is None,
                                  reason="needs pip install --no-deps waymo-open-dataset-tf-2-12-0==1.6.7")

REPO = Path(__file__).resolve().parents[1]
WAYMO_DATA = ("mmdet3d", "tests", "data", "waymo")
TOP, FRONT = 1, 2


def val_path() -> Path:
    return shared_data_path(*WAYMO_DATA, "waymo_format", "validation", "val.tfrecord")


def val_frame():
    frame = dataset_pb2.Frame()
    frame.ParseFromString(tfrecord.read_record(val_path(), tfrecord.index_records(val_path())[0]))
    return frame


def calibration(frame, name):
    (found,) = [c for c in frame.context.laser_calibrations if c.name == name]
    extrinsic = np.asarray(found.extrinsic.transform, np.float64).reshape(4, 4)
    return found, extrinsic


# ------------------------------------------------------------------------------------------ TFRecord framing
@pytest.mark.parametrize("crc", [tfrecord.crc32c, tfrecord.crc32c_python], ids=["default", "table"])
def test_crc32c_known_vectors(crc):
    assert crc(b"") == 0
    assert crc(b"123456789") == 0xE3069283  # the CRC-32C check value
    # RFC 3720 (iSCSI) appendix B.4
    assert crc(bytes(32)) == 0x8A9136AA
    assert crc(b"\xff" * 32) == 0x62A8AB43
    assert crc(bytes(range(32))) == 0x46DD794E
    assert crc(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_crc32c_implementations_agree(monkeypatch):
    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    assert tfrecord.crc32c(data) == tfrecord.crc32c_python(data)
    assert tfrecord.crc32c(memoryview(data)[7:]) == tfrecord.crc32c_python(data[7:])
    framed = tfrecord.encode_record(data)
    monkeypatch.setattr(tfrecord, "_FAST", None)  # as without google-crc32c
    assert tfrecord.encode_record(data) == framed


def test_reader_indexes_and_writer_reproduces_real_file(tmp_path):
    path = val_path()
    spans = tfrecord.index_records(path)
    assert spans == [tfrecord.RecordSpan(index=0, offset=12, length=8140)]
    assert path.stat().st_size == 12 + 8140 + 4
    payload = tfrecord.read_record(path, spans[0])
    assert list(tfrecord.iter_records(path)) == [payload]
    # the file was written by TensorFlow: our framing must give the same bytes
    assert tfrecord.encode_record(payload) == path.read_bytes()
    records = [b"", b"abc", os.urandom(5000), payload]
    out = tfrecord.write_records(tmp_path / "many.tfrecord", records)
    assert list(tfrecord.iter_records(out)) == records
    assert [s.index for s in tfrecord.index_records(out)] == [0, 1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["many.tfrecord"]  # no temp file left

    def failing():
        yield b"first"
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        tfrecord.write_records(tmp_path / "half.tfrecord", failing())
    assert [p.name for p in tmp_path.iterdir()] == ["many.tfrecord"]  # nothing half-written


@pytest.mark.parametrize("where, expected", [(20, "bad payload CRC"), (3, "bad length CRC"),
                                             (8, "bad length CRC"), (8156 - 2, "bad payload CRC")],
                         ids=["payload", "length", "length-crc", "payload-crc"])
def test_flipped_byte_is_rejected(tmp_path, where, expected):
    data = bytearray(val_path().read_bytes())
    data[where] ^= 0x10
    bad = tmp_path / "flipped.tfrecord"
    bad.write_bytes(bytes(data))
    with pytest.raises(tfrecord.TFRecordError) as err:
        list(tfrecord.iter_records(bad))
    assert str(bad) in str(err.value) and "(record 0)" in str(err.value) and expected in str(err.value)
    # without verification the damaged payload is still readable (the length header is intact)
    if expected == "bad payload CRC":
        assert len(tfrecord.read_record(bad, tfrecord.index_records(bad)[0], verify=False)) == 8140


@pytest.mark.parametrize("cut", [3, 4000, 8150])
def test_truncated_file_is_rejected(tmp_path, cut):
    good = val_path().read_bytes()
    bad = tmp_path / "cut.tfrecord"
    bad.write_bytes(good + good[:cut])  # record 0 intact, record 1 cut short
    spans, damages = tfrecord.scan_records(bad)
    assert [s.index for s in spans] == [0]
    (damage,) = damages
    error = str(damage.error)
    assert str(bad) in error and "(record 1)" in error and "truncated" in error
    assert (damage.start, damage.end) == (len(good), len(good) + cut)
    assert f"({cut} bytes) unreadable, at least one record lost, no valid record after it" in error
    with pytest.raises(tfrecord.TFRecordError, match=r"\(record 1\): truncated"):
        tfrecord.index_records(bad)


@pytest.mark.parametrize("where", [0, 3, 7, 8, 11], ids=["len0", "len3", "len7", "crc0", "crc3"])
def test_flipped_length_bit_loses_one_record_not_the_rest(tmp_path, where):
    """A flipped bit in record 1's header: records 0, 2, 3 are still read (resynchronised on the next valid header),
    and the damage says which bytes were unreadable."""
    records = [os.urandom(3000 + 100 * i) for i in range(4)]
    good = tfrecord.write_records(tmp_path / "good.tfrecord", records)
    spans = tfrecord.index_records(good)
    data = bytearray(good.read_bytes())
    header = spans[1].offset - 12
    data[header + where] ^= 0x20
    bad = tmp_path / "flipped.tfrecord"
    bad.write_bytes(bytes(data))
    found, damages = tfrecord.scan_records(bad)
    assert [tfrecord.read_record(bad, s) for s in found] == [records[0], records[2], records[3]]
    assert [s.index for s in found] == [0, 2, 3]
    (damage,) = damages
    assert (damage.index, damage.start, damage.end) == (1, header, spans[2].offset - 12)
    assert str(damage.error) == (f"{bad} (record 1): bad length CRC at offset {header} (corrupt file or not a "
                                 f"TFRecord); bytes {header}-{damage.end} ({damage.end - header} bytes) unreadable, "
                                 f"at least one record lost, reading resumed at the next valid record at offset "
                                 f"{damage.end}")


def test_empty_and_garbage_files_are_damage(tmp_path):
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    found, damages = tfrecord.scan_records(empty)
    assert found == [] and [str(d.error) for d in damages] == [f"{empty} (record 0): empty file, no records"]
    with pytest.raises(tfrecord.TFRecordError, match="empty file"):
        tfrecord.index_records(empty)
    garbage = tmp_path / "garbage.tfrecord"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    found, damages = tfrecord.scan_records(garbage)
    assert found == [] and [(d.start, d.end) for d in damages] == [(0, 20000)]


# ------------------------------------------------------------------------------------------ the real frame
@needs_protos
def test_real_frame_matches_mmdet3d_fixtures():
    frame = val_frame()
    info = waymo.frame_info(frame, sample_idx=1_000_000, frame_index=0)
    # mmdet3d's gt.bin (metrics Objects) holds one object of this very frame
    objects = metrics_pb2.Objects()
    objects.ParseFromString(shared_data_path(*WAYMO_DATA, "waymo_format", "gt.bin").read_bytes())
    (gt,) = objects.objects
    assert info["scene"] == info["context_name"] == gt.context_name == "1071392229495085036_1844_790_1864_790"
    assert info["timestamp_micros"] == gt.frame_timestamp_micros
    assert info["timestamp"] == pytest.approx(gt.frame_timestamp_micros / 1e6, abs=1e-6)
    cars = [i for i in info["instances"] if i["bbox_label_3d"] == waymo.CATEGORIES["Car"]]
    assert len(cars) == 1 and gt.object.type == 1  # TYPE_VEHICLE
    box, car = gt.object.box, cars[0]["bbox_3d"]
    assert car[:2] == pytest.approx([box.center_x, box.center_y], abs=0.02)
    assert car[2] == pytest.approx(box.center_z - box.height / 2, abs=0.02)  # bottom centre, as mmdet3d stores
    assert car[3:6] == pytest.approx([box.length, box.width, box.height], abs=0.01)
    assert car[6] == pytest.approx(box.heading, abs=0.005)
    # the frame's own per-type counts (context stats) against the instances: 1 vehicle, 17 signs (label -1)
    assert info["context"]["laser_object_counts"] == {"VEHICLE": 1, "SIGN": 17}
    assert len(info["instances"]) == 18
    signs = [i for i in info["instances"] if i["waymo_type"] == "SIGN"]
    assert len(signs) == 17 and {i["bbox_label_3d"] for i in signs} == {-1}
    assert all(i["bbox_3d_isvalid"] == (i["num_lidar_pts"] > 0) for i in info["instances"])
    assert info["context"]["location"] == "location_phx" and info["context"]["time_of_day"] == "Day"

    # pose: a rigid transform, lidar2ego identity (points are in the vehicle frame)
    pose = np.asarray(info["ego2global"])
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6) and np.linalg.det(pose[:3, :3]) > 0
    assert np.array_equal(pose[3], [0, 0, 0, 1]) and info["lidar2global"] == info["ego2global"]
    assert info["lidar_points"]["lidar2ego"] == np.eye(4).tolist()

    # lidars: 64 TOP beams within [min, max]; the four short-range lidars span [-90, +30] degrees, uniform
    lidars = info["lidar_calibrations"]
    assert sorted(lidars) == ["FRONT", "REAR", "SIDE_LEFT", "SIDE_RIGHT", "TOP"]
    top = lidars["TOP"]
    assert len(top["beam_inclinations"]) == 64 and np.all(np.diff(top["beam_inclinations"]) > 0)
    assert top["beam_inclination_min"] <= top["beam_inclinations"][0] < top["beam_inclinations"][-1] \
        <= top["beam_inclination_max"]
    assert 1.8 < np.asarray(top["lidar2ego"])[2, 3] < 2.5  # roof-mounted
    for name in ("FRONT", "REAR", "SIDE_LEFT", "SIDE_RIGHT"):
        assert lidars[name]["beam_inclinations"] == []
        assert np.degrees([lidars[name]["beam_inclination_min"], lidars[name]["beam_inclination_max"]]) \
            == pytest.approx([-90, 30])

    # cameras: mmdet3d's own fixture info (another vehicle, same camera rig) as the reference for the
    # KITTI-style axes of lidar2cam and the 3 x 4 cam2img
    with open(shared_data_path(*WAYMO_DATA, "kitti_format", "waymo_infos_val.pkl"), "rb") as f:
        reference = pickle.load(f)["data_list"][0]["images"]["CAM_FRONT"]
    cameras = info["camera_calibrations"]
    assert sorted(cameras) == sorted(waymo.CAMERA_KEYS.values())
    front = cameras["CAM_FRONT"]
    assert (front["width"], front["height"]) == (reference["width"], reference["height"]) == (1920, 1280)
    assert {(cameras[k]["width"], cameras[k]["height"]) for k in ("CAM_SIDE_LEFT", "CAM_SIDE_RIGHT")} == {(1920, 886)}
    assert np.asarray(front["lidar2cam"])[:3, :3] == pytest.approx(np.asarray(reference["lidar2cam"])[:3, :3],
                                                                    abs=0.05)
    assert np.asarray(front["lidar2cam"])[:3, 3] == pytest.approx(np.asarray(reference["lidar2cam"])[:3, 3], abs=0.3)
    assert np.shape(front["cam2img"]) == np.shape(reference["cam2img"]) == (3, 4)
    assert np.asarray(front["cam2img"]) == pytest.approx(np.asarray(reference["cam2img"]), rel=0.03, abs=1)
    assert np.asarray(front["lidar2img"]) == pytest.approx(np.asarray(front["cam2img"]) @ front["lidar2cam"])


@needs_protos
def test_real_frame_without_range_images_keeps_its_labels_flagged(tmp_path, capsys):
    """mmdet3d stripped the real frame's range images: its 18 labels stay, in an entry with 0 points, flagged."""
    out = tmp_path / "out"
    assert waymo.main(["--root", str(val_path()), "--out", str(out), "--split", "validation"]) == 0
    printed = capsys.readouterr().out
    assert "converted 1, already done 0, failed 0" in printed
    assert "1 label-only frame(s) kept with 0 points (flagged label_only)" in printed
    with open(out / "waymo_infos_validation.pkl", "rb") as f:
        info = pickle.load(f)
    (entry,) = info["data_list"]
    assert entry["label_only"] is True and entry["lidar_points"]["num_points"] == 0
    assert info["metainfo"]["label_only_frames"] == ["val_0000"]
    assert len(entry["instances"]) == len(val_frame().laser_labels) == 18
    assert (out / "points" / "val_0000.bin").stat().st_size == 0
    # a frame with neither range images nor labels is a failure
    empty = dataset_pb2.Frame()
    empty.CopyFrom(val_frame())
    del empty.laser_labels[:]
    path = tfrecord.write_records(tmp_path / "nothing.tfrecord", [empty.SerializeToString()])
    with pytest.raises(ConversionError, match=r"nothing\.tfrecord \(record 0\): frame has neither lidar range "
                                              r"images nor laser labels"):
        waymo.convert_one(waymo.build_tasks([path], "training")[0])


def test_timestamps_are_seconds_like_the_other_converters():
    """Waymo's ``timestamp`` is seconds (micros / 1e6) as in the nuScenes converter (sample timestamp / 1e6), KITTI
    raw (POSIX seconds) and mmdet3d's own v2 nuScenes infos; ``timestamp_micros`` keeps the exact value. (mmdet3d's
    Waymo infos store micros in ``timestamp``: readers of our files get seconds, said in metainfo.)"""
    if dataset_pb2 is None:
        pytest.skip("needs the Waymo protos")
    frame = val_frame()
    info = waymo.frame_info(frame, 1_000_000, 0, [])
    assert info["timestamp_micros"] == frame.timestamp_micros
    assert info["timestamp"] == frame.timestamp_micros / 1e6
    assert 1.0e9 < info["timestamp"] < 2.0e9  # 2001-2033 in seconds; micros would be ~1.5e15
    nuscenes_info = shared_data_path("mmdet3d", "tests", "data", "nuscenes", "nus_info.pkl")
    with open(nuscenes_info, "rb") as f:
        nus = pickle.load(f)
    assert 1.0e9 < nus["data_list"][0]["timestamp"] < 2.0e9


# ------------------------------------------------------------------------------------------ range images
def rays_expected(azimuth, inclination, distance):
    return distance * np.array([np.cos(azimuth) * np.cos(inclination), np.sin(azimuth) * np.cos(inclination),
                                np.sin(inclination)])


def test_decode_hand_computed_pixels():
    # 2 rows, uniform between -0.2 and 0.2 rad: bin centres -0.1, 0.1, row 0 = the highest; 4 columns whose
    # centres sit at azimuth pi * (1 - (2c + 1) / 4) = 3pi/4, pi/4, -pi/4, -3pi/4
    inclinations = beam_inclinations([], -0.2, 0.2, 2)
    assert inclinations == pytest.approx([0.1, -0.1])
    assert beam_inclinations([0.1, 0.2, 0.3], 0, 0, 3) == pytest.approx([0.3, 0.2, 0.1])
    image = np.zeros((2, 4, 4), np.float32)
    image[0, 1] = [10.0, 7.0, 0.5, 1.0]   # intensity 7, elongation 0.5, inside a no-label zone
    image[1, 3] = [20.0, 3.0, 0.0, -1.0]
    points, pixels = range_image_to_points(image, np.eye(4), inclinations)
    assert pixels.tolist() == [1, 7]
    assert points[0, :3] == pytest.approx(rays_expected(np.pi / 4, 0.1, 10.0), abs=1e-5)
    assert points[1, :3] == pytest.approx(rays_expected(-3 * np.pi / 4, -0.1, 20.0), abs=1e-5)
    assert points[:, 3:].tolist() == [[7.0, 0.5, 1.0], [3.0, 0.0, 0.0]]

    # a lidar yawed by +90 degrees and mounted at (1, 2, 3): columns keep their vehicle-frame azimuth
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    extrinsic[:3, 3] = [1, 2, 3]
    yawed, _ = range_image_to_points(image, extrinsic, inclinations)
    assert yawed[:, :3] == pytest.approx(points[:, :3] + [1, 2, 3], abs=1e-5)

    # a per-pixel pose 1 m ahead (world x) of an unrotated frame pose moves the point 1 m ahead
    pixel_pose = np.zeros((2, 4, 6), np.float32)
    pixel_pose[..., 3] = 101.0
    frame_pose = np.eye(4)
    frame_pose[0, 3] = 100.0
    moved, _ = range_image_to_points(image, np.eye(4), inclinations, pixel_pose, frame_pose)
    assert moved[:, :3] == pytest.approx(points[:, :3] + [1, 0, 0], abs=1e-5)
    # yaw 90 degrees in the pixel pose: the vehicle-frame x axis points along world y
    pixel_pose[..., 2] = np.pi / 2
    turned, _ = range_image_to_points(image, np.eye(4), inclinations, pixel_pose, frame_pose)
    expected = points[:, :3] @ Rotation.from_euler("z", 90, degrees=True).as_matrix().T + [1, 0, 0]
    assert turned[:, :3] == pytest.approx(expected, abs=1e-4)


def snap_to_pixel_rays(points, pixels, extrinsic, inclinations, width, pixel_pose=None, frame_pose=None):
    """The test's own model of Waymo's range-image rays: move each point (vehicle frame) onto the centre ray of
    its pixel, keeping its distance to the lidar at the pixel's time (pose from scipy's intrinsic ZYX Euler)."""
    rows, cols = np.divmod(pixels, width)
    lidar_to_frame = np.tile(extrinsic, (len(points), 1, 1))
    if pixel_pose is not None:
        pose = pixel_pose.reshape(-1, 6)[pixels].astype(np.float64)
        pixel_to_world = np.tile(np.eye(4), (len(points), 1, 1))
        pixel_to_world[:, :3, :3] = Rotation.from_euler("ZYX", pose[:, [2, 1, 0]]).as_matrix()
        pixel_to_world[:, :3, 3] = pose[:, 3:]
        lidar_to_frame = np.linalg.inv(frame_pose) @ pixel_to_world @ extrinsic
    frame_to_lidar = np.linalg.inv(lidar_to_frame)
    lidar = np.einsum("nij,nj->ni", frame_to_lidar[:, :3, :3], points) + frame_to_lidar[:, :3, 3]
    distance = np.linalg.norm(lidar, axis=1)
    azimuth = np.pi - (2 * cols + 1) * np.pi / width - np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    ray = rays_expected(azimuth, inclinations[rows], distance).T
    return np.einsum("nij,nj->ni", lidar_to_frame[:, :3, :3], ray) + lidar_to_frame[:, :3, 3]


def laser_images(points, features, extrinsic, inclinations, width, pixel_pose=None, frame_pose=None):
    """Known points on pixel rays (snapped real points) and their range image."""
    _, kept = points_to_range_image(points, features, extrinsic, inclinations, width, pixel_pose, frame_pose)
    chosen = np.nonzero(kept >= 0)[0]
    known = snap_to_pixel_rays(points[chosen], kept[chosen], extrinsic, inclinations, width, pixel_pose,
                               frame_pose)
    image, pixels = points_to_range_image(known, features[chosen], extrinsic, inclinations, width, pixel_pose,
                                          frame_pose)
    assert np.array_equal(pixels, kept[chosen])  # snapped points stay in their pixel
    order = np.argsort(pixels)
    return np.column_stack([known, features[chosen]])[order], image


@pytest.fixture(scope="module")
def round_trip():
    """The real frame plus range images of real Waymo points (0004.npy, vehicle frame) snapped onto pixel rays:
    TOP with a per-pixel pose and both returns, FRONT with both returns.
    Returns (Frame, {(laser, return): known points (M, 6) sorted by pixel})."""
    cloud = np.load(shared_data_path("openpcdet", "pcdet", "datasets", "waymo", "0004.npy"))
    in_zone = (cloud[:, 0] > 20) & (cloud[:, 1] > 0)  # a made-up no-label zone: 0004.npy has none (all -1)
    features = np.column_stack([cloud[:, 3:5], in_zone]).astype(np.float32)
    frame = val_frame()
    frame_pose = np.asarray(frame.pose.transform, np.float64).reshape(4, 4)
    known = {}
    for name, height, width in ((TOP, 64, 2650), (FRONT, 200, 600)):
        proto, extrinsic = calibration(frame, name)
        inclinations = beam_inclinations(proto.beam_inclinations, proto.beam_inclination_min,
                                         proto.beam_inclination_max, height)
        pose = spin_pose(frame_pose, width, height) if name == TOP else None
        select = (np.arange(len(cloud)) if name == TOP else
                  np.nonzero(np.linalg.norm(cloud[:, :3] - extrinsic[:3, 3], axis=1) < 20)[0])
        laser = frame.lasers.add(name=name)
        for return_index, part in ((1, select[0::2]), (2, select[1::2])):
            known[name, return_index], image = laser_images(cloud[part, :3], features[part], extrinsic,
                                                            inclinations, width, pose, frame_pose)
            target = laser.ri_return1 if return_index == 1 else laser.ri_return2
            target.range_image_compressed = encode_matrix(image)
        if pose is not None:
            laser.ri_return1.range_image_pose_compressed = encode_matrix(pose)
    return frame, known


@needs_protos
def test_range_image_round_trip_through_tfrecord(tmp_path, round_trip):
    frame, known = round_trip
    path = tfrecord.write_records(tmp_path / "segment-rt.tfrecord", [frame.SerializeToString()])
    (task,) = waymo.build_tasks([path], "validation")
    assert task.key == "segment-rt_0000" and task.index == 0
    result = waymo.convert_one(task)
    points, segments = result.points, result.info["lidar_points"]["segments"]
    assert points.dtype == np.float32 and points.shape[1] == len(COLUMNS) == 6
    # order: return 1 (TOP, FRONT), then return 2 (TOP, FRONT)
    assert [(s["laser"], s["return"]) for s in segments] == [("TOP", 1), ("FRONT", 1), ("TOP", 2), ("FRONT", 2)]
    assert sum(s["count"] for s in segments) == len(points) > 50_000
    for segment in segments:
        name = TOP if segment["laser"] == "TOP" else FRONT
        expected = known[name, segment["return"]]
        got = points[segment["start"]: segment["start"] + segment["count"]]
        assert len(got) == len(expected) > 1000
        error = np.linalg.norm(got[:, :3] - expected[:, :3], axis=1)
        assert error.max() < 0.01, (segment, error.max())
        assert np.array_equal(got[:, 3:], expected[:, 3:])  # intensity, elongation, nlz 1/0
    top = points[: segments[0]["count"]]
    assert set(np.unique(top[:, 5])) == {0.0, 1.0}
    assert result.info["ego2global"] == np.asarray(frame.pose.transform).reshape(4, 4).tolist()
    # the per-pixel pose matters: without it TOP points sit up to ~0.6 m off (12 m/s over a 0.1 s spin)
    proto, extrinsic = calibration(frame, TOP)
    image = decode_matrix(frame.lasers[0].ri_return1.range_image_compressed, "TOP")
    unposed, _ = range_image_to_points(image, extrinsic, beam_inclinations(
        proto.beam_inclinations, proto.beam_inclination_min, proto.beam_inclination_max, 64))
    assert np.linalg.norm(unposed[:, :3] - known[TOP, 1][:, :3], axis=1).max() > 0.3


@needs_protos
def test_frame_errors_name_file_and_record(tmp_path, round_trip):
    frame, _ = round_trip
    no_calibration = dataset_pb2.Frame()
    no_calibration.CopyFrom(frame)
    del no_calibration.context.laser_calibrations[:]
    wrong_rows = dataset_pb2.Frame()
    wrong_rows.CopyFrom(frame)
    wrong_rows.lasers[0].ri_return1.range_image_compressed = encode_matrix(np.ones((32, 2650, 4)))
    not_zlib = dataset_pb2.Frame()
    not_zlib.CopyFrom(frame)
    not_zlib.lasers[1].ri_return2.range_image_compressed = b"not zlib"
    no_pose = dataset_pb2.Frame()
    no_pose.CopyFrom(frame)
    no_pose.ClearField("pose")
    records = [no_calibration.SerializeToString(), wrong_rows.SerializeToString(), not_zlib.SerializeToString(),
               b"\xff\xff not a frame", no_pose.SerializeToString()]
    path = tfrecord.write_records(tmp_path / "bad.tfrecord", records)
    expected = ["lidar TOP return 1: no laser calibration", "64 beam inclinations but the range image has 32 rows",
                "lidar FRONT return 2 range image: not zlib data", "not a waymo.open_dataset.Frame",
                "frame pose has 0 values"]
    tasks = waymo.build_tasks([path], "training")
    assert len(tasks) == len(expected)
    for task, message in zip(tasks, expected):
        with pytest.raises(ConversionError) as err:
            waymo.convert_one(task)
        assert str(err.value).startswith(f"{path} (record {task.index}): ") and message in str(err.value)


# ------------------------------------------------------------------------------------------ command line
def write_segment(path, frame, count, first_timestamp, context_name=None):
    """A TFRecord of ``count`` copies of ``frame``, 0.1 s apart; returns its path and records."""
    records = []
    for index in range(count):
        copy = dataset_pb2.Frame()
        copy.CopyFrom(frame)
        copy.timestamp_micros = first_timestamp + 100_000 * index
        copy.context.name = context_name or frame.context.name
        records.append(copy.SerializeToString())
    return tfrecord.write_records(path, records), records


@needs_protos
def test_cli_runs_twice_with_two_workers(tmp_path, round_trip, capsys):
    frame, _ = round_trip
    raw = tmp_path / "waymo_format" / "validation"
    raw.mkdir(parents=True)
    write_segment(raw / "segment-a.tfrecord", frame, 2, frame.timestamp_micros, "scene_a")
    write_segment(raw / "segment-b.tfrecord", frame, 2, frame.timestamp_micros + 10 ** 7, "scene_b")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "data_converters.waymo", "--root", str(tmp_path / "waymo_format"),
               "--split", "validation", "--out", str(out), "--workers", "2"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "converted 4, already done 0, failed 0" in run.stdout
    info_file = out / "waymo_infos_validation.pkl"
    first = info_file.read_bytes()

    assert waymo.main(["--root", str(tmp_path / "waymo_format"), "--split", "validation", "--out", str(out),
                       "--workers", "2"]) == 0
    assert "converted 0, already done 4, failed 0" in capsys.readouterr().out
    assert pickle.loads(info_file.read_bytes()) == pickle.loads(first)

    with open(info_file, "rb") as f:
        info = pickle.load(f)
    meta = info["metainfo"]
    assert meta["dataset"] == "waymo" and meta["point_columns"] == list(COLUMNS) and meta["failed"] == []
    assert meta["categories"] == {"Car": 0, "Pedestrian": 1, "Cyclist": 2}
    entries = info["data_list"]
    assert [(e["lidar_points"]["lidar_path"], e["frame_index"]) for e in entries] == [
        ("segment-a_0000.bin", 0), ("segment-a_0001.bin", 1), ("segment-b_0000.bin", 0), ("segment-b_0001.bin", 1)]
    assert [e["sample_idx"] for e in entries] == [1_000_000, 1_000_001, 1_001_000, 1_001_001]
    assert entries[1]["timestamp"] - entries[0]["timestamp"] == pytest.approx(0.1)

    dataset = LidarSweeps(info_file=str(info_file), data_prefix={"pts": "points"})
    assert len(dataset) == 4
    item = dataset[2]
    stored = np.fromfile(out / "points" / "segment-b_0000.bin", "<f4").reshape(-1, 6)
    assert item["points"].shape == stored.shape and np.array_equal(item["points"].numpy(), stored)
    assert np.allclose(item["pose"].numpy(), np.asarray(frame.pose.transform).reshape(4, 4))
    assert item["timestamp"] == pytest.approx(frame.timestamp_micros / 1e6 + 10)


@needs_protos
def test_cli_skips_bad_records_and_reports_them(tmp_path, round_trip, capsys):
    frame, _ = round_trip
    raw = tmp_path / "raw"
    raw.mkdir()
    path, records = write_segment(raw / "segment-bad.tfrecord", frame, 3, frame.timestamp_micros)
    data = bytearray(path.read_bytes())
    second = tfrecord.index_records(path)[1]
    data[second.offset + 1000] ^= 0x01                       # record 1: bad payload CRC
    data += tfrecord.encode_record(records[0])[:500]          # record 3: cut short
    path.write_bytes(bytes(data))

    out = tmp_path / "skip"
    assert waymo.main(["--root", str(raw), "--out", str(out), "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "converted 2, already done 0, failed 2" in printed
    with open(out / "waymo_infos_training.pkl", "rb") as f:
        info = pickle.load(f)
    failed = info["metainfo"]["failed"]
    assert [(f["source"], f["index"]) for f in failed] == [(str(path), 1), (str(path), 3)]
    assert "bad payload CRC" in failed[0]["error"] and "truncated" in failed[1]["error"]
    assert [e["frame_index"] for e in info["data_list"]] == [0, 2]
    assert sorted(p.name for p in (out / "points").iterdir()) == ["segment-bad_0000.bin", "segment-bad_0002.bin"]

    assert waymo.main(["--root", str(raw), "--out", str(tmp_path / "stop")]) == 1
    assert f"{path} (record 1): bad payload CRC" in capsys.readouterr().err


@needs_protos
def test_cli_flipped_length_bit_and_empty_file_are_reported(tmp_path, round_trip, capsys):
    frame, _ = round_trip
    raw = tmp_path / "raw"
    raw.mkdir()
    path, records = write_segment(raw / "segment-a.tfrecord", frame, 3, frame.timestamp_micros)
    data = bytearray(path.read_bytes())
    second = tfrecord.index_records(path)[1]
    data[second.offset - 12 + 2] ^= 0x01  # record 1's length field
    path.write_bytes(bytes(data))
    (raw / "segment-b.tfrecord").write_bytes(b"")
    out = tmp_path / "skip"
    assert waymo.main(["--root", str(raw), "--out", str(out), "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "converted 2, already done 0, failed 2" in printed
    with open(out / "waymo_infos_training.pkl", "rb") as f:
        info = pickle.load(f)
    assert [e["frame_index"] for e in info["data_list"]] == [0, 2]  # record 2 survives the damage before it
    failed = info["metainfo"]["failed"]
    assert [(Path(f["source"]).name, f["index"]) for f in failed] == [("segment-a.tfrecord", 1),
                                                                        ("segment-b.tfrecord", 0)]
    assert "bad length CRC" in failed[0]["error"] and f"({len(records[1]) + 16} bytes) unreadable" in failed[0]["error"]
    assert failed[1]["error"] == f"{raw / 'segment-b.tfrecord'} (record 0): empty file, no records"
    # only damaged input: no info file of 0 frames, exit 1
    (raw / "segment-a.tfrecord").unlink()
    assert waymo.main(["--root", str(raw), "--out", str(tmp_path / "none"), "--on-error", "skip"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == ("error: no waymo frame converted: all 1 failed (listed above); no info file "
                                    "written")
    assert not (tmp_path / "none" / "waymo_infos_training.pkl").exists()


def test_cli_reports_missing_input_and_missing_protos(tmp_path, capsys, monkeypatch):
    assert waymo.main(["--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert f"no *.tfrecord files in {tmp_path}" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "waymo_open_dataset", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "waymo_open_dataset.dataset_pb2", None)
    assert waymo.main(["--root", str(val_path()), "--out", str(tmp_path / "out")]) == 1
    assert "pip install --no-deps waymo-open-dataset-tf-2-12-0==1.6.7" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ throughput
@needs_protos
@pytest.mark.slow
def test_full_size_frame_throughput(tmp_path):
    path = tfrecord.write_records(tmp_path / "full.tfrecord", [full_size_frame(val_frame()).SerializeToString()])
    (task,) = waymo.build_tasks([path], "training")
    start = time.perf_counter()
    runs = 3
    for _ in range(runs):
        result = waymo.convert_one(task)
    seconds = (time.perf_counter() - start) / runs
    assert 180_000 < len(result.points) < 200_000
    print(f"\nWaymo full-size frame: {len(result.points)} points, {seconds * 1000:.0f} ms "
          f"({1 / seconds:.1f} frames/s per worker; record {path.stat().st_size / 1e6:.1f} MB)")
