"""Seeded fuzz of the KITTI, Waymo and folder converters on damaged copies of real data (written under tmp).

Each case damages one input (truncation, byte / bit flips, NaN / inf, empty files, missing calibration / labels /
images, absurd values, a re-run with other settings), runs the converter's ``main`` in-process and classifies the
outcome. Clean outcomes:

* ``converted`` / ``skipped``: exit 0 and an info file whose every entry is valid (points file of
  N x len(point_columns) float32 values, N >= the case's minimum or a flagged label-only frame, every value finite,
  every number in the entry finite, stored points equal to a fresh read of the intact source, nothing silently
  dropped); each failure listed in metainfo["failed"] is printed on a ``  failed:`` line;
* ``error``: exit != 0, exactly one stderr line ``error: ...``, no info file written by the run.

Anything else (an exception escaping ``main``, exit 0 with garbage or with damage left unreported, a multi-line
error, a temp file left behind) is ``unclean``. Run as a script for the table of outcomes::

    python tests/test_converter_fuzz.py [--seed 0] [--converter kitti|waymo|folder]

(with ``PYTHONPATH=<old copy of data_converters>:.`` the same harness measures another version of the converters).
"""
from __future__ import annotations

import contextlib
import io
import math
import pickle
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

if __name__ == "__main__":  # run as a script: the repository root is the parent of tests/
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from tests.shared_data import shared_data_root  # noqa: E402

SEED = 0
CLEAN = ("converted", "skipped", "error")


@dataclass
class Run:
    """One converter run of a case: its argv; ``check(info, stdout) -> [problems]`` adds case-specific checks."""

    module: str
    argv: List[str]
    info_name: str
    min_points: int = 1
    check: Optional[Callable[[dict, str], List[str]]] = None
    before: List[List[str]] = field(default_factory=list)  # earlier runs into the same --out (not classified)


# ------------------------------------------------------------------------------------------------ classification
def run_main(module: str, argv: List[str]):
    """(exit code, stdout, stderr, escaped exception) of ``data_converters.<module>.main(argv)``."""
    converter = __import__(f"data_converters.{module}", fromlist=["main"])
    out, err = io.StringIO(), io.StringIO()
    exc = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = converter.main(argv)
        except SystemExit as stop:  # argparse
            rc = stop.code if isinstance(stop.code, int) else 1
        except Exception as escaped:  # noqa: BLE001 - the unclean outcome being counted
            rc, exc = None, escaped
    return rc, out.getvalue(), err.getvalue(), exc


