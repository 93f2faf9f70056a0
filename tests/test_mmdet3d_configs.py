"""configs/mmdet3d on the real mmdet3d stack, on CPU: every detector config builds, takes one training step on a
real sweep (KITTI velodyne, the nuScenes LIDAR_TOP sweep, Waymo's 0004.npy) through its own pipelines with a finite
loss and a gradient in its pcmae encoders, and predicts boxes; pretrained configs start from a tiny pcmae checkpoint
of their pre-training config (weights compared); each _scratch twin differs only in init_cfg. KittiMetric reads the
converter's output (on CPU through pcmae.integrations.mmdet3d.finetune's rotated IoU, checked against mmdet3d's CUDA kernel run by
numba's simulator); tools/finetune_det.py trains and evaluates second_kitti_shared.py end to end; the label
efficiency protocol pairs pretrained and scratch runs by seed.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_converters import kitti
from tests.mmdet3d_helpers import import_mmdet3d_datasets
from tests.shared_data import shared_data_path

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "mmdet3d"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.py"))
PRETRAINED = [name for name in CONFIGS if not name.endswith("_scratch.py")]
# detector config -> the pcmae pre-training config of the same grid and encoder
PRETRAIN_CONFIGS = {
    "second_kitti.py": "configs/radial_mae/kitti.yaml",
    "second_kitti_shared.py": "configs/radial_mae/kitti_shared_second.yaml",
    "second_kitti_transformer.py": "configs/voxel_mae/kitti_transformer_det.yaml",
    "centerpoint_nus.py": "configs/voxel_mae/nuscenes_sparse_conv.yaml",
    "centerpoint_nus_transformer.py": "configs/voxel_mae/nuscenes_transformer_det.yaml",
    "second_waymo.py": "configs/voxel_mae/waymo_second.yaml",
}
NUSCENES_DEMO = ("mmdet3d", "demo", "data", "nuscenes")
NUSCENES_INFO = "n015-2018-07-24-11-22-45+0800.pkl"
WAYMO_FRAME = ("openpcdet", "pcdet", "datasets", "waymo", "0004.npy")
KITTI_FRAME = 1  # 000001: a Car and a Cyclist in range (000000 holds one pedestrian only)

sys.path.append(str(REPO / "tools"))  # finetune_det.py, label_efficiency.py


@pytest.fixture(scope="module", autouse=True)
def mmdet3d_stack():
    import_mmdet3d_datasets()  # skips, saying what to install, only when mmdet3d (+ mmcv ops) is not importable
    import pcmae.integrations.mmdet3d  # noqa: F401  (the plugin the configs import)

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # mmdet3d's SparseEncoder is exact on CPU only single-threaded
    yield
    torch.set_num_threads(before)


def twin_of(name: str) -> str:
    return name[:-len(".py")] + "_scratch.py"


def load_config(name: str):
    from mmengine.config import Config

    return Config.fromfile(str(CONFIG_DIR / name))


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def kitti_out(tmp_path_factory) -> Path:
    """The 5 shared KITTI frames through our converter."""
    out = tmp_path_factory.mktemp("kitti_pcmae")
    assert kitti.main(["--root", str(shared_data_path("openpcdet", "data", "kitti")), "--out", str(out)]) == 0
    return out


def waymo_box_on_densest_cluster(points: np.ndarray) -> list:
    """0004.npy has no labels: one car-sized box [x, y, z_bottom, l, w, h, yaw] on the 4 x 2 m ground cell holding
    the most points 10-40 m out (a stand-in target for the assigner; the check is the gradient, not accuracy)."""
    near = points[(np.hypot(points[:, 0], points[:, 1]) > 10) & (np.hypot(points[:, 0], points[:, 1]) < 40)
                  & (points[:, 2] > 0.3) & (points[:, 2] < 2.0)]
    counts, xe, ye = np.histogram2d(near[:, 0], near[:, 1], bins=[np.arange(-40, 40.1, 4), np.arange(-40, 40.1, 2)])
    i, j = np.unravel_index(counts.argmax(), counts.shape)
    return [float(xe[i] + 2), float(ye[j] + 1), 0.0, 4.0, 2.0, 1.6, 0.0]


@pytest.fixture(scope="module")
def waymo_info(tmp_path_factory) -> Path:
    """A one-frame info file over the shared 0004.npy with one hand-placed Car box; the points go to a .bin as our
    converter writes them (mmdet3d's LoadPointsFromFile reads every file as raw float32, .npy headers included)."""
    points = np.load(shared_data_path(*WAYMO_FRAME)).astype("<f4")
    folder = tmp_path_factory.mktemp("waymo")
    frame = folder / "0004.bin"
    points.tofile(frame)
    box = waymo_box_on_densest_cluster(points)
    instance = {"bbox_3d": box, "bbox_label_3d": 0, "bbox_label": 0, "bbox": [0.0, 0.0, 1.0, 1.0],
                "num_lidar_pts": 100, "bbox_3d_isvalid": True}
    info = {"metainfo": {"dataset": "waymo", "categories": {"Car": 0, "Pedestrian": 1, "Cyclist": 2}},
            "data_list": [{"sample_idx": 0, "timestamp": 0.0, "context_name": "0004", "images": {},
                           "lidar_points": {"lidar_path": frame.name, "num_pts_feats": 6},
                           "instances": [instance]}]}
    path = folder / "waymo_infos_0004.pkl"
    path.write_bytes(pickle.dumps(info))
    return path


@pytest.fixture(scope="module")
def data_roots(kitti_out, waymo_info) -> dict:
    """Per dataset family: the dataset fields that point a config at the real sweep (index of the frame used)."""
    nus = shared_data_path(*NUSCENES_DEMO)
    return {
        "kitti": (dict(data_root=str(kitti_out), ann_file="kitti_infos_training.pkl", data_prefix=dict(pts="points")),
                  KITTI_FRAME),
        "nus": (dict(data_root=str(nus), ann_file=NUSCENES_INFO, data_prefix=dict(pts="", sweeps="", img="")), 0),
        "waymo": (dict(data_root=str(waymo_info.parent), ann_file=waymo_info.name, data_prefix=dict(pts="")), 0),
    }


def family(name: str) -> str:
    return "nus" if "_nus" in name else "waymo" if "waymo" in name else "kitti"


def real_items(cfg, fields: dict, index: int):
    """(train item, test item) of the sweep through the config's own train / test pipelines."""
    from mmengine.registry import DATASETS, DefaultScope

    from pcmae.integrations.mmdet3d.finetune import train_dataset_cfg

    with DefaultScope.overwrite_default_scope("mmdet3d"):
        train = DATASETS.build({**train_dataset_cfg(cfg), **fields})
        test = DATASETS.build({**cfg.val_dataloader.dataset, **fields})
        np.random.seed(0)
        train_item = train.prepare_data(index)
        assert train_item is not None, "no ground-truth box left after the train pipeline"
        test_item = test.prepare_data(index)
        return train_item, test_item[0] if isinstance(test_item, list) else test_item  # Waymo packs inside its TTA


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def pcmae_checkpoints(tmp_path_factory) -> dict:
    """Detector config -> (tiny pcmae checkpoint of its pre-training config, the pcmae model), made lazily."""
    folder = tmp_path_factory.mktemp("pcmae_ckpt")
    cache = {}

    def get(name: str):
        if name not in cache:
            from pcmae.engine.build import build_model, load_checked_config
            from pcmae.engine.checkpoint import save_checkpoint

            cfg = load_checked_config(REPO / PRETRAIN_CONFIGS[name])
            torch.manual_seed(1000 + len(cache))  # not the detector's seed: its random init must differ
            model = build_model(copy.deepcopy(cfg["model"]))
            path = save_checkpoint(folder / name.replace(".py", ".pth"), {"model": model.state_dict(), "config": cfg})
            cache[name] = (path, model)
        return cache[name]

    return get


def encoders(model) -> dict:
    """slot -> the detector's pcmae module in it."""
    out = {}
    for attr in ("voxel_encoder", "pts_voxel_encoder", "middle_encoder", "pts_middle_encoder"):
        module = getattr(model, attr, None)
        if module is not None and type(module).__name__.startswith("Pcmae"):
            out[attr.replace("pts_", "")] = module
    return out


# ------------------------------------------------------------------------------------------------ configs
def test_every_config_has_its_twin_and_a_pretraining_config():
    assert PRETRAINED and all(twin_of(name) in CONFIGS for name in PRETRAINED)
    assert sorted(PRETRAINED + [twin_of(n) for n in PRETRAINED]) == CONFIGS
    assert sorted(PRETRAIN_CONFIGS) == PRETRAINED
    for name in PRETRAINED:
        first = (CONFIG_DIR / name).read_text().split("\n_base_")[0]
        assert "custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)" in first


@pytest.mark.parametrize("name", PRETRAINED)
def test_scratch_twin_differs_only_in_init_cfg(name):
    from pcmae.integrations.mmdet3d.finetune import pretrained_modules

    cfg, twin = load_config(name), load_config(twin_of(name))
    assert cfg.default_scope == "mmdet3d" and cfg.pretrained.startswith("work_dirs/")
    modules = pretrained_modules(cfg)
    assert modules and all(m["init_cfg"]["checkpoint"] == cfg.pretrained for _, m in modules)
    assert pretrained_modules(twin) == []
    for _, module in modules:
        module["init_cfg"] = None
    assert cfg.to_dict() == twin.to_dict()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_one_step_and_predicts_on_a_real_sweep(name, data_roots, pcmae_checkpoints):
    """Pretrained configs: weights from the checkpoint, a training step (finite loss, finite non-zero gradients in
    every pcmae encoder) and a prediction. A _scratch twin builds the very same model but for init_cfg (the test
    above), so to keep the file near 3 minutes it is built, initialised at random, and its training loss computed."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DefaultScope

    from pcmae.integrations.mmdet3d.finetune import pretrained_modules

    cfg = load_config(name)
    fields, index = data_roots[family(name)]
    train_item, test_item = real_items(cfg, fields, index)
    pretrained = bool(pretrained_modules(cfg))
    if pretrained:
        path, pcmae_model = pcmae_checkpoints(name)
        for _, module in pretrained_modules(cfg):
            module["init_cfg"]["checkpoint"] = str(path)
    test_cfg = cfg.model.test_cfg.get("pts", cfg.model.test_cfg)
    test_cfg["score_thr" if "score_thr" in test_cfg else "score_threshold"] = 0.0  # an untrained head scores low
    for key in ("nms_pre", "pre_max_size"):  # and keep CPU NMS cheap with every box in
        test_cfg[key] = min(test_cfg.get(key, 100), 100)
    from mmdet3d.registry import MODELS

    with DefaultScope.overwrite_default_scope("mmdet3d"):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        parts = encoders(model)
        assert parts, "no pcmae encoder in the detector"
        before = {slot: copy.deepcopy(m.pretrained_target().state_dict()) for slot, m in parts.items()}
        model.init_weights()
        if pretrained:
            want = pcmae_model.detector_parts()
            for slot, module in parts.items():
                got, ref = module.pretrained_target().state_dict(), want[slot].state_dict()
                assert got.keys() == ref.keys()
                assert all(torch.equal(got[k], v) for k, v in ref.items()), slot
                assert not all(torch.equal(before[slot][k], v) for k, v in ref.items()), slot  # it did load

        model.train()
        data = model.data_preprocessor(pseudo_collate([train_item]), training=True)
        loss, log_vars = model.parse_losses(model(**data, mode="loss"))
        assert torch.isfinite(loss) and loss > 0, log_vars
        if not pretrained:
            return
        loss.backward()
        for slot, module in parts.items():
            grads = [p.grad for p in module.parameters() if p.requires_grad]
            assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), slot
            assert sum(g.abs().sum() for g in grads) > 0, slot

        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(pseudo_collate([test_item]), training=False)
            result = model(**data, mode="predict")[0].pred_instances_3d
    boxes = result.bboxes_3d.tensor
    assert len(boxes) > 0 and boxes.shape[1] == (9 if family(name) == "nus" else 7)
    assert len(result.scores_3d) == len(boxes) == len(result.labels_3d) and torch.isfinite(boxes).all()


# ------------------------------------------------------------------------------------------------ KITTI metric
ROTATE_IOU_REFERENCE = """
import importlib.util, sys, numpy as np
spec = importlib.util.spec_from_file_location("rotate_iou", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
data = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([module.rotate_iou_gpu_eval(data["boxes"], data["query"], c) for c in (-1, 0, 1, 2)]))
"""


def test_cpu_rotate_iou_equals_mmdet3d_cuda_kernel_run_by_numba_simulator(tmp_path):
    """The stand-in against mmdet3d's own kernel, executed by numba's CUDA simulator (no GPU needed), on boxes that
    overlap in every way but coincide nowhere (the kernel itself gives 0-0.33 for two equal boxes)."""
    import mmdet3d

    from pcmae.integrations.mmdet3d.finetune import rotate_iou_cpu

    rng = np.random.default_rng(0)
    boxes = np.c_[rng.uniform(0, 6, (24, 2)), rng.uniform(0.5, 4, (24, 2)), rng.uniform(-3.2, 3.2, 24)]
    query = np.c_[rng.uniform(0, 6, (16, 2)), rng.uniform(0.5, 4, (16, 2)), rng.uniform(-3.2, 3.2, 16)]
    np.savez(tmp_path / "boxes.npz", boxes=boxes.astype(np.float32), query=query.astype(np.float32))
    kernel = Path(mmdet3d.__file__).parent / "evaluation" / "functional" / "kitti_utils" / "rotate_iou.py"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    subprocess.run([sys.executable, "-c", ROTATE_IOU_REFERENCE, str(kernel), str(tmp_path / "boxes.npz"),
                    str(tmp_path / "want.npy")], check=True, env=env, capture_output=True)
    want = np.load(tmp_path / "want.npy")
    assert (want[0] > 0).sum() > 50  # many overlapping pairs
    for criterion, expected in zip((-1, 0, 1, 2), want):
        np.testing.assert_allclose(rotate_iou_cpu(boxes, query, criterion), expected, rtol=1e-4, atol=1e-5)
    assert rotate_iou_cpu(boxes, boxes, -1).diagonal() == pytest.approx(1.0, abs=1e-6)


def test_kitti_metric_reads_converter_output_and_scores_ground_truth_as_kitti_eval(kitti_out):
    """KittiMetric reads what it needs (CAM2 lidar2cam / cam2img / image size, 2D boxes, alpha, occlusion, truncation,
    categories with DontCare) from our info file and, on CPU through the rotated-IoU stand-in, scores the ground-truth
    boxes given as LiDAR predictions exactly as kitti_eval scores the ground truth against itself. (On 5 frames that
    is far below 100: mmdet3d's get_thresholds keeps one threshold per ground-truth box and AP40 skips the first.)"""
    from mmdet3d.evaluation.functional import kitti_eval
    from mmdet3d.evaluation.metrics import KittiMetric
    from mmdet3d.structures import LiDARInstance3DBoxes

    from pcmae.integrations.mmdet3d.finetune import use_cpu_rotate_iou

    assert use_cpu_rotate_iou() == (not torch.cuda.is_available())
    ann_file = str(kitti_out / "kitti_infos_training.pkl")
    classes = ["Pedestrian", "Cyclist", "Car"]
    metric = KittiMetric(ann_file=ann_file)
    metric.dataset_meta = {"classes": classes}
    infos = metric.convert_annos_to_kitti_annos(pickle.loads(Path(ann_file).read_bytes()))
    gt_annos = [e["kitti_annos"] for e in infos]
    results, reference, rank = [], [], 0
    for index, annos in enumerate(gt_annos):
        keep = np.isin(annos["name"], classes)
        scores = 1.0 - 0.01 * np.arange(rank, rank + keep.sum())  # distinct: one threshold each
        rank += keep.sum()
        reference.append({**{k: v[keep] for k, v in annos.items()}, "score": scores})
        entry = infos[index]
        cam_boxes = np.c_[annos["location"], annos["dimensions"], annos["rotation_y"]][keep]  # l, h, w in camera
        boxes = kitti.camera_boxes_to_lidar(cam_boxes, np.array(entry["images"]["CAM2"]["lidar2cam"]))
        results.append({"sample_idx": index, "pred_instances": {}, "pred_instances_3d": {
            "bboxes_3d": LiDARInstance3DBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 7)),
            "scores_3d": torch.tensor(scores, dtype=torch.float32),
            "labels_3d": torch.tensor([classes.index(n) for n in annos["name"][keep]])}})
    got = metric.compute_metrics(results)
    _, want = kitti_eval(gt_annos, reference, classes, eval_types=["bbox", "bev", "3d"])
    assert len(want) == 126 and got == {f"pred_instances_3d/{k}": pytest.approx(v, abs=1e-4) for k, v in want.items()}
    assert got["pred_instances_3d/KITTI/Car_3D_AP40_moderate_strict"] > 0


