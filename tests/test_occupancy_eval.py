"""Occupancy evaluation: metrics against brute-force definitions, the trivial baselines, and tools/evaluate.py
end to end on real KITTI sweeps (a tiny model, a small range)."""
from __future__ import annotations

import importlib.util
import itertools
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcmae.data import LidarSweeps
from pcmae.engine.checkpoint import CheckpointError, save_checkpoint
from pcmae.evaluation.baselines import (RangePrior, neighbour_copy_points, neighbour_fraction, ring_distance,
                                        voxel_point_offsets)
from pcmae.evaluation.metrics import average_precision, binary_auroc, precision_recall_f1, stratified_auroc
from pcmae.data.lidar_transforms import in_range_mask
from pcmae.evaluation.occupancy import PREDICTORS, evaluate_dataset, fit_range_prior
from pcmae.pretrainers.voxel_mae import VoxelMAE
from tests.shared_data import shared_data_path

REPO = Path(__file__).resolve().parents[1]
PC_RANGE = [0.0, -8.0, -3.0, 16.0, 8.0, 1.0]
TINY_MODEL = {"type": "VoxelMAE", "point_channels": 4, "voxel_size": [0.5, 0.5, 0.5], "point_cloud_range": PC_RANGE,
              "tokenizer": {"type": "mean"}, "num_pred_points": 2,
              "backbone": {"type": "transformer", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 32,
                           "decoder_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ------------------------------------------------------------------------------------------- metrics
def brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores.tolist(), labels.tolist()) if y]
    neg = [s for s, y in zip(scores.tolist(), labels.tolist()) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_ap(scores, labels):
    """sum over thresholds t (distinct scores, high to low) of (recall(t) - previous recall) * precision(t)."""
    total, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = (pred & labels).sum().item()
        recall = tp / labels.sum().item()
        total += (recall - previous_recall) * tp / pred.sum().item()
        previous_recall = recall
    return total


@pytest.mark.parametrize("seed", range(4))
def test_auroc_and_ap_match_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (60,), generator=g).float() / 5  # many ties
    labels = torch.rand(60, generator=g) < 0.4 + 0.1 * seed
    assert binary_auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(brute_ap(scores, labels), abs=1e-12)
    continuous = torch.rand(60, generator=g)
    assert binary_auroc(continuous, labels) == pytest.approx(brute_auroc(continuous, labels), abs=1e-12)
    assert average_precision(continuous, labels) == pytest.approx(brute_ap(continuous, labels), abs=1e-12)


def test_stratified_auroc_counts_only_pairs_of_one_stratum():
    g = torch.Generator().manual_seed(5)
    scores, labels = torch.randint(0, 4, (50,), generator=g).float(), torch.rand(50, generator=g) < 0.5
    strata = torch.randint(0, 3, (50,), generator=g)
    wins = pairs = 0.0
    for i, j in itertools.product(range(50), range(50)):
        if labels[i] and not labels[j] and strata[i] == strata[j]:
            wins += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
            pairs += 1
    assert stratified_auroc(scores, labels, strata) == pytest.approx(wins / pairs, abs=1e-12)
    assert stratified_auroc(strata.float(), labels, strata) == 0.5  # the stratum itself tells nothing within


def test_auroc_and_ap_extremes():
    labels = torch.tensor([0, 0, 1, 1, 1]).bool()
    perfect = torch.tensor([0.1, 0.2, 0.7, 0.8, 0.9])
    assert binary_auroc(perfect, labels) == 1.0 and average_precision(perfect, labels) == 1.0
    assert binary_auroc(-perfect, labels) == 0.0
    assert torch.isnan(torch.tensor(binary_auroc(perfect, torch.ones(5).bool())))
    with pytest.raises(ValueError, match="one shape"):
        binary_auroc(perfect, labels[:4])