def finite_numbers(value, where="entry") -> List[str]:
    """Places of NaN/inf numbers in an info entry (velocities may be NaN by convention)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() if k != "velocity" for p in finite_numbers(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in finite_numbers(v, f"{where}[{i}]")]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return [where]
    return []


def validate_info(info: dict, out: Path, min_points: int) -> List[str]:
    """Problems of an info file written with exit 0 (see the module docstring)."""
    problems, names = [], []
    if not info.get("data_list"):
        return ["exit 0 with an info file of 0 frames"]
    columns = len(info["metainfo"]["point_columns"])
    for entry in info["data_list"]:
        path = entry["lidar_points"]["lidar_path"]
        if path.endswith(".bin.bin"):
            names.append(f"points file named {path}")
        data = np.fromfile(out / "points" / path, "<f4")
        if data.size % columns:
            problems.append(f"{path}: {data.size} values are not N x {columns}")
            continue
        points = data.reshape(-1, columns)
        if len(points) == 0 and not entry.get("label_only"):
            problems.append(f"{path}: empty points file listed in the info file")
        elif 0 < len(points) < min_points:
            problems.append(f"{path}: {len(points)} points (< {min_points})")
        if not np.isfinite(points).all():
            problems.append(f"{path}: NaN/inf values written")
        if entry["lidar_points"].get("num_points", len(points)) != len(points):
            problems.append(f"{path}: num_points disagrees with the file")
        problems += [f"{path}: NaN/inf at {p}" for p in finite_numbers(entry)[:1]]
    return problems + names  # a wrong file name is reported after the problems of the contents


def classify(run: Run, out: Path) -> str:
    """'converted' | 'skipped' | 'error' | 'unclean: <why>' of the last run of a case."""
    info_path = out / run.info_name
    for argv in run.before:
        run_main(run.module, argv)
    before = info_path.read_bytes() if info_path.exists() else None
    rc, stdout, stderr, exc = run_main(run.module, run.argv)
    if exc is not None:
        return f"unclean: {type(exc).__name__} escaped main ({str(exc)[:80]})"
    if [p for p in out.rglob(".*") if ".tmp-" in p.name]:
        return "unclean: temp files left"
    if rc != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return f"unclean: exit {rc} with {len(lines)} stderr lines"
        after = info_path.read_bytes() if info_path.exists() else None
        if after != before:
            return "unclean: a failed run wrote the info file"
        return "error"
    if not info_path.exists():
        return "unclean: exit 0 without an info file"
    with open(info_path, "rb") as f:
        info = pickle.load(f)
    problems = validate_info(info, out, run.min_points)
    if run.check is not None and all("points file named" in p for p in problems):
        problems = run.check(info, stdout) + problems
    if problems:
        return f"unclean: {problems[0]}"
    failed = info["metainfo"].get("failed", [])
    if stdout.count("  failed: ") < len(failed):
        return "unclean: failures not printed"
    return "skipped" if failed else "converted"


# ------------------------------------------------------------------------------------------------ helpers
def data_path(*parts) -> Path:
    path = shared_data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not found at {path}")
    return path


def flip_bytes(data: bytes, rng, count: int, start: int = 0, end: Optional[int] = None) -> bytes:
    data = bytearray(data)
    end = len(data) if end is None else end
    for position in rng.integers(start, end, count):
        data[position] ^= int(rng.integers(1, 256))
    return bytes(data)


def with_value(text: str, name: str, value: float, index: int = 0) -> str:
    """Calibration text with entry ``index`` of line ``name`` set to ``value``."""
    lines = []
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            numbers = line.split()[1:]
            numbers[index] = repr(value)
            line = f"{name}: {' '.join(numbers)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ KITTI
def kitti_cases(rng) -> Dict[str, Callable[[Path, Path], Run]]:
    """Frames 000000 (intact) and 000001 (damaged) of the real KITTI subset."""
    kitti = data_path("openpcdet", "data", "kitti", "training")
    velodyne = np.fromfile(kitti / "velodyne" / "000001.bin", "<f4").reshape(-1, 4)
    calib = (kitti / "calib" / "000001.txt").read_text()
    labels = (kitti / "label_2" / "000001.txt").read_text()
    label_lines = labels.splitlines()
    image = (kitti / "image_2" / "000001.png").read_bytes()

    def points_with(rows, column, value):
        points = velodyne.copy()
        points[rows, column] = value
        return points.tobytes()

    some_rows = rng.integers(0, len(velodyne), 7)
    cut = int(rng.integers(200, len(velodyne))) * 16
    label_fields = label_lines[0].split()
    damage = {
        "velodyne empty": ("velodyne", b""),
        "velodyne 1 point": ("velodyne", velodyne[:1].tobytes()),
        "velodyne 99 points": ("velodyne", velodyne[:99].tobytes()),
        "velodyne cut mid-point": ("velodyne", velodyne.tobytes()[:cut + int(rng.integers(1, 16))]),
        "velodyne cut at a point": ("velodyne", velodyne.tobytes()[:cut]),
        "velodyne NaN x": ("velodyne", points_with(some_rows, 0, np.nan)),
        "velodyne inf z": ("velodyne", points_with(some_rows, 2, -np.inf)),
        "velodyne NaN intensity": ("velodyne", points_with(some_rows, 3, np.nan)),
        "velodyne 3e30 m": ("velodyne", points_with(some_rows[:1], 1, 3e30)),
        "velodyne all NaN": ("velodyne", np.full_like(velodyne, np.nan).tobytes()),
        "velodyne byte flips": ("velodyne", flip_bytes(velodyne.tobytes(), rng, 16)),
        "calib missing": ("calib", None),
        "calib empty": ("calib", ""),
        "calib without Tr_velo_to_cam": ("calib", "\n".join(l for l in calib.splitlines()
                                                            if not l.startswith("Tr_velo_to_cam")) + "\n"),
        "calib NaN P2": ("calib", with_value(calib, "P2", float("nan"), 2)),
        "calib inf R0_rect": ("calib", with_value(calib, "R0_rect", float("inf"), 4)),
        "calib R0_rect x10": ("calib", with_value(calib, "R0_rect", 10.0, 0)),
        "calib char flips": ("calib", "".join(c if rng.random() > 0.004 else str(rng.choice(list("0123456789.-e q")))
                                              for c in calib)),
        "calib binary garbage": ("calib", rng.integers(0, 256, 600, dtype=np.uint8).tobytes()),
        "labels missing": ("label_2", None),
        "labels NaN location": ("label_2", "\n".join([" ".join(label_fields[:11] + ["nan"] + label_fields[12:]),
                                                      *label_lines[1:]]) + "\n"),
        "labels negative size": ("label_2", "\n".join([" ".join(label_fields[:8] + ["-1.6"] + label_fields[9:]),
                                                       *label_lines[1:]]) + "\n"),
        "labels cut mid-line": ("label_2", labels[: len(label_lines[0]) + 20]),
        "labels binary garbage": ("label_2", rng.integers(0, 256, 300, dtype=np.uint8).tobytes()),
        "image missing": ("image_2", None),
        "image cut to 20 bytes": ("image_2", image[:20]),
        "image IHDR flip": ("image_2", flip_bytes(image[:4096], rng, 1, 16, 24) + image[4096:]),
    }
    suffix = {"velodyne": ".bin", "calib": ".txt", "label_2": ".txt", "image_2": ".png"}

    def label_count_check(expected_lines: Optional[int]):
        def check(info, _stdout) -> List[str]:
            problems = []
            for entry in info["data_list"]:
                calib_rotation = np.asarray(entry["images"]["CAM2"]["lidar2cam"])[:3, :3]
                if np.abs(calib_rotation @ calib_rotation.T - np.eye(3)).max() > 0.01:
                    problems.append(f"frame {entry['token']}: lidar2cam is not a rotation")
                if "height" not in entry["images"]["CAM2"]:
                    problems.append(f"frame {entry['token']}: no CAM2 image size (KittiMetric needs it)")
                for instance in entry["instances"]:
                    if instance["bbox_label_3d"] >= 0 and min(instance["bbox_3d"][3:6]) <= 0:
                        problems.append(f"frame {entry['token']}: a box with a size <= 0")
                if entry["token"] == "000001" and expected_lines is not None \
                        and len(entry["instances"]) != expected_lines:
                    problems.append(f"frame 000001: {len(entry['instances'])} instances, the label file has "
                                    f"{expected_lines} lines")
                far = np.abs(np.fromfile(info["_out"] / "points" / entry["lidar_points"]["lidar_path"], "<f4")
                             .reshape(-1, 4)[:, :3]).max()
                if far > 1000:
                    problems.append(f"frame {entry['token']}: a point {far:.3g} m away")
            return problems
        return check

    cases = {}
    for name, (folder, content) in damage.items():
        def make(tmp: Path, out: Path, folder=folder, content=content) -> Run:
            root = tmp / "kitti"
            for sub in ("velodyne", "calib", "label_2", "image_2"):
                (root / "training" / sub).mkdir(parents=True)
                for frame in ("000000", "000001"):
                    name = f"{frame}{suffix[sub]}"
                    (root / "training" / sub / name).symlink_to(kitti / sub / name)
            target = root / "training" / folder / f"000001{suffix[folder]}"
            target.unlink()
            if content is not None:
                target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
            expected = len(label_lines) if folder != "label_2" or content is None else None
            on_error = "skip" if rng.random() < 0.5 else "stop"
            check = label_count_check(expected)
            return Run("kitti", ["--root", str(root), "--out", str(out), "--on-error", on_error],
                       "kitti_infos_training.pkl", min_points=100,
                       check=lambda info, stdout: check({**info, "_out": out}, stdout))
        cases[name] = make
    return cases


# ------------------------------------------------------------------------------------------------ Waymo
def waymo_records(rng) -> List[bytes]:
    """Four serialized Frames: the real frame (calibrations, pose, 18 labels) with a TOP range image built from
    20,000 real Waymo points (OpenPCDet's 0004.npy), timestamps 0.1 s apart."""
    pytest.importorskip("waymo_open_dataset", reason="needs pip install --no-deps waymo-open-dataset-tf-2-12-0")
    from waymo_open_dataset import dataset_pb2

    from data_converters import tfrecord
    from data_converters.waymo_range_image import beam_inclinations, encode_matrix, points_to_range_image

    raw = data_path("mmdet3d", "tests", "data", "waymo", "waymo_format", "validation", "val.tfrecord")
    frame = dataset_pb2.Frame()
    frame.ParseFromString(tfrecord.read_record(raw, tfrecord.index_records(raw)[0]))
    cloud = np.load(data_path("openpcdet", "pcdet", "datasets", "waymo", "0004.npy"))
    cloud = cloud[np.random.default_rng(0).choice(len(cloud), 20000, replace=False)]
    (top,) = [c for c in frame.context.laser_calibrations if c.name == 1]
    extrinsic = np.asarray(top.extrinsic.transform, np.float64).reshape(4, 4)
    inclinations = beam_inclinations(top.beam_inclinations, top.beam_inclination_min, top.beam_inclination_max, 64)
    features = np.column_stack([cloud[:, 3:5], np.zeros(len(cloud))]).astype(np.float32)
    image, _ = points_to_range_image(cloud[:, :3].astype(np.float64), features, extrinsic, inclinations, 650)
    records = []
    for index in range(4):
        copy = dataset_pb2.Frame()
        copy.CopyFrom(frame)
        copy.timestamp_micros = frame.timestamp_micros + 100_000 * index
        copy.lasers.add(name=1).ri_return1.range_image_compressed = encode_matrix(image)
        records.append(copy.SerializeToString())
    nan_image = image.copy()
    nan_image[image[..., 0] > 0, 1] = np.nan  # intensity NaN where there is a return
    nan_frame = dataset_pb2.Frame()
    nan_frame.ParseFromString(records[1])
    nan_frame.lasers[0].ri_return1.range_image_compressed = encode_matrix(nan_image)
    frame.timestamp_micros += 100_000  # the stripped real frame stands in for record 1
    return records + [frame.SerializeToString(), nan_frame.SerializeToString()]


def waymo_cases(rng) -> Dict[str, Callable[[Path, Path], Run]]:
    from data_converters import tfrecord

    records = waymo_records(rng)
    frames, stripped, nan_frame = records[:4], records[4], records[5]
    encoded = [tfrecord.encode_record(r) for r in frames]
    starts = np.cumsum([0] + [len(e) for e in encoded[:3]])  # record offsets in file A (records 0-2)
    file_a = b"".join(encoded[:3])
    from waymo_open_dataset import dataset_pb2

    parsed = dataset_pb2.Frame()
    parsed.ParseFromString(frames[0])
    stamps = [parsed.timestamp_micros + 100_000 * i for i in range(4)]

    def at(record: int, field_offset: int) -> int:
        return int(starts[record]) + field_offset

    def flip_bit(data: bytes, position: int) -> bytes:
        data = bytearray(data)
        data[position] ^= 1 << int(rng.integers(0, 8))
        return bytes(data)

    length_a = len(file_a)
    random_flips = sorted(int(p) for p in rng.integers(0, length_a, 6))
    damaged_by_flips = sorted({int(np.searchsorted(starts, p, side="right") - 1) for p in random_flips})
    cut = int(rng.integers(int(starts[2]) + 12, length_a - 1))
    # case -> (file A bytes, file B bytes, intact record indices (timestamps expected), damaged record count)
    variants = {
        "intact": (file_a, encoded[3], [0, 1, 2, 3], 0),
        "length bit flip in record 1": (flip_bit(file_a, at(1, int(rng.integers(0, 8)))), encoded[3], [0, 2, 3], 1),
        "length CRC bit flip in record 1": (flip_bit(file_a, at(1, int(rng.integers(8, 12)))), encoded[3],
                                            [0, 2, 3], 1),
        "payload bit flip in record 1": (flip_bit(file_a, at(1, int(rng.integers(12, len(encoded[1]) - 4)))),
                                         encoded[3], [0, 2, 3], 1),
        "data CRC bit flip in record 1": (flip_bit(file_a, at(1, len(encoded[1]) - int(rng.integers(1, 5)))),
                                          encoded[3], [0, 2, 3], 1),
        "cut inside record 2": (file_a[:cut], encoded[3], [0, 1, 3], 1),
        "cut inside the header of record 2": (file_a[:int(starts[2]) + int(rng.integers(1, 12))], encoded[3],
                                              [0, 1, 3], 1),
        "garbage appended": (file_a + rng.integers(0, 256, 50, dtype=np.uint8).tobytes(), encoded[3], [0, 1, 2, 3], 1),
        "empty second file": (file_a, b"", [0, 1, 2], 1),
        "both files empty": (b"", b"", [], 2),
        "random byte flips": (bytes(_flip_at(file_a, random_flips, rng)), encoded[3],
                              [i for i in (0, 1, 2) if i not in damaged_by_flips] + [3], len(damaged_by_flips)),
        "record 1 without range images": (encoded[0] + tfrecord.encode_record(stripped) + encoded[2], encoded[3],
                                          [0, 2, 3], 0),
        "record 1 not a Frame": (encoded[0] + tfrecord.encode_record(rng.integers(0, 256, 500, np.uint8).tobytes())
                                 + encoded[2], encoded[3], [0, 2, 3], 1),
        "record 1 NaN intensity": (encoded[0] + tfrecord.encode_record(nan_frame) + encoded[2], encoded[3],
                                   [0, 2, 3], 1),
    }

    cases = {}
    for name, (a, b, intact, damaged) in variants.items():
        def make(tmp: Path, out: Path, a=a, b=b, intact=intact, damaged=damaged, name=name) -> Run:
            root = tmp / "waymo"
            root.mkdir()
            (root / "segment-a.tfrecord").write_bytes(a)
            (root / "segment-b.tfrecord").write_bytes(b)
            label_only = name == "record 1 without range images"

            def check(info, _stdout) -> List[str]:
                got = {e["timestamp_micros"]: e for e in info["data_list"]}
                problems = [f"intact record at {stamps[i]} missing" for i in intact
                            if stamps[i] not in got and not (label_only and i == 1)]
                if label_only:
                    entry = got.get(stamps[1])
                    reported = len(info["metainfo"].get("failed", [])) >= 1
                    if not reported and not (entry and entry.get("label_only")):
                        problems.append("label-only frame dropped without a word")
                if len(info["metainfo"].get("failed", [])) < damaged:
                    problems.append(f"{damaged} damaged record(s), {len(info['metainfo'].get('failed', []))} "
                                    f"reported")
                return problems

            on_error = "skip" if rng.random() < 0.7 else "stop"
            return Run("waymo", ["--root", str(root), "--out", str(out), "--on-error", on_error],
                       "waymo_infos_training.pkl", min_points=100, check=check)
        cases[name] = make
    return cases


def _flip_at(data: bytes, positions, rng) -> bytearray:
    data = bytearray(data)
    for position in positions:
        data[position] ^= int(rng.integers(1, 256))
    return data


# ------------------------------------------------------------------------------------------------ folder
def folder_cases(rng) -> Dict[str, Callable[[Path, Path], Run]]:
    from pcmae.io import load_points

    kitti = data_path("openpcdet", "data", "kitti", "training", "velodyne")
    sweeps = [np.fromfile(kitti / f"{i:06d}.bin", "<f4").reshape(-1, 4)[:3000] for i in range(3)]
    nuscenes = data_path("mmdet3d", "demo", "data", "nuscenes",
                         "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin")
    lamppost = data_path("pcl", "test", "lamppost.pcd").read_bytes()
    las = data_path("laspy", "tests", "data", "simple.las")

    def with_rows(points, column, value, count=5):
        points = points.copy()
        points[rng.integers(0, len(points), count), column] = value
        return points.tobytes()

    def expected_check(out: Path, read: Callable[[Path, dict], Optional[np.ndarray]], sources: Dict[str, Path]):
        """Stored points equal a fresh read of each intact source (``read`` returns None for damaged ones)."""
        def check(info, _stdout) -> List[str]:
            columns = len(info["metainfo"]["point_columns"])
            problems = []
            for entry in info["data_list"]:
                stored = np.fromfile(out / "points" / entry["lidar_points"]["lidar_path"], "<f4").reshape(-1, columns)
                expected = read(sources[entry["token"]], info["metainfo"])
                if expected is not None and (expected.shape != stored.shape or not np.array_equal(expected, stored)):
                    problems.append(f"{entry['token']}: stored points {stored.shape} differ from the source read "
                                    f"with the info file's columns {expected.shape}")
            return problems
        return check

    def read_bin(path: Path, meta) -> Optional[np.ndarray]:
        layout = {3: "xyz", 4: "kitti", 5: "nuscenes"}[len(meta["point_columns"])]
        try:
            return load_points(path, layout=layout, drop_nonfinite=True)
        except Exception:  # noqa: BLE001 - a damaged source: nothing to compare
            return None

    bin_damage = {
        "bin empty": b"",
        "bin 1 point": sweeps[1][:1].tobytes(),
        "bin 20 bytes": sweeps[1].tobytes()[:20],
        "bin cut mid-point": sweeps[1].tobytes()[: int(rng.integers(20, 3000)) * 16 + 7],
        "bin NaN rows (dropped by design)": with_rows(sweeps[1], 0, np.nan),
        "bin all NaN": np.full_like(sweeps[1], np.nan).tobytes(),
        "bin inf intensity": with_rows(sweeps[1], 3, np.inf),
        "bin byte flips": flip_bytes(sweeps[1].tobytes(), rng, 12),
    }
    cases = {}
    for name, content in bin_damage.items():
        def make(tmp: Path, out: Path, content=content) -> Run:
            root = tmp / "drive"
            root.mkdir()
            for i, points in enumerate(sweeps):
                (root / f"{i:06d}.bin").write_bytes(content if i == 1 else points.tobytes())
            sources = {f"{i:06d}.bin": root / f"{i:06d}.bin" for i in range(3)}
            on_error = "skip" if rng.random() < 0.5 else "stop"
            return Run("folder", ["--root", str(root), "--out", str(out), "--layout", "kitti", "--on-error", on_error],
                       "folder_infos_all.pkl", check=expected_check(out, read_bin, sources))
        cases[name] = make

    def rerun_columns(tmp: Path, out: Path) -> Run:
        root = tmp / "nus"
        root.mkdir()
        (root / nuscenes.name).symlink_to(nuscenes)
        first = ["--root", str(root), "--out", str(out), "--layout", "nuscenes", "--columns", "intensity"]
        return Run("folder", ["--root", str(root), "--out", str(out), "--layout", "nuscenes"], "folder_infos_all.pkl",
                   check=expected_check(out, lambda path, meta: _read_columns(path, meta), {nuscenes.name: nuscenes}),
                   before=[first])
    cases["re-run with other --columns"] = rerun_columns

    def rerun_layout(tmp: Path, out: Path) -> Run:
        root = tmp / "drive"
        root.mkdir()
        for i, points in enumerate(sweeps):
            (root / f"{i:06d}.bin").write_bytes(points.tobytes())
        sources = {f"{i:06d}.bin": root / f"{i:06d}.bin" for i in range(3)}
        first = ["--root", str(root), "--out", str(out), "--layout", "xyz"]
        return Run("folder", ["--root", str(root), "--out", str(out), "--layout", "kitti"], "folder_infos_all.pkl",
                   check=expected_check(out, read_bin, sources), before=[first])
    cases["re-run with another --layout"] = rerun_layout

    def pcd(content: bytes):
        def make(tmp: Path, out: Path) -> Run:
            root = tmp / "pcd"
            root.mkdir()
            (root / "a.pcd").write_bytes(lamppost)
            (root / "b.pcd").write_bytes(content)
            return Run("folder", ["--root", str(root), "--out", str(out), "--on-error", "skip"], "folder_infos_all.pkl",
                       check=expected_check(out, lambda path, meta: load_points(path) if path.name == "a.pcd" else None,
                                            {"a.pcd": root / "a.pcd", "b.pcd": root / "b.pcd"}))
        return make
    cut = int(rng.integers(200, len(lamppost) - 100))
    cases["pcd cut mid-file"] = pcd(lamppost[:cut])
    cases["pcd header claims 100x points"] = pcd(lamppost.replace(b"POINTS 1771", b"POINTS 177100"))
    cases["pcd empty"] = pcd(b"")

    def npy(content: bytes):
        def make(tmp: Path, out: Path) -> Run:
            root = tmp / "npy"
            root.mkdir()
            np.save(root / "a.npy", sweeps[0])
            (root / "b.npy").write_bytes(content)
            return Run("folder", ["--root", str(root), "--out", str(out), "--on-error", "skip"], "folder_infos_all.pkl",
                       check=expected_check(out, lambda path, meta: np.load(path) if path.name == "a.npy" else None,
                                            {"a.npy": root / "a.npy", "b.npy": root / "b.npy"}))
        return make
    buffer = io.BytesIO()
    np.save(buffer, sweeps[1])
    cases["npy cut"] = npy(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer1d = io.BytesIO()
    np.save(buffer1d, sweeps[1].ravel())
    cases["npy 1-D"] = npy(buffer1d.getvalue())

    def las_lossy(tmp: Path, out: Path) -> Run:
        import laspy

        root = tmp / "survey"
        root.mkdir()
        (root / las.name).symlink_to(las)
        survey = np.asarray(laspy.read(las).xyz, np.float64)

        def check(info, _stdout) -> List[str]:
            entry = info["data_list"][0]
            stored = np.fromfile(out / "points" / entry["lidar_points"]["lidar_path"], "<f4").reshape(-1, 3)
            pose = np.asarray(entry["lidar2global"], np.float64)
            error = np.abs(stored.astype(np.float64) @ pose[:3, :3].T + pose[:3, 3] - survey).max()
            return [f"LAS coordinates off by {error:.3f} m after the float32 cast"] if error > 1e-3 else []
        return Run("folder", ["--root", str(root), "--out", str(out)], "folder_infos_all.pkl", check=check)
    cases["las survey coordinates without an origin"] = las_lossy

    def poses(text: str):
        def make(tmp: Path, out: Path) -> Run:
            root = tmp / "drive"
            root.mkdir()
            for i, points in enumerate(sweeps):
                (root / f"{i:06d}.bin").write_bytes(points.tobytes())
            (tmp / "poses.txt").write_text(text)
            return Run("folder", ["--root", str(root), "--out", str(out), "--layout", "kitti", "--poses",
                                  str(tmp / "poses.txt")], "folder_infos_all.pkl")
        return make
    identity = "1 0 0 0 0 1 0 0 0 0 1 0"
    cases["poses NaN"] = poses(f"{identity}\n1 0 0 nan 0 1 0 0 0 0 1 0\n{identity}\n")
    cases["poses one short"] = poses(f"{identity}\n{identity}\n")
    cases["poses binary garbage"] = poses("\x00\x01\x02garbage\n")

    def empty_folder(tmp: Path, out: Path) -> Run:
        (tmp / "empty").mkdir()
        return Run("folder", ["--root", str(tmp / "empty"), "--out", str(out)], "folder_infos_all.pkl")
    cases["empty folder"] = empty_folder
    return cases


def _read_columns(path: Path, meta) -> np.ndarray:
    from pcmae.io import load_points

    fields = [c for c in meta["point_columns"][3:]]
    return load_points(path, layout="nuscenes", fields=fields, drop_nonfinite=True)


# ------------------------------------------------------------------------------------------------ driver
CONVERTERS = {"kitti": kitti_cases, "waymo": waymo_cases, "folder": folder_cases}


def fuzz(converter: str, seed: int = SEED, tmp_root: Optional[Path] = None) -> Dict[str, str]:
    """{case name: outcome} of every case of one converter, each in a fresh folder under ``tmp_root``."""
    rng = np.random.default_rng([seed, list(CONVERTERS).index(converter)])
    cases = CONVERTERS[converter](rng)
    outcomes = {}
    with tempfile.TemporaryDirectory(dir=tmp_root) as scratch:
        for number, (name, make) in enumerate(cases.items()):
            case_dir = Path(scratch) / f"case{number}"
            case_dir.mkdir()
            out = case_dir / "out"
            outcomes[name] = classify(make(case_dir, out), out)
            shutil.rmtree(case_dir, ignore_errors=True)
    return outcomes


@pytest.mark.parametrize("converter", list(CONVERTERS))
def test_every_damaged_input_ends_cleanly(converter, tmp_path):
    outcomes = fuzz(converter, SEED, tmp_path)
    unclean = {name: outcome for name, outcome in outcomes.items() if outcome not in CLEAN}
    assert unclean == {}
    # the damage is seen: most cases end in an error or a skip, the intact baseline converts
    assert sum(outcome in ("error", "skipped") for outcome in outcomes.values()) >= len(outcomes) // 2
    if "intact" in outcomes:
        assert outcomes["intact"] == "converted"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--converter", choices=list(CONVERTERS), action="append")
    args = parser.parse_args(argv)
    import data_converters

    print(f"converters from {Path(data_converters.__file__).parent}, seed {args.seed}")
    total_unclean = 0
    for converter in args.converter or list(CONVERTERS):
        outcomes = fuzz(converter, args.seed)
        counts = {kind: sum(o == kind for o in outcomes.values()) for kind in CLEAN}
        unclean = {n: o for n, o in outcomes.items() if o not in CLEAN}
        total_unclean += len(unclean)
        print(f"{converter}: {len(outcomes)} runs, converted {counts['converted']}, skipped {counts['skipped']}, "
              f"error {counts['error']}, unclean {len(unclean)}")
        for name, outcome in outcomes.items():
            print(f"  {name:45s} {outcome}")
    return 1 if total_unclean else 0


if __name__ == "__main__":
    sys.exit(main())