# ------------------------------------------------------------------------------------------------ tools
def test_finetune_det_refuses_bad_input_in_one_line(tmp_path, capsys):
    import finetune_det

    cases = [
        (["configs/mmdet3d/second_kitti.py", "--pretrained", str(tmp_path / "none.pth")], "not found"),
        (["configs/mmdet3d/second_kitti_scratch.py", "--pretrained", __file__], "a scratch config?"),
        (["configs/mmdet3d/second_kitti_scratch.py", "train_dataloader.batch_sise=2"], "did you mean 'batch_size'"),
        (["configs/mmdet3d/nope.py"], "config not found"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            finetune_det.command_line(lambda: finetune_det.main([str(REPO / argv[0]), *argv[1:]]))()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()  # (third-party import warnings may precede it)
        errors = [line for line in err if line.startswith("error")]
        assert errors == err[-1:] and message in errors[0] and "Traceback" not in "\n".join(err), err
    from pcmae.integrations.mmdet3d.finetune import load_det_config

    cfg = load_det_config(CONFIG_DIR / "second_kitti.py", ["+model.middle_encoder.init_cfg.allow_partial=True",
                                                          "train_dataloader.batch_size=2"])
    assert cfg.model.middle_encoder.init_cfg.allow_partial is True and cfg.train_dataloader.batch_size == 2


def test_label_subset_is_seeded_nested_and_counted_as_mmdet3d_reads(kitti_out):
    from pcmae.integrations.mmdet3d.finetune import label_subset, train_dataset_cfg

    base = load_config("second_kitti_shared.py")
    train_dataset_cfg(base).update(data_root=str(kitti_out))

    def indices(fraction, seed):
        cfg = copy.deepcopy(base)
        kept, total = label_subset(cfg, fraction, seed)
        chosen = train_dataset_cfg(cfg).get("indices", list(range(total)))
        assert (len(chosen), total) == (kept, 5)
        return chosen

    assert indices(0.4, 0) == indices(0.4, 0) and len(indices(0.01, 0)) == 1
    assert set(indices(0.2, 1)) <= set(indices(0.4, 1)) <= set(indices(0.6, 1))  # one permutation per seed
    assert len({tuple(indices(0.4, seed)) for seed in range(3)}) > 1
    assert indices(1.0, 0) == list(range(5))
    with pytest.raises(ValueError, match="label-fraction"):
        indices(0.0, 0)


@pytest.mark.slow
def test_finetune_det_end_to_end_on_shared_kitti(tmp_path, monkeypatch, pcmae_checkpoints):
    """Convert the shared frames, pre-trained SECOND for 2 iterations, KittiMetric on the same 5 frames."""
    import finetune_det

    out = tmp_path / "work_dirs" / "kitti_shared_pcmae"
    assert kitti.main(["--root", str(shared_data_path("openpcdet", "data", "kitti")), "--out", str(out)]) == 0
    monkeypatch.chdir(tmp_path)  # the config's data_root is relative to the repo root
    ckpt, _ = pcmae_checkpoints("second_kitti_shared.py")
    summary = finetune_det.main([str(CONFIG_DIR / "second_kitti_shared.py"), "--pretrained", str(ckpt),
                                 "--work-dir", "run", "--max-iters", "2", "--label-fraction", "0.4", "--seed", "3"])
    written = json.loads((tmp_path / "run" / "finetune_summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["pretrained"] == str(ckpt) and (written["train_frames"], written["train_frames_total"]) == (2, 5)
    assert written["iterations"] == 2 and written["seed"] == 3 and written["label_fraction"] == 0.4
    assert len(written["loss_curve"]["loss"]) == 2 and all(np.isfinite(written["loss_curve"]["loss"]))
    final = written["final_metrics"]
    assert written["main_metric"] in final and written["main_metric_value"] == final[written["main_metric"]]
    for cls in ("Pedestrian", "Cyclist", "Car"):
        assert f"Kitti metric/pred_instances_3d/KITTI/{cls}_3D_AP40_moderate_strict" in final
    assert all(0.0 <= v <= 100.0 for v in final.values())


def test_label_efficiency_pairs_pretrained_and_scratch_by_seed(tmp_path, monkeypatch):
    """The protocol around finetune_det (replaced by a recorder here; the real runs are the end-to-end test's): every
    (fraction, seed) for the config and its _scratch twin, the checkpoint only for the first, the table's mean, sample
    std and seed-paired differences, and a re-run that reuses every finished run."""
    import finetune_det
    import label_efficiency

    from pcmae.integrations.mmdet3d.finetune import write_json

    ckpt = tmp_path / "pre.pth"
    ckpt.write_bytes(b"")
    calls = []

    def fake_main(argv):
        args = finetune_det.parse_args(argv)
        calls.append(args)
        variant_bonus = 5.0 if args.pretrained else 0.0
        value = 100 * args.label_fraction + 2.0 * args.seed ** 2 + variant_bonus  # seed-dependent, paired offset
        summary = {"config": args.config, "pretrained": args.pretrained, "label_fraction": args.label_fraction,
                   "seed": args.seed, "max_iters": args.max_iters, "overrides": list(args.overrides),
                   "work_dir": args.work_dir, "train_frames": round(10 * args.label_fraction), "main_metric": "m",
                   "final_metrics": {"m": value}}
        write_json(Path(args.work_dir) / finetune_det.SUMMARY, summary)
        return summary

    monkeypatch.setattr(finetune_det, "main", fake_main)
    config = str(CONFIG_DIR / "second_kitti_shared.py")
    argv = [config, "--pretrained", str(ckpt), "--fractions", "0.1", "1.0", "--seeds", "0", "1", "2",
            "--max-iters", "3", "--work-dir", str(tmp_path / "le"), "train_dataloader.batch_size=2"]
    result = label_efficiency.main(argv)
    assert len(calls) == 12
    assert {(c.config, c.pretrained) for c in calls} == {(config, str(ckpt)),
                                                        (str(CONFIG_DIR / "second_kitti_shared_scratch.py"), None)}
    assert {(c.label_fraction, c.seed, c.max_iters, tuple(c.overrides)) for c in calls} == {
        (f, s, 3, ("train_dataloader.batch_size=2",)) for f in (0.1, 1.0) for s in (0, 1, 2)}
    assert [row["fraction"] for row in result["rows"]] == [0.1, 1.0]
    for row in result["rows"]:
        scratch = [100 * row["fraction"] + 2.0 * s ** 2 for s in (0, 1, 2)]
        assert row["scratch"]["values"] == scratch and row["pretrained"]["values"] == [v + 5 for v in scratch]
        assert row["scratch"]["mean"] == pytest.approx(np.mean(scratch))
        assert row["scratch"]["std"] == pytest.approx(np.std(scratch, ddof=1))
        assert row["delta"]["mean"] == pytest.approx(5.0) and row["delta"]["std"] == pytest.approx(0.0)
    table = (tmp_path / "le" / "label_efficiency.md").read_text()
    scratch = np.array([10.0, 12.0, 18.0])  # fraction 0.1, seeds 0 1 2
    assert (f"| 10 % | 1 | {scratch.mean() + 5:.2f} +- {scratch.std(ddof=1):.2f} | {scratch.mean():.2f} +- "
            f"{scratch.std(ddof=1):.2f} | +5.00 +- 0.00 |") in table
    assert json.loads((tmp_path / "le" / "label_efficiency.json").read_text()) == json.loads(json.dumps(result))
    assert label_efficiency.main(argv)["rows"] == result["rows"] and len(calls) == 12  # nothing run again
    (tmp_path / "lonely.py").write_text("")
    with pytest.raises(FileNotFoundError, match="scratch twin of .*lonely.py not found"):
        label_efficiency.main([str(tmp_path / "lonely.py")])