@pytest.mark.parametrize("rate_num", [1, 7, 19])
def test_constant_scores_equal_the_rate_formulas(rate_num):
    labels = torch.zeros(20, dtype=torch.bool)
    labels[torch.randperm(20, generator=torch.Generator().manual_seed(rate_num))[:rate_num]] = True
    rate = rate_num / 20
    ones = torch.ones(20)
    assert binary_auroc(ones, labels) == 0.5 and binary_auroc(0 * ones, labels) == 0.5
    assert average_precision(ones, labels) == pytest.approx(rate, abs=1e-15)
    everything = precision_recall_f1(ones.bool(), labels)
    assert everything["precision"] == pytest.approx(rate) and everything["recall"] == 1.0
    assert everything["f1"] == pytest.approx(2 * rate / (1 + rate))
    assert precision_recall_f1(torch.zeros(20).bool(), labels) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# ------------------------------------------------------------------------------------------- baselines
def test_range_prior_fit_on_a_small_dataset():
    distances = torch.tensor([0.5, 1.5, 1.9, 2.5, 7.0, 30.0])
    labels = torch.tensor([1, 0, 1, 1, 0, 1])
    prior = RangePrior.fit(distances, labels, ring_m=2.0, max_distance=8.0)  # rings [0,2) [2,4) [4,6) [6,8)
    overall = labels.float().mean().item()
    # ring 0: 2 of 3, ring 1: 1 of 1, ring 2: no query -> overall rate, ring 3: 7 m and 30 m (clamped) -> 1 of 2
    assert prior.rates.tolist() == pytest.approx([2 / 3, 1.0, overall, 0.5])
    assert prior(torch.tensor([0.0, 3.9, 5.0, 100.0])).tolist() == pytest.approx([2 / 3, 1.0, overall, 0.5])
    with pytest.raises(ValueError, match="no training queries"):
        RangePrior.fit(torch.zeros(0), torch.zeros(0), 2.0, 8.0)


def test_neighbour_fraction_and_copy_on_a_hand_made_grid():
    visible = torch.tensor([[0, 5, 5, 5], [0, 5, 5, 6], [0, 6, 6, 6], [1, 5, 5, 4]])
    query = torch.tensor([[0, 5, 5, 4], [0, 5, 5, 7], [0, 9, 9, 9], [1, 5, 5, 5]])
    brute = [sum(1 for v in visible.tolist() if v[0] == q[0] and v[1:] != q[1:]
                 and max(abs(a - b) for a, b in zip(v[1:], q[1:])) <= 1) / 26 for q in query.tolist()]
    assert neighbour_fraction(query, visible).tolist() == pytest.approx(brute)
    offsets = torch.tensor([[0.1, 0.0, 0.0], [0.3, 0.0, -0.2], [0.0, 0.0, 0.0], [0.0, 0.05, 0.0]])
    centers = torch.zeros(4, 3)
    copied = neighbour_copy_points(query, centers, visible, offsets)
    # query 0 sees visible 0; query 1 sees visible 1 and 2; query 2 none -> its center; query 3 (sample 1) visible 3
    torch.testing.assert_close(copied, torch.tensor([[0.1, 0.0, 0.0], [0.15, 0.0, -0.1], [0, 0, 0], [0, 0.05, 0]]))


def test_voxel_point_offsets_are_mean_minus_center():
    xyz = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [5.0, 1.0, 2.0], [9.0, 9.0, 9.0]])
    point_to_voxel = torch.tensor([0, 0, 2, -1])
    centers = torch.tensor([[1.5, 0.0, 0.0], [7.0, 7.0, 7.0], [5.0, 0.0, 0.0]])
    offsets = voxel_point_offsets(xyz, point_to_voxel, centers)
    torch.testing.assert_close(offsets, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 2.0]]))
    assert ring_distance(torch.tensor([[3.0, 4.0, 10.0]])).tolist() == [5.0]


