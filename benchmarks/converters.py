"""Converter throughput: frames per second per worker, with 1 and 2 workers, into a temp folder.

    python -m benchmarks.converters [--sources kitti folder rosbag waymo nuscenes] [--workers 1 2] [--repeat 4]

Inputs: the real KITTI frames of the shared data (``$PCMAE_SHARED_DATA``, default ``../shared/data``) listed
``--repeat`` times under distinct keys (kitti: the object converter with labels; folder: the velodyne files),
and a ROS2 bag generated from those frames as PointCloud2 (x, y, z, intensity, ring) clouds (needs rosbags);
waymo: 5 x ``--repeat`` full-size synthetic frames (~191k points, 5 lidars, 2 returns) on the real calibrations
of mmdet3d's val.tfrecord, in one TFRecord (needs the Waymo protos); nuscenes: v1.0-mini tables of 20 x
``--repeat`` key frames (10 sweeps each after the first), every lidar file the real 34,688-point demo sweep,
timed through ``convert_nuscenes`` (tables, entries in the main process, then points; needs nuscenes-devkit).
A source is one entry of ``SOURCES``: a function (work folder, repeat) -> ``BenchInput``; it raises ``Skip``
when its data or packages are missing, and the table says why instead of giving numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from benchmarks import shared_data_root
from benchmarks.converter_inputs import full_size_frame
from data_converters import folder, kitti, nuscenes, rosbag, tfrecord, waymo
from data_converters.common import ConversionSummary, FrameTask, run_conversion


class Skip(Exception):
    """A source's inputs are missing: the table gets a row saying why."""


@dataclasses.dataclass
class BenchInput:
    dataset: str
    tasks: List[FrameTask] = dataclasses.field(default_factory=list)
    convert_one: Optional[Callable] = None
    columns: Sequence[str] = ()
    convert: Optional[Callable[[Path, int], ConversionSummary]] = None  # (out, workers): the whole conversion
    note: str = ""

    def run(self, out: Path, workers: int) -> ConversionSummary:
        if self.convert is not None:
            return self.convert(out, workers)
        return run_conversion(dataset=self.dataset, split="bench", tasks=self.tasks, convert_one=self.convert_one,
                              out_dir=out, columns=self.columns, workers=workers, progress=False)


def shared(*parts: str) -> Path:
    path = shared_data_root().joinpath(*parts)
    if not path.exists():
        raise Skip(f"no {path} (set $PCMAE_SHARED_DATA to the shared data folder)")
    return path


def shared_kitti() -> Path:
    return shared("openpcdet", "data", "kitti")


def repeated(tasks: List[FrameTask], repeat: int) -> List[FrameTask]:
    return [dataclasses.replace(t, key=f"{t.key}_r{r}") for r in range(repeat) for t in tasks]


def kitti_input(work: Path, repeat: int) -> BenchInput:
    tasks = kitti.object_tasks(shared_kitti(), "training")
    return BenchInput("kitti", repeated(tasks, repeat), kitti.convert_one, kitti.COLUMNS)


def folder_input(work: Path, repeat: int) -> BenchInput:
    tasks, columns = folder.build_tasks(shared_kitti() / "training" / "velodyne", "kitti", [], None, "kitti")
    return BenchInput("folder", repeated(tasks, repeat), folder.convert_one, columns)


