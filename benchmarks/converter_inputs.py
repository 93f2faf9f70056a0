"""Synthetic converter inputs shared by the benchmarks and the tests: full-size Waymo frames (range images of all
five lidars, both returns) on real calibrations. Needs no Waymo protos itself: callers pass a parsed Frame."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from data_converters.waymo_range_image import encode_matrix

TOP = 1  # waymo.open_dataset.LaserName.TOP; FRONT, SIDE_LEFT, SIDE_RIGHT, REAR are 2..5


def spin_pose(frame_pose, width, height, speed=12.0, yaw_rate=0.3, spin=0.1):
    """(H, W, 6) float32 pixel pose of a vehicle driving forward and turning during one lidar spin."""
    rpy = Rotation.from_matrix(frame_pose[:3, :3]).as_euler("ZYX")[::-1]
    times = (0.5 - (np.arange(width) + 0.5) / width) * spin  # time of each column from mid-spin (frame pose)
    pose = np.zeros((height, width, 6))
    pose[..., :3] = rpy
    pose[..., 2] += yaw_rate * times
    pose[..., 3:] = frame_pose[:3, 3] + np.outer(times * speed, frame_pose[:3, 0])[None]
    return pose.astype(np.float32)


def full_size_frame(calibrated, seed=0):
    """A copy of ``calibrated`` (a waymo Frame with calibrations and pose, e.g. mmdet3d's val.tfrecord frame) with
    every TOP pixel hit (64 x 2650, per-pixel pose) plus 3% second returns, and 4 short-range lidars (200 x 600) at
    3% / 0.5% fill: ~191k points."""
    rng = np.random.default_rng(seed)
    frame = type(calibrated)()
    frame.CopyFrom(calibrated)
    frame_pose = np.asarray(frame.pose.transform, np.float64).reshape(4, 4)
    for name in range(1, 6):
        height, width = (64, 2650) if name == TOP else (200, 600)
        laser = frame.lasers.add(name=name)
        for return_index, fill in ((1, 1.0 if name == TOP else 0.03), (2, 0.03 if name == TOP else 0.005)):
            image = np.zeros((height, width, 4), np.float32)
            hit = rng.random((height, width)) < fill
            image[hit] = np.column_stack([rng.uniform(2, 75, hit.sum()), rng.uniform(0, 1, hit.sum()),
                                          rng.uniform(0, 0.5, hit.sum()), -np.ones(hit.sum())])
            target = laser.ri_return1 if return_index == 1 else laser.ri_return2
            target.range_image_compressed = encode_matrix(image)
        if name == TOP:
            laser.ri_return1.range_image_pose_compressed = encode_matrix(spin_pose(frame_pose, width, height))
    return frame