# ------------------------------------------------------------------------------------------- on real sweeps
def kitti_sweeps(*names, split="training"):
    root = shared_data_path("openpcdet", "data", "kitti", split, "velodyne")
    return [str(shared_data_path("openpcdet", "data", "kitti", split, "velodyne", n)) for n in names] or [root]


def tiny_model(device="cpu"):
    torch.manual_seed(0)
    cfg = {k: v for k, v in TINY_MODEL.items() if k != "type"}
    return VoxelMAE(**cfg).to(device).eval()


def test_range_prior_from_the_model_queries_on_training_sweeps():
    model = tiny_model()
    dataset = LidarSweeps(sweeps=kitti_sweeps("000001.bin"), layout="kitti")
    prior = fit_range_prior(model, dataset, PC_RANGE, seeds=(0, 1), ring_m=5.0)
    distances, labels = [], []  # the same count by hand, under the same seeded masks
    for index in range(len(dataset)):
        points = dataset[index]["points"]
        batch = dataset.collate_fn([{**dataset[index], "points": points[in_range_mask(points, PC_RANGE)]}])
        for seed in (0, 1):
            out = model.predict_occupancy(batch["points"], generator=torch.Generator().manual_seed(seed))
            distances.append(out["query_centers"][:, :2].norm(dim=1))
            labels.append(out["labels"])
    distances, labels = torch.cat(distances), torch.cat(labels)
    assert len(prior.rates) == 4  # corner of the range at hypot(16, 8) = 17.9 m
    for ring, rate in enumerate(prior.rates.tolist()):
        sel = (distances >= 5 * ring) & ((distances < 5 * ring + 5) if ring < 3 else True)
        assert rate == pytest.approx(labels[sel].mean().item())


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_dataset_scores_every_predictor(device):
    model = tiny_model(device)
    dataset = LidarSweeps(sweeps=kitti_sweeps("000000.bin", split="testing"), layout="kitti")
    prior = RangePrior(5.0, [0.9, 0.6, 0.5, 0.4])
    result = evaluate_dataset(model, dataset, PC_RANGE, prior, seeds=(0,))
    rate = result["occupied_rate"]
    assert 0 < result["num_hidden"] < result["num_queries"] and rate == pytest.approx(result["num_hidden"] / result["num_queries"])
    assert set(result["predictors"]) == set(PREDICTORS)
    everything = result["predictors"]["all_occupied"]
    assert everything["f1"] == pytest.approx(2 * rate / (1 + rate)) and everything["auroc"] == 0.5
    assert everything["ap"] == pytest.approx(rate) and result["predictors"]["none_occupied"]["f1"] == 0.0
    for name in PREDICTORS:
        rows = result["predictors"][name]["by_range"]
        assert sum(row["num_queries"] for row in rows) == result["num_queries"]
        assert 0.0 <= result["predictors"][name]["auroc"] <= 1.0
    assert result["predictors"]["neighbour"]["auroc_same_neighbours"] == 0.5
    points = torch.as_tensor(dataset[0]["points"])
    assert result["inside_range"]["per_sweep"] == [pytest.approx(in_range_mask(points, PC_RANGE)
                                                                 .float().mean().item())]
    assert set(result["chamfer"]) == {"model", "centers", "neighbour_copy"}
    assert all(v > 0 for v in result["chamfer"].values())


def test_sweep_outside_the_range_is_named():
    model = tiny_model()
    dataset = LidarSweeps(sweeps=kitti_sweeps("000000.bin", split="testing"), layout="kitti")
    with pytest.raises(ValueError, match="000000.bin.*none of its"):
        evaluate_dataset(model, dataset, [100.0, 100.0, 0.0, 101.0, 101.0, 1.0], RangePrior(5.0, [0.5]), seeds=(0,))


