"""KISS-ICP poses (data_converters.odometry) against the recorded poses of the shared real sequences.

    python -m benchmarks.odometry [--sequences av2 ouster patchwork radiate] [--voxel-size M] [--deskew]

Per consecutive frame pair (k, k+1): the motion of the estimated poses (m, deg), the recorded motion and the
relative-pose errors (translation m, rotation deg: inv(rel_recorded) @ rel_estimated) where the recording has
poses, and how well the frames overlap: the median nearest-neighbour distance from frame k+1's points to frame
k's (points 2-60 m from the sensor; RADIATE 6-60 m, its near returns are fog) with no motion ("raw"), with the
estimated and with the recorded relative pose. Sequences (``$PCMAE_SHARED_DATA``, default ``../shared/data``):
  av2        Argoverse 2 log 7fab2350, 2 sweeps (ego frame), city poses at the sweep stamps (ground truth);
  ouster     OS-1-128 lb_n3 .osf, 3 scans (sensor frame, column times for deskewing), the KITTI pose file
             shipped with it (itself an odometry result, not survey ground truth);
  patchwork  6 consecutive KITTI-00 sweeps from patchwork++ (no usable poses);
  radiate    30 consecutive foggy Velodyne HDL-32e sweeps from RADIATE (no poses).
A sequence whose data or reader package is missing gets one row saying why.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

if __name__ == "__main__":  # run as a file: the repository root is the parent of benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import shared_data_root  # noqa: E402
from data_converters.odometry import OdometryConfig, estimate_poses, relative_errors  # noqa: E402

AV2_LOG = ("av2-api", "tests", "unit", "test_data", "sensor", "val", "7fab2350-7eaf-3b7e-a39d-6937a4c1bede")
OUSTER = ("ouster-sdk", "tests")
OUSTER_OSF = "osfs/OS-1-128_v2.3.0_1024x10_lb_n3.osf"
OUSTER_POSES = "pcaps/OS-1-128_v2.3.0_1024x10_lb_n3_poses_kitti.txt"
PATCHWORK = ("patchwork-plusplus", "data")
RADIATE = ("radiate_sdk", "data", "radiate", "tiny_foggy", "velo_lidar")


class Missing(Exception):
    """The sequence's data or reader package is absent."""


def _path(*parts: str) -> Path:
    path = shared_data_root().joinpath(*parts)
    if not path.exists():
        raise Missing(f"not found: {path}")
    return path


# ------------------------------------------------------------------------------------------------ sequences
def load_av2():
    """([(xyz, None)], recorded (T, 4, 4), min NN range)."""
    try:
        from data_converters import av2
        av2._feather()
    except ImportError as err:
        raise Missing(str(err)) from None
    log = _path(*AV2_LOG)
    tasks = av2.build_tasks([log], ())
    frames = [(av2.read_sweep(Path(t.source), ()).astype(np.float64), None) for t in tasks]
    return frames, np.asarray([t.payload["pose"] for t in tasks], np.float64), 2.0


def load_ouster():
    try:
        from data_converters import ouster
        _, core, _ = ouster._sdk()
    except ImportError as err:
        raise Missing(str(err)) from None
    from data_converters.folder import read_poses

    osf = _path(*OUSTER, OUSTER_OSF)
    source = ouster.open_recording(osf, None, 0)
    lut = core.XYZLut(source.sensor_info[0])
    frames = []
    for scan in ouster._scans(source, 0):
        xyz, columns = ouster.scan_arrays(scan, lut, core)
        frames.append((xyz, columns["time"]))
    recorded = np.asarray([pose for _, pose in read_poses(_path(*OUSTER, OUSTER_POSES))])
    return frames, recorded, 2.0


def load_patchwork():
    folder = _path(*PATCHWORK)
    files = sorted(folder.glob("*.bin"))
    return [(np.fromfile(f, "<f4").reshape(-1, 4)[:, :3].astype(np.float64), None) for f in files], None, 2.0


def load_radiate():
    folder = _path(*RADIATE)
    files = sorted(folder.glob("*.csv"))
    return [(np.loadtxt(f, delimiter=",", ndmin=2)[:, :3], None) for f in files], None, 6.0


