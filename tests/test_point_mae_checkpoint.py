"""Point-MAE's released checkpoints load into pcmae and give the original architecture's outputs."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

import pytest
import torch

from pcmae.downstream.point_classifier import PointClassifier
from pcmae.engine.build import load_checked_config
from pcmae.integrations.point_mae_checkpoint import (CheckpointMismatchError, convert_point_mae_file,
                                                     convert_state_dict, load_point_mae_checkpoint)
from tests.point_mae_reference import RefPointMAE, RefPointTransformer, randomize_
from tests.shared_data import shared_data_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published_shapes():
    path = shared_data_path("..", "formats", "point_mae_state_dict_shapes.json")
    return json.loads(path.read_text())


def as_released_file(model: torch.nn.Module, path: Path, metrics: dict | None = None) -> Path:
    """Save like Point-MAE's runner: DDP 'module.' prefix under 'base_model', plus bookkeeping entries."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    metrics = metrics or {}
    torch.save({"base_model": state, "optimizer": {}, "epoch": 299, "metrics": metrics, "best_metrics": metrics}, path)
    return path


def as_numpy1_file(path: Path) -> Path:
    """Rewrite a torch zip file's pickle so that its numpy globals carry numpy 1.x names (numpy.core.*), as in
    files written before numpy 2 (the pickle's GLOBAL opcodes are text: module newline name newline)."""
    with zipfile.ZipFile(path) as src:
        records = [(info.filename, src.read(info.filename)) for info in src.infolist()]
    assert any(b"numpy._core.multiarray" in data for name, data in records if name.endswith("data.pkl"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in records:
            out.writestr(name, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                         if name.endswith("data.pkl") else data)
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
    model = load_point_mae_checkpoint(as_released_file(ref, tmp_path / "pretrain.pth"), num_groups=64)

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
    model = load_point_mae_checkpoint(as_released_file(ref, tmp_path / "cls.pth"), num_groups=64, group_size=32)
    pts = torch.randn(3, 1024, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model({"points": pts})["logits"], ref(pts), atol=1e-5, rtol=1e-5)


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    ref = RefPointMAE(depth=2, decoder_depth=1)
    state = ref.state_dict()
    state.pop("MAE_encoder.norm.weight")
    torch.save({"base_model": state}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointMismatchError, match="missing.*encoder.norm.weight"):
        load_point_mae_checkpoint(tmp_path / "missing.pth", num_groups=64)

    state = ref.state_dict()
    state["MAE_encoder.extra_proj.weight"] = torch.zeros(3)
    torch.save({"base_model": state}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointMismatchError, match="extra_proj"):
        load_point_mae_checkpoint(tmp_path / "extra.pth", num_groups=64)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    torch.save({"state_dict": other.state_dict()}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointMismatchError, match="not a Point-MAE checkpoint"):
        load_point_mae_checkpoint(tmp_path / "resnet.pth", num_groups=64)
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "resnet.pth").read_bytes()[:100])
    with pytest.raises(CheckpointMismatchError, match="truncated.pth"):
        load_point_mae_checkpoint(tmp_path / "truncated.pth", num_groups=64)


def test_convert_tool_writes_a_pcmae_checkpoint(tmp_path):
    ref = RefPointMAE(depth=2, decoder_depth=1)
    randomize_(ref)
    src = as_released_file(ref, tmp_path / "pretrain.pth")
    out = tmp_path / "converted.pth"
    subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), str(src), str(out),
                    "--num-groups", "64"], check=True, cwd=REPO, capture_output=True)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["config"]["model"]["type"] == "PointMAE"
    assert ckpt["config"]["model"]["depth"] == 2
    assert torch.equal(ckpt["model"]["encoder.norm.weight"], ref.state_dict()["MAE_encoder.norm.weight"])


SMALL_REF = {"c": 48, "depth": 2, "heads": 3}  # small models: the checks below are about grouping, not width


def test_num_groups_is_never_a_silent_default(tmp_path):
    """Point-MAE files do not store num_groups: without it (or a config) loading is refused, never 64."""
    src = as_released_file(RefPointTransformer(**SMALL_REF, cls_dim=15), tmp_path / "scan.pth")
    with pytest.raises(ValueError, match="scan.pth: Point-MAE files do not store num_groups / group_size"):
        load_point_mae_checkpoint(src)
    with pytest.raises(ValueError, match="do not store group_size"):  # a classifier file does not reveal it
        load_point_mae_checkpoint(src, num_groups=128, num_heads=3)


