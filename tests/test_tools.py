"""The command lines end to end on the embedded default (small settings so they take seconds)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO = "configs/point_mae/demo.yaml"
TINY = ["model.embed_dim=48", "model.depth=1", "model.num_heads=3", "model.decoder_depth=1",
        "model.decoder_num_heads=3", "model.num_groups=16", "model.group_size=16",
        "data.train.num_samples=64", "data.train.num_points=256", "train.batch_size=16", "train.log_interval=1"]


def run_tool(*args, check=True):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_pretrain_then_probe_and_finetune(tmp_path):
    work = tmp_path / "pm"
    run_tool("tools/pretrain.py", DEMO, "--work-dir", work, *TINY, "train.epochs=2")
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {"step", "epoch", "loss", "lr"} <= set(lines[0])
    assert (work / "checkpoint_last.pth").is_file()
    assert (work / "reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    probe_sizes = ["probe.train.num_samples=60", "probe.test.num_samples=60", "probe.train.num_points=256",
                   "probe.test.num_points=256"]
    out = tmp_path / "probe.json"
    run_tool("tools/probe.py", DEMO, "--checkpoint", work / "checkpoint_last.pth", "--seeds", "0", "1",
             "--output", out, *TINY, *probe_sizes)
    result = json.loads(out.read_text())
    assert set(result) == {"pre-trained", "random init"}
    assert 0.0 <= result["pre-trained"]["mean"] <= 1.0 and len(result["pre-trained"]["accuracy"]) == 2

    cfg = tmp_path / "finetune.yaml"
    cfg.write_text(
        "model: {type: PointClassifier, num_classes: 8, num_groups: 16, group_size: 16, embed_dim: 48, depth: 1,"
        " num_heads: 3}\n"
        "data:\n  train: {type: SyntheticObjects, num_samples: 64, num_points: 256, split: train}\n"
        "  val: {type: SyntheticObjects, num_samples: 32, num_points: 256, split: test}\n"
        "train: {epochs: 1, batch_size: 16, lr: 0.001}\n")
    run_tool("tools/finetune.py", cfg, "--pretrained", work / "checkpoint_last.pth", "--work-dir", tmp_path / "ft")
    result = json.loads((tmp_path / "ft" / "eval.json").read_text())
    assert result["num_samples"] == 32 and 0.0 <= result["accuracy"] <= 1.0


def test_unknown_config_key_is_named(tmp_path):
    proc = run_tool("tools/pretrain.py", DEMO, "--work-dir", tmp_path, "model.mask_raito=0.5", check=False)
    assert proc.returncode != 0
    assert "model.mask_raito" in proc.stderr and "mask_ratio" in proc.stderr
    assert not (tmp_path / "checkpoint_last.pth").exists()


@pytest.mark.slow
def test_lidar_pretrain_then_evaluate_with_plot(tmp_path):
    work = tmp_path / "vm"
    tiny = ["data.train.num_frames=4", "data.train.frames_per_scene=4", "data.val.num_frames=1",
            "train.batch_size=2", "train.log_interval=1", "model.depth=1"]
    run_tool("tools/pretrain.py", "configs/voxel_mae/demo.yaml", "--work-dir", work, *tiny, "train.epochs=2")
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"occupancy", "num_points", "chamfer", "loss"} <= set(lines[0])
    assert (work / "bev.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    proc = run_tool("tools/evaluate.py", "configs/voxel_mae/demo.yaml", "--checkpoint", work / "checkpoint_last.pth",
                    "--seeds", "0", "--plot", plot, "--output", out, *tiny)
    result = json.loads(out.read_text())
    assert result["num_sweeps"] == 1 and result["num_hidden"] > 0
    assert 0.0 <= result["baseline"]["f1"] <= 1.0 and 0.0 <= result["model"]["f1"] <= 1.0
    assert "visible-neighbour baseline" in proc.stdout and plot.read_bytes()[:4] == b"\x89PNG"
