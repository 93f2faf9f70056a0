"""Point-MAE's released checkpoints load into pcmae and give the original architecture's outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcmae.integrations.point_mae_checkpoint import (CheckpointMismatchError, convert_state_dict,
                                                     load_point_mae_checkpoint)
from tests.point_mae_reference import RefPointMAE, RefPointTransformer, randomize_
from tests.shared_data import shared_data_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published_shapes():
    path = shared_data_path("..", "formats", "point_mae_state_dict_shapes.json")
    return json.loads(path.read_text())


def as_released_file(model: torch.nn.Module, path: Path) -> Path:
    """Save like Point-MAE's runner: DDP 'module.' prefix under 'base_model', plus bookkeeping entries."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"base_model": state, "optimizer": {}, "epoch": 299, "metrics": {}, "best_metrics": {}}, path)
    return path


def test_reference_has_exactly_the_published_keys(published_shapes):
    for model, kind in [(RefPointMAE(), "pretrain"), (RefPointTransformer(), "finetune_cls")]:
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == published_shapes[kind]


def test_every_published_key_converts(published_shapes):
    for kind in ["pretrain", "finetune_cls"]:
        state = {k: torch.zeros(s) for k, s in published_shapes[kind].items()}
        converted, _ = convert_state_dict(state)
        assert len(converted) == len(state)


def test_pretrain_checkpoint_matches_original(tmp_path):
    ref = RefPointMAE()
    randomize_(ref, seed=1)
    ref.eval()
    model = load_point_mae_checkpoint(as_released_file(ref, tmp_path / "pretrain.pth")).eval()

    pts = torch.randn(2, 1024, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, torch.randperm(64, generator=torch.Generator().manual_seed(1))[:38]] = True
    mask[1, torch.randperm(64, generator=torch.Generator().manual_seed(2))[:38]] = True
    with torch.no_grad():
        ref_latent, ref_rebuild = ref(pts, mask)
        latent, _, groups = model.forward_encoder(pts, mask)
        predicted = model.forward_decoder(latent, groups.centers, mask)
    torch.testing.assert_close(latent, ref_latent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predicted.reshape(ref_rebuild.shape), ref_rebuild, atol=1e-5, rtol=1e-5)


def test_classifier_checkpoint_matches_original(tmp_path):
    ref = RefPointTransformer(cls_dim=15)
    randomize_(ref, seed=3)
    ref.eval()
    model = load_point_mae_checkpoint(as_released_file(ref, tmp_path / "cls.pth")).eval()
    pts = torch.randn(3, 1024, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model({"points": pts})["logits"], ref(pts), atol=1e-5, rtol=1e-5)


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    ref = RefPointMAE(depth=2, decoder_depth=1)
    state = ref.state_dict()
    state.pop("MAE_encoder.norm.weight")
    torch.save({"base_model": state}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointMismatchError, match="missing.*encoder.norm.weight"):
        load_point_mae_checkpoint(tmp_path / "missing.pth")

    state = ref.state_dict()
    state["MAE_encoder.extra_proj.weight"] = torch.zeros(3)
    torch.save({"base_model": state}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointMismatchError, match="extra_proj"):
        load_point_mae_checkpoint(tmp_path / "extra.pth")


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    torch.save({"state_dict": other.state_dict()}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointMismatchError, match="not a Point-MAE checkpoint"):
        load_point_mae_checkpoint(tmp_path / "resnet.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "resnet.pth").read_bytes()[:100])
    with pytest.raises(CheckpointMismatchError, match="truncated.pth"):
        load_point_mae_checkpoint(tmp_path / "truncated.pth")


def test_convert_tool_writes_a_pcmae_checkpoint(tmp_path):
    ref = RefPointMAE(depth=2, decoder_depth=1)
    randomize_(ref)
    src = as_released_file(ref, tmp_path / "pretrain.pth")
    out = tmp_path / "converted.pth"
    subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), str(src), str(out)],
                   check=True, cwd=REPO, capture_output=True)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["config"]["model"]["type"] == "PointMAE"
    assert ckpt["config"]["model"]["depth"] == 2
    assert torch.equal(ckpt["model"]["encoder.norm.weight"], ref.state_dict()["MAE_encoder.norm.weight"])
