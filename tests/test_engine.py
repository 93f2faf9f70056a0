"""Training engine: schedule, optimizer groups, exact resume, logs, checkpoints, AMP, DDP, pictures."""
from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmae.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pcmae.engine.config import TrainConfig
from pcmae.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from pcmae.engine.schedule import build_optimizer, cosine_lr, set_lr
from pcmae.engine.trainer import Trainer
from pcmae.visualization import save_reconstruction_png
from pcmae.registry import DATASETS
from tests.engine_fixtures import IndexLoss, RandomVectors, make_model

REPO = Path(__file__).resolve().parents[1]
# 24 samples / batch 4 = 6 steps per epoch, 4 epochs = 24 steps
TRAIN = TrainConfig(epochs=4, batch_size=4, lr=1e-2, min_lr=1e-4, warmup_epochs=1, log_interval=1, seed=3,
                    grad_clip=1.0)


def read_metrics(work_dir: Path) -> list:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def fit(work_dir, cfg=TRAIN, model=None, dataset=None, resume=False, **kwargs):
    model = model if model is not None else make_model()
    dataset = dataset if dataset is not None else RandomVectors(num_samples=24)
    trainer = Trainer(model, dataset, cfg, work_dir, **kwargs)
    return trainer, trainer.fit(resume=resume)


# --- schedule and optimizer ------------------------------------------------------------------------

def test_cosine_lr_warmup_then_half_cosine():
    lr = [cosine_lr(s, 1.0, 0.1, warmup_steps=4, total_steps=14) for s in range(16)]
    assert lr[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr[4] == pytest.approx(1.0)
    assert lr[9] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr[14] == pytest.approx(0.1) and lr[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[4:], lr[5:]))
    assert cosine_lr(0, 2.0, 0.0, warmup_steps=0, total_steps=10) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="total_steps >= 1"):
        cosine_lr(0, 1.0, 0.0, 0, 0)


def test_optimizer_groups_skip_decay_on_biases_norms_and_named_tokens():
    model = make_model()
    opt = build_optimizer(model, TRAIN)
    by_id = {id(p): name for name, p in model.named_parameters()}
    groups = {g["weight_decay"]: sorted(by_id[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert groups[TRAIN.weight_decay] == ["net.0.weight", "net.4.weight"]
    assert groups[0.0] == ["net.0.bias", "net.1.bias", "net.1.weight", "net.4.bias", "token"]
    assert opt.defaults["betas"] == TRAIN.betas
    opt.param_groups[1]["lr_scale"] = 0.5
    set_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1]

    model.no_weight_decay = lambda: {"tokn"}
    with pytest.raises(ValueError, match=r"no_weight_decay\(\) names no parameter: \['tokn'\]"):
        build_optimizer(model, TRAIN)


# --- exact resume ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_step, num_workers", [(12, 0), (13, 0), (12, 2)],
                         ids=["epoch-boundary", "mid-epoch", "epoch-boundary-2-workers"])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, stop_step, num_workers):
    cfg = replace(TRAIN, num_workers=num_workers)
    dataset = RandomVectors(num_samples=24, jitter=0.05)  # per-access noise: worker / process RNG matters
    full, _ = fit(tmp_path / "full", cfg, dataset=dataset)

    killed, summary = fit(tmp_path / "resumed", replace(cfg, max_steps=stop_step), dataset=dataset)
    assert summary["steps"] == stop_step and killed.step == stop_step
    partial = {k: v.clone() for k, v in killed.model.state_dict().items()}

    resumed, summary = fit(tmp_path / "resumed", cfg, model=make_model(seed=99), dataset=dataset, resume=True)
    assert summary["steps"] == 24 and summary["epochs"] == 4
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for name, value in full_state.items():
        assert torch.equal(value, resumed_state[name]), name
        assert not torch.equal(value, partial[name]), name  # training went on after the resume
    # the logs line up too: same steps, same losses and learning rates (the stop step is logged by both)
    strip = [{k: v for k, v in m.items() if k not in ("time_per_step", "samples_per_s")}
             for m in read_metrics(tmp_path / "full")]
    assert [{k: v for k, v in m.items() if k not in ("time_per_step", "samples_per_s")}
            for m in read_metrics(tmp_path / "resumed")] == strip