# ------------------------------------------------------------------------------------------- tools/evaluate.py
def load_tool():
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A config on real KITTI sweeps (train 000000, val testing 000000) and a checkpoint of its tiny model."""
    tmp = tmp_path_factory.mktemp("evaluate")
    train, val = kitti_sweeps("000000.bin"), kitti_sweeps("000000.bin", split="testing")
    config = tmp / "tiny.yaml"
    config.write_text(json.dumps({
        "model": TINY_MODEL,
        "data": {"train": {"type": "LidarSweeps", "sweeps": train, "layout": "kitti", "point_cloud_range": PC_RANGE},
                 "val": {"type": "LidarSweeps", "sweeps": val, "layout": "kitti", "point_cloud_range": PC_RANGE}},
        "train": {"epochs": 1, "batch_size": 1}}))
    checkpoint = tmp / "checkpoint.pth"
    save_checkpoint(checkpoint, {"model": tiny_model().state_dict(), "config": {"model": TINY_MODEL}})
    return tmp, config, checkpoint


@pytest.mark.slow
def test_evaluate_tool_end_to_end(tiny_run):
    tmp, config, checkpoint = tiny_run
    out = tmp / "eval.json"
    proc = subprocess.run([sys.executable, "tools/evaluate.py", str(config), "--checkpoint", str(checkpoint),
                           "--seeds", "0", "--device", "cpu", "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["num_sweeps"] == 1 and set(result["predictors"]) == set(PREDICTORS)
    assert len(result["range_prior"]["rates"]) == 9  # 2 m rings to the corner at 17.9 m
    for name in ("| model |", "| visible-neighbour baseline |", "| range prior", "| all occupied |", "AUROC",
                 "Chamfer-L2", "inside the model's range"):
        assert name in proc.stdout


def test_evaluate_info_file_and_layout_errors(tiny_run, tmp_path):
    tmp, config, checkpoint = tiny_run
    tool = load_tool()
    sweep = kitti_sweeps("000000.bin", split="testing")[0]
    info = tmp_path / "infos.pkl"
    info.write_bytes(pickle.dumps({"metainfo": {"dataset": "kitti"},
                                   "data_list": [{"lidar_points": {"lidar_path": sweep}}]}))
    base = [str(config), "--checkpoint", str(checkpoint), "--seeds", "0", "--device", "cpu"]
    saved = tmp_path / "by_info.json"
    by_info = tool.main(base + ["--info-file", str(info), "--output", str(saved)])
    by_sweeps = tool.main(base + ["--sweeps", sweep, "--layout", "kitti", "--prior", str(saved)])  # prior reused
    assert by_info["num_queries"] == by_sweeps["num_queries"] > 0
    assert by_info["range_prior"] == by_sweeps["range_prior"]
    for name in PREDICTORS:
        assert by_info["predictors"][name]["auroc"] == by_sweeps["predictors"][name]["auroc"]
    with pytest.raises(SystemExit, match=f"--prior {info}: not an output"):
        tool.main(base + ["--sweeps", sweep, "--layout", "kitti", "--prior", str(info)])

    with pytest.raises(SystemExit, match="give --layout") as err:
        tool.main(base + ["--sweeps", sweep])
    assert "layout=" not in str(err.value)
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps({"metainfo": {}, "data_list": [{"lidar_points": {"lidar_path": sweep}}]}))
    with pytest.raises(SystemExit, match="give --layout"):
        tool.main(base + ["--info-file", str(bare)])


def test_evaluate_checkpoint_of_another_model_type_is_one_line(tiny_run, tmp_path):
    tmp, config, checkpoint = tiny_run
    other = tmp_path / "radial.pth"
    save_checkpoint(other, {"model": tiny_model().state_dict(), "config": {"model": {"type": "RadialMAE"}}})
    with pytest.raises(CheckpointError) as err:
        load_tool().main([str(config), "--checkpoint", str(other), "--device", "cpu"])
    message = str(err.value)
    assert "RadialMAE" in message and "VoxelMAE" in message and "\n" not in message
