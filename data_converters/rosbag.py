"""ROS1 / ROS2 bags with sensor_msgs/PointCloud2 -> info file + float32 sweeps (needs ``pip install rosbags``).

    python -m data_converters.rosbag --root BAG --out OUT --topic /points [--layout kitti|nuscenes|waymo|xyz]
        [--odom-topic /odom [--odom-max-gap 0.1] | --estimate-poses]

BAG is a ROS1 ``.bag`` file or a ROS2 bag folder (sqlite3 or mcap). Every message on ``--topic`` is a frame,
in bag order, of one scene (the bag's name). Clouds are decoded in numpy from their PointField list (offsets,
datatypes, point_step, row_step, endianness; padding and extra fields skipped); points with NaN/inf x, y, z are
dropped. Columns are the layout's (default x, y, z, intensity); a column the clouds lack is 0 and listed in
metainfo["zero_filled_columns"]. The timestamp is the header stamp (the bag's log time when the stamp is 0).

``--odom-topic`` (nav_msgs/Odometry): each cloud takes the pose of the odometry message nearest in log time
(at most ``--odom-max-gap`` seconds away, else the frame fails) as ego2global; lidar2ego is the identity (the
cloud's frame is taken to be the odometry child frame). ``--estimate-poses``: poses from KISS-ICP odometry over
the clouds in bag order instead (``data_converters.odometry``; frame 0 = identity). Without either, poses are
identity.
"""
from __future__ import annotations

import argparse
import atexit
import bisect
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from data_converters import odometry
from data_converters.common import ConversionError, FrameResult, FrameTask, add_common_arguments, run_from_args
from data_converters.folder import quaternion_matrix, safe_name
from pcmae.io import BIN_LAYOUTS

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
ODOMETRY = "nav_msgs/msg/Odometry"
# sensor_msgs/PointField datatype codes -> numpy type (byte order added per message)
FIELD_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
# output column -> PointCloud2 field names that may hold it, first match wins
FIELD_NAMES = {"timestamp": ("timestamp", "time", "t")}


def _any_reader():
    try:
        from rosbags.highlevel import AnyReader
    except ImportError:
        raise ImportError("reading ROS bags needs the optional package 'rosbags': pip install rosbags") from None
    return AnyReader


# ------------------------------------------------------------------------------------------------ decoding
def decode_pointcloud2(msg, columns: Sequence[str], where: str = "PointCloud2") -> Tuple[np.ndarray, List[str]]:
    """PointCloud2 message -> (points (N, len(columns)) float32 without non-finite x/y/z, missing column names).

    ``msg`` needs height, width, fields [name, offset, datatype, count], is_bigendian, point_step, row_step
    and data (bytes / uint8 array); columns[:3] must be x, y, z.
    """
    height, width, step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    data = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    row_bytes = width * step
    if height * width == 0:
        return np.zeros((0, len(columns)), np.float32), []
    if row_step < row_bytes:
        raise ConversionError(f"{where}: row_step {row_step} < width {width} x point_step {step}")
    needed = (height - 1) * row_step + row_bytes
    if data.size < needed:
        raise ConversionError(f"{where}: data has {data.size} bytes, {height} rows of {width} points need {needed}")
    if row_step == row_bytes:
        packed = data[: height * row_bytes]
    else:  # drop the padding at the end of each row
        packed = np.lib.stride_tricks.as_strided(data, (height, row_bytes), (row_step, 1)).reshape(-1).copy()
    fields = {f.name: f for f in msg.fields}
    order = ">" if msg.is_bigendian else "<"
    out = np.zeros((height * width, len(columns)), np.float32)
    missing = []
    for c, column in enumerate(columns):
        field = next((fields[n] for n in FIELD_NAMES.get(column, (column,)) if n in fields), None)
        if field is None:
            if c < 3:
                raise ConversionError(f"{where}: no {column!r} field (fields: {', '.join(fields)})")
            missing.append(column)
            continue
        if field.datatype not in FIELD_TYPES:
            raise ConversionError(f"{where}: field {field.name!r} has unknown datatype {field.datatype}")
        dtype = np.dtype(FIELD_TYPES[field.datatype]).newbyteorder(order)
        if field.offset + dtype.itemsize > step:
            raise ConversionError(f"{where}: field {field.name!r} (offset {field.offset}, {dtype.itemsize} bytes) "
                                  f"does not fit in point_step {step}")
        out[:, c] = np.ndarray((height * width,), dtype, packed, field.offset, (step,))
    return out[np.isfinite(out[:, :3]).all(axis=1)], missing