def test_resume_needs_a_checkpoint_and_the_same_steps_per_epoch(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint at .*checkpoint_last.pth"):
        fit(tmp_path, resume=True)
    fit(tmp_path, replace(TRAIN, max_steps=3))
    with pytest.raises(ValueError, match="written with 6 steps per epoch .* this run has 3"):
        fit(tmp_path, replace(TRAIN, batch_size=8), resume=True)


def test_validation_is_logged_and_leaves_training_randomness_alone(tmp_path):
    cfg = replace(TRAIN, epochs=2)
    plain, _ = fit(tmp_path / "plain", cfg)
    with_val, _ = fit(tmp_path / "val", cfg, val_dataset=RandomVectors(num_samples=10, seed=1))
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, with_val.model.state_dict()[name]), name
    val_lines = [m for m in read_metrics(tmp_path / "val") if "val/loss" in m]
    assert [(m["step"], m["epoch"]) for m in val_lines] == [(6, 1), (12, 2)]
    # the last validation is the final model's mean squared error over the 10 samples, in eval mode
    val = RandomVectors(num_samples=10, seed=1)
    model = with_val.model.eval().cpu()
    with torch.no_grad():
        expected = ((model.net(val.x + model.token).squeeze(-1) - val.y) ** 2).mean().item()
    assert val_lines[-1]["val/loss"] == pytest.approx(expected, rel=1e-5)


# --- logs and checkpoints --------------------------------------------------------------------------

def test_metrics_jsonl_log_txt_checkpoints_and_summary(tmp_path):
    cfg = replace(TRAIN, epochs=4, log_interval=6, ckpt_interval=2, grad_clip=None, max_keep_ckpts=-1)
    dataset = DATASETS.build({"type": "EngineTestVectors", "num_samples": 24}, where="data.train")
    trainer, summary = fit(tmp_path, cfg, model=IndexLoss(), dataset=dataset, config={"train": cfg.to_dict()})
    lines = read_metrics(tmp_path)
    assert [m["step"] for m in lines] == [6, 12, 18, 24] and [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert set(lines[0]) == {"step", "epoch", "loss", "lr", "time_per_step", "samples_per_s"}
    # loss = mean sample index of a batch; over a whole epoch every index 0..23 is seen once
    assert all(m["loss"] == pytest.approx(11.5) for m in lines)
    for m in lines:  # logged lr = mean of the per-step lr over the 6 logged steps
        steps = range(m["step"] - 6, m["step"])
        expected = sum(cosine_lr(s, cfg.lr, cfg.min_lr, 6, 24) for s in steps) / 6
        assert m["lr"] == pytest.approx(expected)
        assert m["samples_per_s"] > 0 and m["time_per_step"] > 0
    assert summary["final_loss"] == pytest.approx(11.5) and summary["steps"] == 24 and summary["seconds"] > 0

    log = (tmp_path / "log.txt").read_text()
    assert "epoch 1/4 step 6 loss 11.5 lr " in log and " it/s" in log
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == [
        "checkpoint_epoch2.pth", "checkpoint_epoch4.pth", "checkpoint_last.pth"]
    ckpt = load_checkpoint(tmp_path / "checkpoint_epoch2.pth")  # weights and position, no optimizer state
    assert (ckpt["epoch"], ckpt["step"]) == (2, 12) and "optimizer" not in ckpt and "rng" not in ckpt
    assert ckpt["config"] == {"train": cfg.to_dict()} and set(ckpt["model"]) == {"w"}
    assert (tmp_path / "config.yaml").read_text().startswith("train:")
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

    with pytest.raises(ValueError, match="already holds a run .*--resume.*--overwrite"):  # its metrics stay
        fit(tmp_path, replace(cfg, epochs=1), model=IndexLoss(), dataset=dataset)
    assert [m["step"] for m in read_metrics(tmp_path)] == [6, 12, 18, 24]
    trainer = Trainer(IndexLoss(), dataset, replace(cfg, epochs=1), tmp_path)
    trainer.fit(overwrite=True)  # a fresh run in the same folder, asked for
    assert [m["step"] for m in read_metrics(tmp_path)] == [6]  # starts metrics.jsonl over
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == ["checkpoint_epoch1.pth", "checkpoint_last.pth"]


def test_grad_clip_bounds_the_gradient_and_logs_the_norm(tmp_path):
    cfg = replace(TRAIN, epochs=1, grad_clip=1e-3)
    trainer = Trainer(make_model(), RandomVectors(num_samples=24), cfg, tmp_path)
    norms = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: norms.append(torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for g in opt.param_groups for p in g["params"]])).item()))
    trainer.fit()
    assert len(norms) == 6 and max(norms) <= 1e-3 * (1 + 1e-4)
    logged = [m["grad_norm"] for m in read_metrics(tmp_path)]
    assert len(logged) == 6 and min(logged) > 1e-3  # pre-clipping norms are logged


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("none", torch.float32)])
def test_amp_bf16_autocast(tmp_path, amp, dtype):
    model = make_model()
    fit(tmp_path, replace(TRAIN, epochs=1, max_steps=2, amp=amp), model=model)
    assert model.seen_dtypes == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_bad_model_output_and_non_finite_loss_are_errors(tmp_path):
    class NoLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, batch):
            return {"pred": self.w * batch["x"]}

    with pytest.raises(TypeError, match="must return a dict with a 'loss' entry, got \\['pred'\\]"):
        fit(tmp_path, model=NoLoss())

    class NaNLoss(NoLoss):
        def forward(self, batch):
            return {"loss": self.w.sum() * float("nan")}

    with pytest.raises(FloatingPointError, match="non-finite .*'loss'.* at step 1 \\(epoch 1\\)"):
        fit(tmp_path, model=NaNLoss())


