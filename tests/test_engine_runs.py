"""Training a user can leave running: checkpoint retention, best checkpoint, resume / load-from, refusing to
overwrite a run, damaged checkpoints and logs, layer-wise lr decay, fp16, pictures, sync_bn, device plumbing."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pcmae.engine.build import default_work_dir
from pcmae.engine.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from pcmae.engine.config import TrainConfig
from pcmae.engine.device import model_device, move_to_device
from pcmae.engine.distributed import convert_sync_batchnorm
from pcmae.engine.schedule import build_optimizer, layer_ids, set_lr
from pcmae.engine.trainer import Trainer
from pcmae.registry import ConfigError
from tests.engine_fixtures import RandomVectors, make_model

REPO = Path(__file__).resolve().parents[1]
TRAIN = TrainConfig(epochs=4, batch_size=4, lr=1e-2, min_lr=1e-4, warmup_epochs=1, log_interval=1, seed=3)


def read_metrics(work_dir: Path) -> list:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def fit(work_dir, cfg=TRAIN, model=None, resume=False, overwrite=False, **kwargs):
    trainer = Trainer(model if model is not None else make_model(), RandomVectors(num_samples=24), cfg, work_dir,
                      **kwargs)
    return trainer, trainer.fit(resume=resume, overwrite=overwrite)


# --- checkpoint files ------------------------------------------------------------------------------

def test_max_keep_ckpts_keeps_the_newest_epoch_files_without_optimizer_unless_asked(tmp_path):
    fit(tmp_path / "two", replace(TRAIN, max_keep_ckpts=2))
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint_*")) == [
        "checkpoint_epoch3.pth", "checkpoint_epoch4.pth", "checkpoint_last.pth"]
    epoch, last = (load_checkpoint(tmp_path / "two" / f"checkpoint_{n}.pth") for n in ("epoch4", "last"))
    assert "optimizer" not in epoch and "optimizer" in last
    for name, value in last["model"].items():  # the epoch-4 file is the final model
        assert torch.equal(value, epoch["model"][name])

    fit(tmp_path / "default")  # default: the last checkpoint only (and a best one when asked)
    assert [p.name for p in (tmp_path / "default").glob("checkpoint_*")] == ["checkpoint_last.pth"]
    fit(tmp_path / "all", replace(TRAIN, max_keep_ckpts=-1, epoch_ckpt_optimizer=True))
    assert len(list((tmp_path / "all").glob("checkpoint_epoch*.pth"))) == 4
    assert "optimizer" in load_checkpoint(tmp_path / "all" / "checkpoint_epoch1.pth")


@pytest.mark.parametrize("metric, mode", [("val/loss", "auto"), ("val/mae", "max")])
def test_save_best_keeps_the_weights_of_the_best_validated_epoch(tmp_path, metric, mode):
    cfg = replace(TRAIN, epochs=5, lr=3e-2, save_best=metric, save_best_mode=mode)
    val = RandomVectors(num_samples=12, seed=7)
    trainer, _ = fit(tmp_path, cfg, val_dataset=val)
    values = [m[metric] for m in read_metrics(tmp_path) if metric in m]
    best_epoch = 1 + int(np.argmin(values) if mode == "auto" else np.argmax(values))
    best = load_checkpoint(tmp_path / "checkpoint_best.pth")
    assert best["epoch"] == best_epoch and best["best"][0] == pytest.approx(min(values) if mode == "auto"
                                                                            else max(values))
    model = make_model().eval()  # the weights in the file give the logged value again
    load_model_weights(model, tmp_path / "checkpoint_best.pth")
    with torch.no_grad():
        out = model({"x": val.x, "y": val.y})
    assert out[metric.split("/")[1]].item() == pytest.approx(best["best"][0], rel=1e-5)
    assert len(set(values)) > 1  # the metric moved, so picking the best epoch was a real choice


def test_resume_from_a_path_and_load_from_weights(tmp_path):
    full, _ = fit(tmp_path / "full")
    stopped, _ = fit(tmp_path / "a", replace(TRAIN, max_steps=9))
    # --resume PATH: another folder's checkpoint_last continues in this one, with the same end
    resumed, _ = fit(tmp_path / "b", resume=tmp_path / "a" / "checkpoint_last.pth")
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    fit(tmp_path / "c", replace(TRAIN, max_keep_ckpts=1))
    with pytest.raises(ValueError, match="checkpoint_epoch4.pth: holds weights only .* --load-from"):
        fit(tmp_path / "d", resume=tmp_path / "c" / "checkpoint_epoch4.pth")
    # --load-from: the weights, then a fresh optimizer and schedule
    model = make_model(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_model_weights(model, tmp_path / "c" / "checkpoint_epoch4.pth")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.equal(v, stopped.model.state_dict()[k]) or k in changed
                           for k, v in model.state_dict().items())
    trainer = Trainer(model, RandomVectors(num_samples=24), TRAIN, tmp_path / "e")
    assert trainer.step == 0 and not trainer.optimizer.state


def test_a_new_run_refuses_a_work_dir_that_holds_one(tmp_path):
    fit(tmp_path, replace(TRAIN, epochs=1))
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=f"{tmp_path} already holds a run .*--resume.*--overwrite"):
        fit(tmp_path, replace(TRAIN, epochs=1))
    assert (tmp_path / "metrics.jsonl").read_text() == before  # nothing was emptied


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    dead = tmp_path / ".checkpoint_last.pth.tmp-999999999"  # no such process
    alive = tmp_path / f".checkpoint_last.pth.tmp-{os.getppid()}"  # a running process's save in progress
    other = tmp_path / ".notes.txt.tmp-999999999"  # not ours to remove
    for path in (dead, alive, other):
        path.write_bytes(b"half a checkpoint")
    fit(tmp_path, replace(TRAIN, epochs=1))
    assert not dead.exists() and alive.exists() and other.exists()


def test_a_flipped_byte_inside_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint_last.pth"
    save_checkpoint(path, {"model": {"w": torch.arange(4096, dtype=torch.float32)}, "epoch": 1})
    data = bytearray(path.read_bytes())
    offset = data.find(np.arange(4096, dtype=np.float32).tobytes()[400:416])  # inside the tensor's bytes
    assert offset > 0
    data[offset + 3] ^= 0x40
    path.write_bytes(bytes(data))
    w = torch.load(path, weights_only=True)["model"]["w"]  # torch itself reads it: one weight silently wrong
    assert not torch.equal(w, torch.arange(4096, dtype=torch.float32))
    with pytest.raises(CheckpointError, match="checkpoint_last.pth: damaged checkpoint, record .* CRC-32"):
        load_checkpoint(path)
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CheckpointError, match="checkpoint_last.pth: damaged"):
        load_checkpoint(path)


def test_a_checkpoint_of_another_model_is_one_line_naming_both(tmp_path):
    save_checkpoint(tmp_path / "vm.pth", {"model": {"encoder.w": torch.ones(2)},
                                          "config": {"model": {"type": "VoxelMAE"}}})
    with pytest.raises(CheckpointError) as err:
        load_model_weights(make_model(), tmp_path / "vm.pth", "EngineTestMLP")
    expected = f"{tmp_path / 'vm.pth'}: holds a VoxelMAE checkpoint, but this config builds a EngineTestMLP"
    assert str(err.value) == expected
    small = make_model(hidden=8)
    save_checkpoint(tmp_path / "small.pth", {"model": small.state_dict(),
                                             "config": {"model": {"type": "EngineTestMLP"}}})
    with pytest.raises(CheckpointError) as err:
        load_model_weights(make_model(hidden=16), tmp_path / "small.pth", "EngineTestMLP")
    message = str(err.value)
    assert "\n" not in message and "of other shape (e.g. net.0.weight (8, 4) vs (16, 4))" in message


# --- logs ------------------------------------------------------------------------------------------

def test_resume_drops_a_half_written_last_metrics_line_and_names_a_damaged_one(tmp_path):
    fit(tmp_path, replace(TRAIN, max_steps=8))
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 9, "epo')  # killed while writing
    with pytest.warns(UserWarning, match="dropping its half-written last line"):
        fit(tmp_path, resume=True)
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 25))

    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([*lines[:3], "garbage", *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:4: not a metrics record \('garbage'\)"):
        fit(tmp_path, resume=True)


class PictureMLP(nn.Module):
    """TinyMLP that draws its predictions as a picture (counts its calls)."""

    def __init__(self):
        super().__init__()
        self.mlp = make_model()
        self.calls = []

    def forward(self, batch):
        return self.mlp(batch)

    def picture(self, batch):
        self.calls.append((self.training, batch["x"].shape[0]))
        value = int(255 * torch.sigmoid(self.mlp(batch)["pred"].mean()).item())
        return np.full((8, 12, 3), value, dtype=np.uint8)


def test_pictures_go_to_tensorboard_every_vis_interval_steps_and_to_a_png(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = PictureMLP()
    trainer = Trainer(model, RandomVectors(num_samples=24), replace(TRAIN, epochs=1, vis_interval=2, vis_samples=3),
                      tmp_path, picture_dataset=RandomVectors(num_samples=24))
    trainer.fit()
    assert model.calls == [(False, 3)] * 3  # steps 2, 4, 6, in eval mode, on vis_samples items
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("picture")] == [2, 4, 6]
    png = trainer.save_picture(tmp_path / "picture.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="TinyMLP draws no pictures"):
        Trainer(make_model(), RandomVectors(num_samples=24), TRAIN, tmp_path / "x",
                picture_dataset=RandomVectors(num_samples=4))


# --- optimisation ----------------------------------------------------------------------------------

class Blocks(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(depth))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)


def test_layer_decay_scales_the_lr_of_each_block():
    model = Blocks(depth=3)
    ids, num_layers = layer_ids(model)
    assert num_layers == 4 and ids["embed.weight"] == 0 and ids["blocks.1.weight"] == 2
    assert ids["norm.weight"] == ids["head.bias"] == 4
    optimizer = build_optimizer(model, replace(TRAIN, layer_decay=0.5))
    set_lr(optimizer, 1.0)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        assert lr_of[id(param)] == pytest.approx(0.5 ** (4 - ids[name])), name
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="layer_decay: TinyMLP has no 'blocks.<i>.' parameters"):
        build_optimizer(make_model(), replace(TRAIN, layer_decay=0.5))


def test_fp16_autocast_with_a_grad_scaler(tmp_path):
    model = make_model()
    trainer, _ = fit(tmp_path, replace(TRAIN, epochs=1, amp="fp16"), model=model)
    assert model.seen_dtypes == {torch.float16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = load_checkpoint(tmp_path / "checkpoint_last.pth")
    assert state["scaler"]["scale"] > 0 and trainer.scaler.is_enabled()
    assert np.isfinite([m["loss"] for m in read_metrics(tmp_path)]).all()


def test_sync_bn_converts_every_batchnorm_of_every_shipped_model_and_refuses_cpu():
    from pcmae.engine.build import build_model, load_checked_config

    converted = 0
    for config in sorted((REPO / "configs").glob("*/*.yaml")):
        model = build_model(load_checked_config(config)["model"])
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        synced = convert_sync_batchnorm(model, torch.device("cuda"))  # conversion only; nothing runs
        assert not [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and not isinstance(m, nn.SyncBatchNorm)], config.name
        assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == len(norms)
        converted += len(norms)
    assert converted > 0
    with pytest.raises(ConfigError, match="train.sync_bn: torch's SyncBatchNorm runs on GPUs only"):
        convert_sync_batchnorm(make_model(), torch.device("cpu"))


# --- work dirs and devices -------------------------------------------------------------------------

def test_every_shipped_config_has_its_own_default_work_dir():
    configs = sorted((REPO / "configs").glob("*/*.yaml"))
    dirs = {config: default_work_dir(config, {}) for config in configs}
    assert len(set(dirs.values())) == len(configs)
    assert dirs[REPO / "configs/voxel_mae/kitti_shared.yaml"] == Path("work_dirs/voxel_mae/kitti_shared")
    assert default_work_dir("elsewhere/my.yaml", {"work_dir": "out/x"}) == Path("out/x")


class Reached(Exception):
    """Raised by a spy model once it has checked where its input is."""


class DeviceSpy(nn.Module):
    """A model on the ``meta`` device: asserts that every tensor it is given is on its device, then stops."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, device="meta"))

    def check(self, *inputs):
        tensors = [t for t in torch.utils._pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
        assert tensors and all(t.device == self.w.device for t in tensors), [t.device for t in tensors]
        raise Reached

    def forward(self, batch):
        self.check(batch)

    def encode(self, points):
        self.check(points)


def test_batches_are_moved_to_the_models_device_by_the_evaluation_helpers():
    """CPU-only CI catches a batch left on the CPU: the model lives on ``meta`` and checks its input."""
    from pcmae.data import SyntheticObjects
    from pcmae.evaluation.classification import evaluate_accuracy
    from pcmae.evaluation.probe import extract_features

    dataset = SyntheticObjects(num_samples=4, num_points=64, split="test")
    for protocol in ("plain", "vote"):
        with pytest.raises(Reached):
            evaluate_accuracy(DeviceSpy(), dataset, batch_size=2, protocol=protocol)
    with pytest.raises(Reached):
        extract_features(DeviceSpy(), dataset, batch_size=2)
    spy = DeviceSpy()
    assert model_device(spy).type == "meta" and model_device(nn.Identity()).type == "cpu"
    moved = move_to_device({"a": [torch.ones(2), (torch.zeros(1),)], "n": 3}, "meta")
    assert moved["a"][0].device.type == moved["a"][1][0].device.type == "meta" and moved["n"] == 3


def test_vote_protocol_averages_augmented_copies_reproducibly():
    from pcmae.data import SyntheticObjects
    from pcmae.downstream import PointClassifier
    from pcmae.evaluation.classification import evaluate_accuracy

    torch.manual_seed(0)
    model = PointClassifier(num_classes=8, num_groups=8, group_size=8, embed_dim=24, depth=1, num_heads=2)
    dataset = SyntheticObjects(num_samples=16, num_points=64, split="test")
    plain = evaluate_accuracy(model, dataset, protocol="plain")
    vote = [evaluate_accuracy(model, dataset, protocol="vote", seed=s) for s in (0, 0)]
    assert vote[0] == vote[1] and plain["protocol"] == "plain" and vote[0]["protocol"] == "vote"
    assert plain["num_samples"] == vote[0]["num_samples"] == 16
    with pytest.raises(ValueError, match="unknown evaluation protocol 'tta'"):
        evaluate_accuracy(model, dataset, protocol="tta")