def test_scanobjectnn_file_loads_with_the_configs_128_groups(tmp_path):
    """A 128-group ScanObjectNN classifier, loaded with its config, gives the original's outputs on 2048 points
    (with 64 groups, the old silent default, the features differ)."""
    ref = RefPointTransformer(**SMALL_REF, cls_dim=15, num_group=128)
    randomize_(ref, seed=5)
    ref.eval()
    src = as_released_file(ref, tmp_path / "scan_hardest.pth")
    config = load_checked_config(REPO / "configs/point_mae/scanobjectnn_pb_t50_rs.yaml",
                                 ["model.embed_dim=48", "model.depth=2", "model.num_heads=3"])["model"]
    model = load_point_mae_checkpoint(src, config=config)
    assert model.grouper.num_groups == 128 and model.grouper.group_size == 32
    pts = torch.randn(2, 2048, 3, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = ref(pts)
        torch.testing.assert_close(model({"points": pts})["logits"], expected, atol=1e-5, rtol=1e-5)
        as_64 = load_point_mae_checkpoint(src, num_groups=64, group_size=32, num_heads=3)
        gap = (as_64.forward_features(pts) - model.forward_features(pts)).abs().max()
    assert gap > 1e-3, gap  # the 128-group model matches the original to 1e-5


def test_shapes_that_contradict_the_config_are_one_clear_error(tmp_path):
    pre = as_released_file(RefPointMAE(**SMALL_REF, decoder_depth=1, group_size=32), tmp_path / "pretrain.pth")
    cls = as_released_file(RefPointTransformer(**SMALL_REF, cls_dim=15), tmp_path / "cls.pth")
    base = {"num_groups": 64, "group_size": 32, "embed_dim": 48, "depth": 2, "num_heads": 3}
    cases = [
        (pre, {**base, "group_size": 16}, "pretrain.pth: group_size is 32 in the file's weights, but 16 in the config"),
        (pre, {**base, "embed_dim": 384, "num_heads": 6}, "pretrain.pth: embed_dim is 48 .* but 384 in the config"),
        (pre, {**base, "type": "PointClassifier"}, "pretrain.pth: holds a Point-MAE pretrain model .PointMAE., "
                                                   "but the config builds a PointClassifier"),
        (cls, {**base, "num_classes": 40}, "cls.pth: num_classes is 15 in the file's weights, but 40 in the config"),
        (cls, {**base, "depth": 12}, "cls.pth: depth is 2 in the file's weights, but 12 in the config"),
    ]
    for path, config, message in cases:
        with pytest.raises(CheckpointMismatchError, match=message):
            load_point_mae_checkpoint(path, config=config)
    with pytest.raises(CheckpointMismatchError, match="pretrain.pth: group_size is 32 .* but 64"):
        convert_point_mae_file(pre, num_groups=64, group_size=64)
    with pytest.raises(CheckpointMismatchError, match="cls.pth: num_classes is 15 .* but 40"):
        convert_point_mae_file(cls, num_groups=64, group_size=32, num_classes=40)
    # the group size of a pre-training file is read from its decoder head
    assert convert_point_mae_file(pre, num_groups=64, num_heads=3)[0]["group_size"] == 32


def test_loaded_model_is_in_eval_mode_and_deterministic(tmp_path):
    """Two calls on the same input agree: no random augmentation, dropout or drop-path after loading."""
    ref = RefPointTransformer(**SMALL_REF, cls_dim=15)
    randomize_(ref, seed=7)
    model = load_point_mae_checkpoint(as_released_file(ref, tmp_path / "cls.pth"), num_groups=32, group_size=16,
                                      num_heads=3)
    assert not any(m.training for m in model.modules())
    pts = torch.randn(2, 512, 3, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(model({"points": pts})["logits"], model({"points": pts})["logits"])
    pre = load_point_mae_checkpoint(as_released_file(RefPointMAE(**SMALL_REF, decoder_depth=1), tmp_path / "p.pth"),
                                    num_groups=32, num_heads=3)
    assert not pre.training
    assert torch.equal(pre.encode(pts), pre.encode(pts))


def test_numpy_metrics_load_weights_only(tmp_path):
    """Point-MAE's runner saves numpy scalars in metrics (e.g. an SVM accuracy): they load weights-only, with
    numpy 2 names and numpy 1.x names (numpy.core.multiarray.scalar); other objects are one line naming them."""
    ref = RefPointMAE(**SMALL_REF, decoder_depth=1)
    randomize_(ref, seed=9)
    metrics = {"acc": np.float64(91.25), "svm": np.float32(0.875), "epoch": np.int64(3)}
    new = as_released_file(ref, tmp_path / "numpy2.pth", metrics)
    old = as_numpy1_file(as_released_file(ref, tmp_path / "numpy1.pth", metrics))
    with pytest.raises(Exception, match="numpy"):  # what torch.load alone does with these files
        torch.load(old, weights_only=True)
    for path in (new, old):
        _, state = convert_point_mae_file(path, num_groups=64, num_heads=3)
        assert torch.equal(state["encoder.norm.weight"], ref.state_dict()["MAE_encoder.norm.weight"])

    arrays = as_released_file(ref, tmp_path / "arrays.pth", {"per_class": np.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"arrays.pth: cannot be read as a torch checkpoint "
                                                      r"weights-only: it holds the Python object numpy\._core"):
        convert_point_mae_file(arrays, num_groups=64)


def tool_main(name: str, function: str = "main"):
    """A function of tools/<name>.py (tools/ is not a package: imported as test_tools.py does)."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        module = __import__(name)
    finally:
        sys.path.remove(str(REPO / "tools"))
    return getattr(module, function)


def finetune_config(**model) -> dict:
    return {"type": "PointClassifier", "num_classes": 8, "num_groups": 32, "group_size": 32, "embed_dim": 48,
            "depth": 2, "num_heads": 3, **model}


def test_finetune_pretrained_point_mae_files(tmp_path, capsys):
    """tools/finetune.py --pretrained: a Point-MAE file is converted with the fine-tuning config (its group size
    must agree with a pre-training file's decoder), numpy metrics load, and a classifier file's dropped head is
    named on one line."""
    pretrained_state = tool_main("finetune", "pretrained_state")
    pre = RefPointMAE(**SMALL_REF, decoder_depth=1)
    randomize_(pre, seed=10)
    src = as_released_file(pre, tmp_path / "pretrain.pth", {"acc": np.float64(90.0)})
    clf = PointClassifier(**{k: v for k, v in finetune_config().items() if k != "type"})
    clf.load_encoder_from_pretrainer(pretrained_state(src, finetune_config()), source=str(src))
    assert torch.equal(clf.encoder.norm.weight, pre.state_dict()["MAE_encoder.norm.weight"])
    assert "pretrain.pth: took" in capsys.readouterr().err
    with pytest.raises(CheckpointMismatchError, match="pretrain.pth: group_size is 32 .* but 16 in the config"):
        pretrained_state(src, finetune_config(group_size=16))

    cls = as_released_file(RefPointTransformer(**SMALL_REF, cls_dim=40), tmp_path / "modelnet.pth")
    dropped = clf.load_encoder_from_pretrainer(pretrained_state(cls, finetune_config()), source=str(cls))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "modelnet.pth" in err[0]
    assert "head.cls_token, head.cls_pos, head.mlp.* (16)" in err[0]
    assert sorted(dropped)[:2] == ["head.cls_pos", "head.cls_token"]
    # a config silent about group_size: the model's default (32) is what the file is converted with
    silent = {k: v for k, v in finetune_config().items() if k != "group_size"}
    assert torch.equal(pretrained_state(cls, silent)["encoder.norm.weight"], clf.encoder.norm.weight)
    # a pcmae classifier's checkpoint as pre-trained weights: the same line
    clf.load_encoder_from_pretrainer(clf.state_dict(), source="pcmae_classifier.pth")
    assert "pcmae_classifier.pth: took 46 encoder tensors; dropped" in capsys.readouterr().err


def test_convert_tool_takes_the_config_or_requires_num_groups(tmp_path, capsys):
    convert = tool_main("convert_checkpoint")
    src = as_released_file(RefPointTransformer(**SMALL_REF, cls_dim=15), tmp_path / "scan.pth", {"acc": np.float32(88)})
    with pytest.raises(ValueError, match="scan.pth: Point-MAE files do not store num_groups"):
        convert([str(src), str(tmp_path / "a.pth")])
    assert not (tmp_path / "a.pth").exists()
    with pytest.raises(SystemExit):
        convert([str(src), str(tmp_path / "b.pth"), "--config", "configs/point_mae/scanobjectnn_pb_t50_rs.yaml",
                 "--num-groups", "64"])
    assert "either --config or --num-groups" in capsys.readouterr().err
    convert([str(src), str(tmp_path / "c.pth"), "--num-groups", "128", "--group-size", "32", "--num-heads", "3"])
    cfg = torch.load(tmp_path / "c.pth", weights_only=True)["config"]["model"]
    assert (cfg["num_groups"], cfg["group_size"], cfg["num_classes"]) == (128, 32, 15)