def rosbag_input(work: Path, repeat: int) -> BenchInput:
    try:
        from rosbags.rosbag2 import Writer
        from rosbags.typesys import Stores, get_typestore
    except ImportError as err:
        raise Skip(f"rosbags not installed ({err})") from None

    ts = get_typestore(Stores.ROS2_HUMBLE)
    field = ts.types["sensor_msgs/msg/PointField"]
    fields = [field(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate(("x", "y", "z", "intensity"))]
    fields.append(field(name="ring", offset=16, datatype=4, count=1))  # uint16 after the floats, 2 bytes padding
    sweeps = sorted((shared_kitti() / "training" / "velodyne").glob("*.bin"))
    bag = work / "bench_bag"
    with Writer(bag, version=9) as writer:
        conn = writer.add_connection("/points", rosbag.POINTCLOUD2, typestore=ts)
        for i in range(repeat * len(sweeps)):
            points = np.fromfile(sweeps[i % len(sweeps)], "<f4").reshape(-1, 4)
            record = np.zeros(len(points), np.dtype({"names": ["p", "ring"], "formats": [("<f4", 4), "<u2"],
                                                     "offsets": [0, 16], "itemsize": 20}))
            record["p"] = points
            header = ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](
                sec=i // 10, nanosec=(i % 10) * 100_000_000), frame_id="velodyne")
            msg = ts.types["sensor_msgs/msg/PointCloud2"](
                header=header, height=1, width=len(points), fields=fields, is_bigendian=False, point_step=20,
                row_step=20 * len(points), data=record.view(np.uint8), is_dense=True)
            writer.write(conn, i * 100_000_000, ts.serialize_cdr(msg, rosbag.POINTCLOUD2))
    tasks, _ = rosbag.bag_tasks(bag, "/points", kitti.COLUMNS)
    return BenchInput("rosbag", tasks, rosbag.convert_one, kitti.COLUMNS)


def waymo_input(work: Path, repeat: int) -> BenchInput:
    try:
        calibrated = waymo.dataset_pb2().Frame()
    except ImportError as err:  # says what to install
        raise Skip(str(err)) from None
    val = shared("mmdet3d", "tests", "data", "waymo", "waymo_format", "validation", "val.tfrecord")
    calibrated.ParseFromString(next(tfrecord.iter_records(val)))
    record = full_size_frame(calibrated).SerializeToString()
    path = tfrecord.write_records(work / "segment-bench.tfrecord", [record] * (5 * repeat))
    return BenchInput("waymo", waymo.build_tasks([path], "training"), waymo.convert_one, waymo.COLUMNS)


def shifted(dx: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[0, 3] = dx
    return matrix


def nuscenes_input(work: Path, repeat: int) -> BenchInput:
    """Key frames 0.5 s / 5 m apart with 9 sweeps between them (50 ms / 0.5 m apart): with the previous key frame,
    10 sweeps per frame after the first. Boxes and calibration: the demo frame's; tables written by the tests."""
    import pytest  # the tests' helpers pytest.skip when nuscenes-devkit or their shared data are missing

    try:
        from tests import test_converter_nuscenes as nt

        base = nt.fixture_frames()[nt.DEMO_SCENE][0]
        frames = []
        for i in range(20 * repeat):
            stamp = base.timestamp + 500_000 * i
            sweeps = [{"token": nt.token("bench-sweep", i, j), "timestamp": stamp - 50_000 * (9 - j),
                       "lidar2ego": base.lidar2ego, "lidar2sensor": shifted(0.5 * (9 - j)), "file": base.file}
                      for j in range(9 if i else 0)]
            frames.append(dataclasses.replace(base, token=nt.token("bench", i), timestamp=stamp,
                                              ego2global=shifted(5.0 * i) @ base.ego2global, sweeps=sweeps))
        raw = work / "raw"
        nt.write_tables(raw, {nt.FIXTURE_SCENE: frames})  # a mini_train scene
    except pytest.skip.Exception as err:
        raise Skip(str(err)) from None
    return BenchInput("nuscenes", convert=lambda out, workers: nuscenes.convert_nuscenes(
        raw, out, nt.VERSION, "mini_train", max_sweeps=10, workers=workers),
        note="convert_nuscenes: tables + entries (main process) + points")


SOURCES: Dict[str, Callable[[Path, int], BenchInput]] = {
    "kitti": kitti_input,
    "folder": folder_input,
    "rosbag": rosbag_input,
    "waymo": waymo_input,
    "nuscenes": nuscenes_input,
}


def bench_converters(args) -> List[dict]:
    """Rows {source, frames, workers, seconds, frames/s per worker, note} for args.sources x args.workers; a
    skipped source gives one row whose note says why (numbers "")."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="pcmae_bench_converters_") as tmp:
        for source in args.sources:
            work = Path(tmp) / source
            work.mkdir()
            try:
                bench = SOURCES[source](work, args.repeat)
            except Skip as why:
                numbers = dict.fromkeys(("frames", "workers", "seconds", "frames/s per worker"), "")
                rows.append({"source": source, **numbers, "note": f"skipped: {why}"})
                continue
            for workers in args.workers:
                start = time.perf_counter()
                summary = bench.run(work / f"out_w{workers}", workers)
                seconds = time.perf_counter() - start
                rows.append({"source": source, "frames": summary.converted, "workers": workers,
                             "seconds": seconds, "frames/s per worker": summary.converted / seconds / workers,
                             "note": bench.note})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", choices=sorted(SOURCES), default=list(SOURCES))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=4,
                        help="list the 5 KITTI frames this many times; 5 Waymo, 20 nuScenes frames per repeat")
    rows = bench_converters(parser.parse_args(argv))
    print(f"{'source':<10}{'frames':>8}{'workers':>9}{'seconds':>10}{'frames/s/worker':>17}")
    for r in rows:
        if r["frames"] == "":
            print(f"{r['source']:<10}  {r['note']}")
            continue
        print(f"{r['source']:<10}{r['frames']:>8}{r['workers']:>9}{r['seconds']:>10.2f}"
              f"{r['frames/s per worker']:>17.2f}  {r['note']}")
    return rows


if __name__ == "__main__":
    main()
