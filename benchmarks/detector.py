"""mmdet3d detectors with pcmae's encoders: one training step (data preprocessor + forward + loss + backward) on a
real sweep with its real boxes, single-threaded (mmdet3d's spconv layers are exact on CPU only with one thread),
for every configs/mmdet3d detector; for the sparse-conv ones, the same detector with mmdet3d's own
``SparseEncoder`` beside it (what a user would otherwise run) and whether the two BEV maps are equal. Then the
transformer BEV encoder's forward + backward time against its token count, with the fitted exponent (linear cost).

    python -m benchmarks.detector [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import shared_data_root

REPO = Path(__file__).resolve().parents[1]
KITTI = ("openpcdet", "data", "kitti", "training")
NUSCENES = ("mmdet3d", "demo", "data", "nuscenes")
DETECTORS = {  # config -> sweep
    "second_kitti.py": "kitti", "second_kitti_transformer.py": "kitti", "centerpoint_nus.py": "nuscenes",
    "centerpoint_nus_transformer.py": "nuscenes", "second_waymo.py": "waymo",
}


def kitti_sample():
    """KITTI 000000: points (N, 4) and its labelled boxes in the LiDAR frame (bottom centre), mmdet3d labels."""
    import torch

    from data_converters.kitti import CLASSES, camera_boxes_to_lidar, read_labels, read_object_calib

    root = shared_data_root().joinpath(*KITTI)
    points = np.fromfile(root / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)
    calib = read_object_calib(root / "calib" / "000000.txt")
    labels = [lab for lab in read_labels(root / "label_2" / "000000.txt") if lab["name"] in CLASSES[:3]]
    boxes_cam = np.array([[*lab["loc"], lab["hwl"][2], lab["hwl"][0], lab["hwl"][1], lab["ry"]] for lab in labels])
    boxes = camera_boxes_to_lidar(boxes_cam, calib["R0_rect"] @ calib["Tr_velo_to_cam"])
    return torch.from_numpy(points), torch.tensor(boxes, dtype=torch.float32), \
        torch.tensor([CLASSES.index(lab["name"]) for lab in labels]), (0.5, 0.5, 0.0)


def nuscenes_sample():
    """The shared nuScenes LIDAR_TOP keyframe (N, 5) with mmdet3d's info boxes (+ velocity)."""
    import pickle

    import torch

    root = shared_data_root().joinpath(*NUSCENES)
    points = np.fromfile(next(root.glob("*LIDAR_TOP*.pcd.bin")), np.float32).reshape(-1, 5)
    info = pickle.loads(next(root.glob("*.pkl")).read_bytes())["data_list"][0]
    kept = [i for i in info["instances"] if 0 <= i["bbox_label_3d"] < 10]
    boxes = torch.tensor([i["bbox_3d"] + list(i["velocity"]) for i in kept], dtype=torch.float32)
    return torch.from_numpy(points), boxes, torch.tensor([i["bbox_label_3d"] for i in kept]), (0.5, 0.5, 0.5)


def waymo_sample():
    """OpenPCDet's Waymo frame 0004.npy (N, 6): x, y, z, intensity, elongation; one box per KITTI-sized car
    would be invented, so the boxes are KITTI 000000's (timing only)."""
    import torch

    points = np.load(shared_data_root() / "openpcdet" / "pcdet" / "datasets" / "waymo" / "0004.npy")[:, :5]
    _, boxes, labels, origin = kitti_sample()
    points = points.astype(np.float32)
    points[:, 3] = np.tanh(points[:, 3])  # mmdet3d's Waymo pipeline: tanh of the raw intensity
    return torch.from_numpy(points), boxes, labels, origin


SAMPLES = {"kitti": kitti_sample, "nuscenes": nuscenes_sample, "waymo": waymo_sample}


def batch_for(points, boxes, labels, origin):
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    from mmengine.structures import InstanceData

    sample = Det3DDataSample()
    gt = InstanceData()
    gt.bboxes_3d = LiDARInstance3DBoxes(boxes, box_dim=boxes.shape[1], origin=origin)
    gt.labels_3d = labels
    sample.gt_instances_3d = gt
    return {"inputs": {"points": [points]}, "data_samples": [sample]}