SEQUENCES: Dict[str, Callable] = {"av2": load_av2, "ouster": load_ouster, "patchwork": load_patchwork,
                                  "radiate": load_radiate}


# ------------------------------------------------------------------------------------------------ measures
def median_nn(moving: np.ndarray, fixed: np.ndarray, relative: np.ndarray, near: float, far: float = 60.0) -> float:
    """Median distance from ``moving``'s points (near..far m) mapped by ``relative`` (moving -> fixed frame) to
    their nearest neighbour in ``fixed`` (near..far m)."""
    from scipy.spatial import cKDTree

    def crop(xyz):
        distance = np.linalg.norm(xyz, axis=1)
        return xyz[(distance >= near) & (distance <= far)]

    moved = crop(moving) @ relative[:3, :3].T + relative[:3, 3]
    return float(np.median(cKDTree(crop(fixed)).query(moved, workers=1)[0]))


def motion(poses: np.ndarray, k: int):
    relative = np.linalg.inv(poses[k]) @ poses[k + 1]
    angle = np.degrees(np.arccos(np.clip((np.trace(relative[:3, :3]) - 1) / 2, -1.0, 1.0)))
    return relative, float(np.linalg.norm(relative[:3, 3])), float(angle)


def bench_sequence(name: str, config: OdometryConfig) -> List[dict]:
    """One row per frame pair of a sequence (see the module docstring)."""
    blank = {"sequence": name, "pair": "-", "est. motion m / deg": "-", "recorded m / deg": "-",
             "trans. err m": "-", "rot. err deg": "-", "NN raw m": "-", "NN est. m": "-", "NN recorded m": "-",
             "odometry s": "-"}
    try:
        frames, recorded, near = SEQUENCES[name]()
    except Missing as why:
        return [{**blank, "pair": f"skipped: {why}"}]
    start = time.perf_counter()
    estimated = estimate_poses(frames, config)
    seconds = time.perf_counter() - start
    errors = relative_errors(estimated, recorded) if recorded is not None else None
    rows = []
    for k in range(len(frames) - 1):
        rel_est, metres, degrees = motion(estimated, k)
        fixed, moving = frames[k][0], frames[k + 1][0]
        row = {**blank, "pair": f"{k}-{k + 1}", "est. motion m / deg": f"{metres:.3f} / {degrees:.2f}",
               "NN raw m": f"{median_nn(moving, fixed, np.eye(4), near):.3f}",
               "NN est. m": f"{median_nn(moving, fixed, rel_est, near):.3f}",
               "odometry s": f"{seconds:.2f}" if k == 0 else ""}
        if recorded is not None:
            rel_rec, rec_m, rec_deg = motion(recorded, k)
            row.update({"recorded m / deg": f"{rec_m:.3f} / {rec_deg:.2f}", "trans. err m": f"{errors[k][0]:.3f}",
                        "rot. err deg": f"{errors[k][1]:.3f}",
                        "NN recorded m": f"{median_nn(moving, fixed, rel_rec, near):.3f}"})
        rows.append(row)
    return rows


def bench_odometry(args: Optional[argparse.Namespace] = None) -> List[dict]:
    """Rows of every sequence (tools/benchmark.py section ``odometry``; KISS-ICP defaults of the converters)."""
    sequences = getattr(args, "odometry_sequences", None) or list(SEQUENCES)
    config = OdometryConfig(voxel_size=getattr(args, "odometry_voxel_size", None),
                            deskew=getattr(args, "odometry_deskew", False))
    return [row for name in sequences for row in bench_sequence(name, config)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", nargs="+", choices=list(SEQUENCES), default=list(SEQUENCES))
    parser.add_argument("--voxel-size", type=float, default=None, help="KISS-ICP map voxel (default max range / 100)")
    parser.add_argument("--deskew", action="store_true", help="deskew with per-point times (Ouster column times)")
    args = parser.parse_args(argv)
    rows = bench_odometry(argparse.Namespace(odometry_sequences=args.sequences, odometry_voxel_size=args.voxel_size,
                                             odometry_deskew=args.deskew))
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