def test_too_small_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="3 training samples .* make no full batch of train.batch_size=4"):
        fit(tmp_path, dataset=RandomVectors(num_samples=3))


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pth"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "epoch": 1})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pth"]  # no temp file left behind


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save({"base_model": {"w": torch.ones(1)}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="foreign.pth: not a pcmae checkpoint.*convert_checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth: damaged or not a torch zip checkpoint"):
        load_checkpoint(tmp_path / "junk.pth")


def test_seeding_and_rng_state_round_trip():
    seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    state = capture_rng_state()
    after = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == after
    try:
        seed_everything(7, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


# --- DDP -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_two_processes_match_each_other_and_a_single_process_run(tmp_path):
    from tests.ddp_train import DDP_TRAIN

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for mode in ("plain", "noisy"):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               "--standalone", str(REPO / "tests" / "ddp_train.py"), str(tmp_path), mode],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def weights(run, rank):
        return torch.load(tmp_path / run / f"weights_rank{rank}.pt")

    for run in ("plain", "noisy", "resumed"):
        for name, value in weights(run, 0).items():
            assert torch.equal(value, weights(run, 1)[name]), (run, name)
    for name, value in weights("noisy", 0).items():  # exact resume under DDP (per-rank RNG states)
        assert torch.equal(value, weights("resumed", 0)[name]), name

    # 2 processes x batch 3 see the same global batches as 1 process x batch 6: same result up to rounding
    single, _ = fit(tmp_path / "single", TrainConfig(**{**DDP_TRAIN, "batch_size": 6}),
                    model=make_model(noise=0.0, dropout=0.0))
    for name, value in weights("plain", 0).items():
        torch.testing.assert_close(value, single.model.state_dict()[name], rtol=1e-5, atol=1e-6)

    lines = read_metrics(tmp_path / "plain")  # rank 0 alone writes: one line per step, no duplicates
    assert [m["step"] for m in lines] == list(range(1, 13))
    assert [m["step"] for m in read_metrics(tmp_path / "resumed")] == list(range(1, 13))
    assert len(list((tmp_path / "plain" / "tb").glob("events.out.tfevents.*"))) == 1
    assert (tmp_path / "plain" / "log.txt").read_text().count("starting at step 0/12") == 1


# --- pictures --------------------------------------------------------------------------------------

def png_size(path: Path) -> tuple:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def cloud(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3))


def test_reconstruction_png_grid(tmp_path):
    samples = [{"input": cloud(200, i), "visible": cloud(80, i + 10), "reconstruction": cloud(120, i + 20)}
               for i in range(2)]
    path = save_reconstruction_png(samples, tmp_path / "out" / "rec.png", dpi=40)
    assert png_size(path) == (3 * 3 * 40, 2 * 3 * 40)  # 3 columns x 2 rows of 3-inch panels
    samples[0]["masked_target"] = cloud(120, 5)
    path = save_reconstruction_png(samples, tmp_path / "out" / "rec.png", dpi=40)
    assert png_size(path) == (4 * 3 * 40, 2 * 3 * 40)  # a 4th column for the masked target
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["rec.png"]


def test_reconstruction_png_bad_input(tmp_path):
    good = {"input": cloud(10), "visible": cloud(5), "reconstruction": cloud(5)}
    with pytest.raises(KeyError, match="samples\\[1\\]: missing key 'visible'"):
        save_reconstruction_png([good, {"input": cloud(10), "reconstruction": cloud(5)}], tmp_path / "a.png")
    with pytest.raises(ValueError, match="samples\\[0\\]\\['reconstruction'\\]: expected finite \\(K, 3\\)"):
        save_reconstruction_png([{**good, "reconstruction": cloud(5)[:, :2]}], tmp_path / "a.png")
    with pytest.raises(ValueError, match="no samples"):
        save_reconstruction_png([], tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()