def stamp_seconds(header) -> float:
    return int(header.stamp.sec) + int(header.stamp.nanosec) * 1e-9


def odometry_pose(msg) -> np.ndarray:
    """(4, 4) pose of a nav_msgs/Odometry message."""
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    pose = np.eye(4)
    pose[:3, :3] = quaternion_matrix(q.x, q.y, q.z, q.w)
    pose[:3, 3] = (p.x, p.y, p.z)
    return pose


# ------------------------------------------------------------------------------------------------ tasks
def _connections(reader, bag: Path, topic: str, msgtype: str):
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        listing = ", ".join(sorted(f"{c.topic} [{c.msgtype}]" for c in reader.connections)) or "none"
        raise ConversionError(f"{bag}: no topic {topic!r} in the bag (topics: {listing})")
    wrong = sorted({c.msgtype for c in conns} - {msgtype})
    if wrong:
        raise ConversionError(f"{bag}: topic {topic!r} carries {', '.join(wrong)}, expected {msgtype}")
    return conns


def bag_tasks(bag: Path, topic: str, columns: Sequence[str], odom_topic: Optional[str] = None,
              odom_max_gap: float = 0.1) -> Tuple[List[FrameTask], dict]:
    """One task per cloud on ``topic`` (one read of the bag); returns (tasks, metainfo additions)."""
    if not bag.exists():
        raise ConversionError(f"{bag}: bag not found")
    reader_class = _any_reader()
    try:
        times, missing, odom = _scan(reader_class, bag, topic, columns, odom_topic)
    except ConversionError:
        raise
    except Exception as err:  # rosbags' reader errors: not a bag, truncated, unknown storage
        raise ConversionError(f"{bag}: cannot read the bag ({type(err).__name__}: {err})") from err
    if not times:
        raise ConversionError(f"{bag}: topic {topic!r} has no messages")
    scene = safe_name(bag.name if bag.is_dir() else bag.stem)
    tasks = []
    for ordinal, log_time in enumerate(times):
        pose, pose_error = np.eye(4), None
        if odom_topic:
            pose, pose_error = _nearest_pose(odom, log_time, odom_max_gap, odom_topic)
        tasks.append(FrameTask(
            key=f"rosbag_{scene}_{safe_name(topic.strip('/'))}_{ordinal:06d}", source=str(bag), index=ordinal,
            payload={"topic": topic, "columns": list(columns), "log_time": log_time, "scene": scene,
                     "pose": pose.tolist(), "pose_error": pose_error}))
    return tasks, {"bag": str(bag), "topic": topic, "zero_filled_columns": missing, "odom_topic": odom_topic}


def iter_clouds(bag: Path, topic: str, columns: Sequence[str] = ("x", "y", "z")):
    """(ordinal, (N, len(columns)) float32 cloud) of each PointCloud2 message on ``topic``, in log order: a bag as
    a stream (tools/tta.py --bag). Errors of the bag itself raise ConversionError naming it."""
    bag = Path(bag)
    if not bag.exists():
        raise ConversionError(f"{bag}: bag not found")
    reader_class = _any_reader()
    try:
        with reader_class([bag]) as reader:
            conns = _connections(reader, bag, topic, POINTCLOUD2)
            for ordinal, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
                where = f"{bag} topic {topic} message {ordinal}"
                yield ordinal, decode_pointcloud2(reader.deserialize(raw, conn.msgtype), columns, where)[0]
    except ConversionError:
        raise
    except Exception as err:  # rosbags' reader errors: not a bag, truncated, unknown storage
        raise ConversionError(f"{bag}: cannot read the bag ({type(err).__name__}: {err})") from err


def _scan(reader_class, bag: Path, topic: str, columns: Sequence[str], odom_topic: Optional[str]):
    """(log times of the clouds, columns the first cloud lacks, [(log time, odometry pose)]) in one read."""
    with reader_class([bag]) as reader:
        conns = _connections(reader, bag, topic, POINTCLOUD2)
        times, missing = [], []
        for conn, log_time, raw in reader.messages(connections=conns):
            if not times:
                where = f"{bag} topic {topic} message 0"
                missing = decode_pointcloud2(reader.deserialize(raw, conn.msgtype), columns, where)[1]
            times.append(log_time)
        odom = []
        if odom_topic:
            odom_conns = _connections(reader, bag, odom_topic, ODOMETRY)
            odom = [(t, odometry_pose(reader.deserialize(raw, c.msgtype)))
                    for c, t, raw in reader.messages(connections=odom_conns)]
    return times, missing, odom


