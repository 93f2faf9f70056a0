"""Converter throughput: frames per second per worker, with 1 and 2 workers, into a temp folder.

    python -m benchmarks.converters [--sources kitti folder rosbag] [--workers 1 2] [--repeat 4]

Inputs: the real KITTI frames of the shared data (``$PCMAE_SHARED_DATA``, default ``../shared/data``) listed
``--repeat`` times under distinct keys (kitti: the object converter with labels; folder: the velodyne files),
and a ROS2 bag generated from those frames as PointCloud2 (x, y, z, intensity, ring) clouds (needs rosbags).
A source is one entry of ``SOURCES``: a function (work folder, repeat) -> ``BenchInput``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from data_converters import folder, kitti, rosbag
from data_converters.common import FrameTask, run_conversion


@dataclasses.dataclass
class BenchInput:
    dataset: str
    tasks: List[FrameTask]
    convert_one: Callable
    columns: Sequence[str]


def shared_kitti() -> Path:
    root = Path(os.environ.get("PCMAE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "openpcdet" / "data" / "kitti"


def repeated(tasks: List[FrameTask], repeat: int) -> List[FrameTask]:
    return [dataclasses.replace(t, key=f"{t.key}_r{r}") for r in range(repeat) for t in tasks]


def kitti_input(work: Path, repeat: int) -> BenchInput:
    tasks = kitti.object_tasks(shared_kitti(), "training")
    return BenchInput("kitti", repeated(tasks, repeat), kitti.convert_one, kitti.COLUMNS)


def folder_input(work: Path, repeat: int) -> BenchInput:
    tasks, columns = folder.build_tasks(shared_kitti() / "training" / "velodyne", "kitti", [], None, "kitti")
    return BenchInput("folder", repeated(tasks, repeat), folder.convert_one, columns)


def rosbag_input(work: Path, repeat: int) -> BenchInput:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

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


SOURCES: Dict[str, Callable[[Path, int], BenchInput]] = {
    "kitti": kitti_input,
    "folder": folder_input,
    "rosbag": rosbag_input,
}


def bench_converters(args) -> List[dict]:
    """Rows {source, frames, workers, seconds, frames/s per worker} for args.sources x args.workers."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="pcmae_bench_converters_") as tmp:
        for source in args.sources:
            work = Path(tmp) / source
            work.mkdir()
            bench = SOURCES[source](work, args.repeat)
            for workers in args.workers:
                out = work / f"out_w{workers}"
                start = time.perf_counter()
                summary = run_conversion(dataset=bench.dataset, split="bench", tasks=bench.tasks,
                                         convert_one=bench.convert_one, out_dir=out, columns=bench.columns,
                                         workers=workers, progress=False)
                seconds = time.perf_counter() - start
                rows.append({"source": source, "frames": summary.converted, "workers": workers,
                             "seconds": seconds, "frames/s per worker": summary.converted / seconds / workers})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", choices=sorted(SOURCES), default=list(SOURCES))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=4, help="list the 5 KITTI frames this many times")
    rows = bench_converters(parser.parse_args(argv))
    print(f"{'source':<10}{'frames':>8}{'workers':>9}{'seconds':>10}{'frames/s/worker':>17}")
    for r in rows:
        print(f"{r['source']:<10}{r['frames']:>8}{r['workers']:>9}{r['seconds']:>10.2f}"
              f"{r['frames/s per worker']:>17.2f}")
    return rows


if __name__ == "__main__":
    main()