def step_ms(detector, batch, repeats: int):
    """Median ms of preprocess + loss + backward, after one warm-up; also the preprocessed batch."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        data = detector.data_preprocessor(batch, True)
        loss, _ = detector.parse_losses(detector(**data, mode="loss"))  # as mmengine's train_step sums them
        loss.backward()
        detector.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3, data


def bev_of(detector, slot: str, data):
    import torch

    voxels = data["inputs"]["voxels"]
    encoder_in = getattr(detector, slot.replace("middle", "voxel"))
    with torch.no_grad():
        features = encoder_in(voxels["voxels"], voxels["num_points"], voxels["coors"])
        return getattr(detector, slot)(features, voxels["coors"], int(voxels["coors"][-1, 0]) + 1)


def bench_detectors(repeats: int) -> list[dict]:
    import torch
    from mmengine.config import Config

    from pcmae.backbones.spconv_compat import require_spconv
    from pcmae.integrations.mmdet3d.export import build_detector

    require_spconv()  # mmdet3d's own SparseEncoder needs pcmae's CPU backward fix too (else "not compiled with CUDA")
    rows = []
    for name, source in DETECTORS.items():
        cfg = Config.fromfile(str(REPO / "configs" / "mmdet3d" / name))
        slot = "pts_middle_encoder" if "pts_middle_encoder" in cfg.model else "middle_encoder"
        points, boxes, labels, origin = SAMPLES[source]()
        batch = batch_for(points, boxes, labels, origin)
        variants = [("pcmae " + cfg.model[slot].type, cfg)]
        if cfg.model[slot].type == "PcmaeSparseEncoder":
            theirs = copy.deepcopy(cfg)
            theirs.model[slot] = {**cfg.model[slot], "type": "SparseEncoder"}
            theirs.model[slot].pop("init_cfg", None)
            variants.append(("mmdet3d SparseEncoder", theirs))
        bevs = []
        for label, variant in variants:
            torch.manual_seed(0)
            detector = build_detector(variant)[1].train()
            ms, data = step_ms(detector, batch, repeats)
            bevs.append(bev_of(detector.eval(), slot, data))
            rows.append({"config": name, "sweep": source, "middle encoder": label,
                         "voxels": len(data["inputs"]["voxels"]["coors"]), "train step ms": f"{ms:.0f}",
                         "BEV equal to mmdet3d's": ""})
        if len(bevs) == 2:
            rows[-1]["BEV equal to mmdet3d's"] = rows[-2]["BEV equal to mmdet3d's"] = \
                f"{torch.equal(bevs[0], bevs[1])} (max diff {float((bevs[0] - bevs[1]).abs().max()):.1e})"
    return rows


def bench_transformer_scaling(repeats: int) -> list[dict]:
    """PcmaeTransformerBEV (128-d, 4 blocks, patches of 64) on 1, 2, 4, 8 KITTI sweeps batched."""
    import torch

    from benchmarks.voxelize import fit_exponent
    from pcmae.integrations.mmdet3d import PcmaeTransformerBEV, PcmaeVoxelEncoder
    from mmcv.ops import Voxelization

    grid = dict(voxel_size=[0.2, 0.2, 0.2], point_cloud_range=[0.0, -40.0, -3.0, 70.4, 40.0, 1.0])
    points = kitti_sample()[0]
    voxels, coors, num_points = Voxelization(max_num_points=32, max_voxels=200000, **grid)(points)
    torch.manual_seed(0)
    voxel_encoder = PcmaeVoxelEncoder(4, 128, **grid)
    encoder = PcmaeTransformerBEV(128, 128, depth=4, num_heads=4, patch_size=64, bev_stride=2, **grid)
    rows, sizes, times = [], [], []
    for copies in (1, 2, 4, 8):
        batch_coors = torch.cat([torch.nn.functional.pad(coors, (1, 0), value=b) for b in range(copies)])
        batch_voxels, batch_num = voxels.repeat(copies, 1, 1), num_points.repeat(copies)
        samples = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            bev = encoder(voxel_encoder(batch_voxels, batch_num, batch_coors), batch_coors, copies)
            bev.mean().backward()
            samples.append(time.perf_counter() - start)
        ms = statistics.median(samples[1:]) * 1e3
        sizes.append(len(batch_coors))
        times.append(ms)
        rows.append({"sweeps": copies, "tokens": len(batch_coors), "forward + backward ms": f"{ms:.0f}",
                     "ms per 1k tokens": f"{ms / len(batch_coors) * 1e3:.1f}"})
    rows.append({"sweeps": "fit", "tokens": "", "forward + backward ms": f"time ~ tokens^{fit_exponent(sizes, times):.2f}",
                 "ms per 1k tokens": ""})
    return rows


def _single_threaded(bench, repeats: int) -> list[dict]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import pcmae.integrations.mmdet3d  # noqa: F401
    except ImportError as err:
        return [{"skipped": str(err)}]
    try:
        return bench(repeats)
    finally:
        torch.set_num_threads(threads)


def bench_detector(args: argparse.Namespace) -> list[dict]:
    return _single_threaded(bench_detectors, args.repeats)


def bench_transformer_bev(args: argparse.Namespace) -> list[dict]:
    return _single_threaded(bench_transformer_scaling, args.repeats)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = bench_detector(args) + bench_transformer_bev(args)
    for r in rows:
        print(r)
    return rows


if __name__ == "__main__":
    main()

