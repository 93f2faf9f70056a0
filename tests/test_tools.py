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
    assert (work / "picture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

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
        "train: {epochs: 2, batch_size: 16, lr: 0.001, save_best: val/acc, layer_decay: 0.75}\n")
    run_tool("tools/finetune.py", cfg, "--pretrained", work / "checkpoint_last.pth", "--work-dir", tmp_path / "ft",
             "--protocol", "plain", "vote")
    val = [m for m in map(json.loads, (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()) if "val/acc" in m]
    assert [m["epoch"] for m in val] == [1, 2]  # validated every epoch
    result = json.loads((tmp_path / "ft" / "eval.json").read_text())
    best_epoch = 1 + max(range(2), key=lambda i: (val[i]["val/acc"], -i))
    assert result["best"]["epoch"] == best_epoch
    # the logged val/acc of the best epoch is the plain accuracy of checkpoint_best.pth
    assert result["best"]["plain"]["accuracy"] == pytest.approx(val[best_epoch - 1]["val/acc"], abs=1e-6)
    for weights in ("last", "best"):
        assert result[weights]["vote"]["num_samples"] == 32 and 0.0 <= result[weights]["vote"]["accuracy"] <= 1.0


def test_unknown_config_key_is_named(tmp_path):
    proc = run_tool("tools/pretrain.py", DEMO, "--work-dir", tmp_path, "model.mask_raito=0.5", check=False)
    assert proc.returncode != 0
    assert "model.mask_raito" in proc.stderr and "mask_ratio" in proc.stderr
    assert not (tmp_path / "checkpoint_last.pth").exists()


@pytest.mark.slow
def test_lidar_pretrain_then_evaluate_with_plot(tmp_path):
    work = tmp_path / "vm"
    tiny = ["data.train.num_frames=4", "data.train.frames_per_scene=4", "data.val.num_frames=1",
            "train.batch_size=2", "train.log_interval=1", "model.backbone.depth=1"]
    run_tool("tools/pretrain.py", "configs/voxel_mae/demo.yaml", "--work-dir", work, *tiny, "train.epochs=2")
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train, val = [m for m in lines if "loss" in m], [m for m in lines if "val/loss" in m]
    assert len(train) == 4 and {"occupancy", "num_points", "chamfer", "loss"} <= set(train[0])
    assert [m["epoch"] for m in val] == [1, 2]  # data.val is validated during pre-training
    assert (work / "picture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    proc = run_tool("tools/evaluate.py", "configs/voxel_mae/demo.yaml", "--checkpoint", work / "checkpoint_last.pth",
                    "--seeds", "0", "--plot", plot, "--output", out, *tiny)
    result = json.loads(out.read_text())
    assert result["num_sweeps"] == 1 and result["num_hidden"] > 0
    assert 0.0 <= result["baseline"]["f1"] <= 1.0 and 0.0 <= result["model"]["f1"] <= 1.0
    assert "visible-neighbour baseline" in proc.stdout and plot.read_bytes()[:4] == b"\x89PNG"


def run_main(tool: str, argv, capsys) -> tuple[int, str]:
    """Run a tool's main in this process the way its command line does: (exit status, stderr)."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        module = __import__(tool)
    finally:
        sys.path.remove(str(REPO / "tools"))
    capsys.readouterr()
    try:
        module.command_line(lambda: module.main([str(a) for a in argv]))()
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def one_line_error(status, err, expected):
    """Exit status 2, no traceback, and the last stderr line (after any progress lines) is the one error."""
    lines = err.strip().splitlines()
    assert status == 2 and "Traceback" not in err and [line for line in lines if "error" in line.lower()] == \
        lines[-1:] and lines[-1].startswith("error: "), err
    assert expected in lines[-1], err


def test_bad_overrides_and_settings_end_in_one_line(tmp_path, capsys):
    demo = REPO / DEMO
    cases = [(["train.betas=[0.9,"], "override train.betas=[0.9,: not valid YAML"),
             (["model.depth=abc"], "model.depth: expected an integer, got 'abc'"),
             (["train.lr=.inf"], "train.lr: must be finite"),
             (["data.train.num_points=many"], "data.train.num_points: expected an integer"),
             (["--resume"], "cannot resume: no checkpoint at"),
             (["--resume", "--load-from", "x.pth"], "give one of them")]
    if not torch.cuda.is_available():
        cases.append((["train.device=cuda"], "train.device is 'cuda' but torch sees no CUDA device"))
    for args, expected in cases:
        one_line_error(*run_main("pretrain", [demo, "--work-dir", tmp_path / "w", *TINY, *args], capsys), expected)
    assert not (tmp_path / "w" / "checkpoint_last.pth").exists()


@pytest.mark.slow
def test_runs_in_one_work_dir_and_checkpoints_of_other_models(tmp_path, capsys, monkeypatch):
    demo, work = REPO / DEMO, tmp_path / "w"
    status, _ = run_main("pretrain", [demo, "--work-dir", work, *TINY, "train.max_steps=2"], capsys)
    assert status == 0 and (work / "checkpoint_last.pth").is_file()
    metrics = (work / "metrics.jsonl").read_text()
    one_line_error(*run_main("pretrain", [demo, "--work-dir", work, *TINY, "train.max_steps=2"], capsys),
                   "already holds a run (checkpoint_last.pth, metrics.jsonl); pass --resume")
    assert (work / "metrics.jsonl").read_text() == metrics  # forgetting --resume no longer empties the log
    # the Point-MAE checkpoint given to a Voxel-MAE config: one line naming both
    one_line_error(*run_main("pretrain", [REPO / "configs/voxel_mae/demo.yaml", "--work-dir", tmp_path / "v",
                                          "--load-from", work / "checkpoint_last.pth"], capsys),
                   "holds a PointMAE checkpoint, but this config builds a VoxelMAE")
    one_line_error(*run_main("pretrain", [demo, "--work-dir", tmp_path / "s", "--load-from",
                                          work / "checkpoint_last.pth", *TINY[:-1], "model.embed_dim=96"], capsys),
                   "PointMAE weights do not fit this PointMAE")

    import errno  # a full disk while saving: one line, and no file half-written

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    one_line_error(*run_main("pretrain", [demo, "--work-dir", tmp_path / "full", *TINY, "train.max_steps=1"], capsys),
                   "No space left on device")
    assert not [p for p in (tmp_path / "full").iterdir() if "checkpoint" in p.name]


def test_finetune_reads_user_files_weights_only(tmp_path, capsys):
    from tests import finetune_payload  # a class whose unpickling runs code, as a malicious file would

    marker = tmp_path / "ran"
    torch.save({"base_model": finetune_payload.Payload(marker)}, tmp_path / "evil.pth")
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("model: {type: PointClassifier, num_classes: 8, num_groups: 8, group_size: 8, embed_dim: 24,"
                   " depth: 1, num_heads: 2}\n"
                   "data:\n  train: {type: SyntheticObjects, num_samples: 8, num_points: 64, split: train}\n"
                   "train: {epochs: 1, batch_size: 4}\n")
    status, err = run_main("finetune", [cfg, "--pretrained", tmp_path / "evil.pth", "--work-dir", tmp_path / "ft"],
                           capsys)
    one_line_error(status, err, "evil.pth: cannot be read as a torch checkpoint")
    assert not marker.exists()  # the pickle's code never ran