def _nearest_pose(odom, log_time: int, max_gap: float, odom_topic: str):
    if not odom:
        return np.eye(4), f"topic {odom_topic!r} has no messages"
    times = [t for t, _ in odom]
    i = bisect.bisect_left(times, log_time)
    best = min((j for j in (i - 1, i) if 0 <= j < len(odom)), key=lambda j: abs(times[j] - log_time))
    gap = abs(times[best] - log_time) * 1e-9
    if gap > max_gap:
        return np.eye(4), f"nearest {odom_topic} message is {gap:.3f} s away (> --odom-max-gap {max_gap})"
    return odom[best][1], None


# ------------------------------------------------------------------------------------------------ workers
class _Cursor:
    """Per-process forward reader over one topic: tasks arrive in bag order, so each process reads the bag once."""

    def __init__(self):
        self.key, self.reader, self.messages, self.position = None, None, None, 0

    def close(self):
        if self.reader is not None:
            self.reader.close()
        self.key, self.reader, self.messages, self.position = None, None, None, 0

    def get(self, bag: str, topic: str, ordinal: int):
        if self.key != (bag, topic) or ordinal < self.position:
            self.close()
            self.reader = _any_reader()([Path(bag)])
            self.reader.open()
            self.key = (bag, topic)
            self.messages = self.reader.messages(connections=_connections(self.reader, Path(bag), topic, POINTCLOUD2))
        for conn, log_time, raw in self.messages:
            self.position += 1
            if self.position - 1 == ordinal:
                return self.reader.deserialize(raw, conn.msgtype), log_time
        raise ConversionError(f"{bag}: topic {topic!r} has only {self.position} messages")


_CURSOR = _Cursor()
atexit.register(_CURSOR.close)


def convert_one(task: FrameTask) -> FrameResult:
    p = task.payload
    if p["pose_error"]:
        raise ConversionError(f"{task.source} (record {task.index}): no pose: {p['pose_error']}")
    if p["pose"] is None:
        raise ConversionError(f"{task.source} (record {task.index}): no pose: --estimate-poses could not read it")
    msg, log_time = _CURSOR.get(task.source, p["topic"], task.index)
    if log_time != p["log_time"]:
        raise ConversionError(f"{task.source}: message {task.index} of {p['topic']} has log time {log_time}, "
                              f"expected {p['log_time']} (the bag changed since the tasks were listed)")
    points, _ = decode_pointcloud2(msg, p["columns"], f"{task.source} topic {p['topic']} message {task.index}")
    stamp = stamp_seconds(msg.header) or log_time * 1e-9
    identity = np.eye(4).tolist()
    info = {"sample_idx": task.index, "token": task.key, "timestamp": stamp, "ego2global": p["pose"],
            "lidar_points": {"lidar2ego": identity, "frame_id": str(msg.header.frame_id)}, "instances": [],
            "scene": p["scene"], "frame_index": task.index, "lidar2global": p["pose"]}
    return FrameResult(points=points, info=info)


def odometry_frame(task: FrameTask):
    """(xyz, per-point times or None) of a task's cloud, for --estimate-poses (times: the timestamp column)."""
    points = convert_one(task).points
    columns = list(task.payload["columns"])
    return points[:, :3], points[:, columns.index("timestamp")] if "timestamp" in columns else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_converters.rosbag", description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--topic", required=True, help="sensor_msgs/PointCloud2 topic, e.g. /points")
    parser.add_argument("--layout", choices=sorted(BIN_LAYOUTS), default="kitti",
                        help="output columns (default kitti: x, y, z, intensity)")
    parser.add_argument("--odom-topic", help="nav_msgs/Odometry topic giving each cloud's pose")
    parser.add_argument("--odom-max-gap", type=float, default=0.1, help="seconds (default 0.1)")
    odometry.add_odometry_arguments(parser)
    args = parser.parse_args(argv)
    columns = BIN_LAYOUTS[args.layout]
    try:
        if args.odom_topic and args.estimate_poses:
            raise ConversionError("--odom-topic and --estimate-poses exclude each other")
        estimate = odometry.config_from_args(args)
        settings = {"odometry": odometry.settings_entry(estimate)}
        tasks, meta = bag_tasks(args.root, args.topic, columns, args.odom_topic, args.odom_max_gap)
        if estimate is not None:
            tasks = odometry.estimate_for_run(args, "rosbag", tasks, columns, settings, odometry_frame, estimate)
    except (ConversionError, ImportError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return run_from_args(args, dataset="rosbag", split=args.split or "all", tasks=tasks, convert_one=convert_one,
                         columns=columns, metainfo=meta, settings=settings)


if __name__ == "__main__":
    sys.exit(main())
