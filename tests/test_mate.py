"""The composed Point-MAE parts (decoder, classification head), old checkpoints loading into them, the joint model
MATE (classification + reconstruction at mask ratio 0.9 on one encoder), its configs, and the real ModelNet meshes."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmae.data import build_dataset
from pcmae.data.modelnet_meshes import MODELNET40_CLASSES, ModelNetMeshZip, modelnet_zip_samples, read_mesh
from pcmae.downstream import PointClassifier
from pcmae.engine.build import load_checked_config
from pcmae.engine.checkpoint import load_model_weights, save_checkpoint
from pcmae.io.errors import PointCloudFormatError
from pcmae.pretrainers import MATE, PointMAE
from tests.shared_data import shared_data_path

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_groups=16, group_size=8, embed_dim=48, depth=2, num_heads=3)
DECODER = dict(decoder_depth=1, decoder_num_heads=3)


def cloud(b=4, n=256, seed=0):
    return torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every float tensor of the state random, so that a key loaded into the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=g))
    return model


# --- checkpoints written before the decoder / head were modules -------------------------------------------------
def legacy_point_mae_state(model: PointMAE) -> dict:
    renames = {"decoder.mask_token": "mask_token", "decoder.pos_embed.": "decoder_pos_embed.",
               "decoder.head.": "reconstruction_head."}
    return {next((old + k[len(new):] for new, old in renames.items() if k.startswith(new)), k): v
            for k, v in model.state_dict().items()}


def legacy_classifier_state(model: PointClassifier) -> dict:
    renames = {"head.cls_token": "cls_token", "head.cls_pos": "cls_pos", "head.mlp.": "head."}
    return {next((old + k[len(new):] for new, old in renames.items() if k.startswith(new)), k): v
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["PointMAE", "PointClassifier"])
def test_old_pcmae_checkpoints_load_strictly(kind, tmp_path):
    make = (lambda: PointMAE(**SMALL, **DECODER)) if kind == "PointMAE" else (lambda: PointClassifier(5, **SMALL))
    legacy = legacy_point_mae_state if kind == "PointMAE" else legacy_classifier_state
    source = randomized(make())
    old = legacy(source)
    assert ("mask_token" in old and "reconstruction_head.weight" in old) if kind == "PointMAE" \
        else ("cls_token" in old and "head.0.weight" in old)
    fresh = make()
    fresh.load_state_dict(old, strict=True)  # the pre-hook renames
    for key, value in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert "mask_token" in old or "cls_token" in old  # the caller's dict is left alone
    # through the tools' loader (which checks the keys before loading)
    save_checkpoint(tmp_path / "old.pth", {"model": old, "config": {"model": {"type": kind}}})
    other = make()
    load_model_weights(other, tmp_path / "old.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_new_head_keys_are_not_renamed_again():
    clf = randomized(PointClassifier(5, **SMALL))
    fresh = PointClassifier(5, **SMALL)
    fresh.load_state_dict(clf.state_dict(), strict=True)
    assert torch.equal(fresh.head.mlp[0].weight, clf.head.mlp[0].weight)


def test_parameter_order_is_unchanged():
    """Optimizer states are stored by parameter position: the composed models keep the old order."""
    names = [n for n, _ in PointMAE(**SMALL, **DECODER).named_parameters()]
    first = names.index("decoder.mask_token")
    assert names[first:first + 2] == ["decoder.mask_token", "decoder.pos_embed.0.weight"]
    assert names[-2:] == ["decoder.head.weight", "decoder.head.bias"] and all(
        n.startswith("encoder.") for n in names[:first])
    names = [n for n, _ in PointClassifier(5, **SMALL).named_parameters()]
    first = names.index("head.cls_token")
    assert names[first:first + 3] == ["head.cls_token", "head.cls_pos", "head.mlp.0.weight"]


def test_classifier_classify_is_the_forward_logits():
    torch.manual_seed(0)
    clf = PointClassifier(5, **SMALL).eval()
    pts = cloud()
    logits = clf.classify(pts)
    assert logits.shape == (4, 5)
    torch.testing.assert_close(logits, clf({"points": pts})["logits"])


# --- MATE ---------------------------------------------------------------------------------------------------------
def make_mate(**kw) -> MATE:
    torch.manual_seed(0)
    return MATE(num_classes=5, **SMALL, **DECODER, **kw)


def test_mate_outputs_and_loss_sum():
    model = make_mate(rec_weight=0.5).eval()
    label = torch.tensor([0, 1, 2, 3])
    out = model({"points": cloud(), "label": label})
    assert set(out) == {"loss", "cls_loss", "rec_loss", "acc", "logits"}
    assert out["logits"].shape == (4, 5)
    assert out["cls_loss"] > 0 and out["rec_loss"] > 0
    torch.testing.assert_close(out["loss"], out["cls_loss"] + 0.5 * out["rec_loss"])
    torch.testing.assert_close(out["cls_loss"], torch.nn.functional.cross_entropy(out["logits"], label))
    assert out["acc"] == (out["logits"].argmax(-1) == label).float().mean()


def test_mate_classifies_on_every_patch_and_reconstructs_at_ratio_09():
    model = make_mate().eval()
    assert model.mask_ratio == 0.9
    pts = cloud()
    logits = model.classify(pts)
    torch.testing.assert_close(logits, model({"points": pts, "label": torch.zeros(4, dtype=torch.long)})["logits"])
    _, tokens, pos = model.tokenize(pts)
    torch.testing.assert_close(logits, model.head(model.encoder, tokens, pos))  # nothing masked
    seen = {}
    real_decoder = model.decoder.forward
    model.decoder.forward = lambda latent, centers, mask: seen.update(mask=mask, latent=latent) or real_decoder(
        latent, centers, mask)
    model.reconstruction_loss(pts)
    mask = seen["mask"]
    assert mask.shape == (4, 16) and (mask.sum(1) == int(0.9 * 16)).all()
    assert seen["latent"].shape == (4, 16 - int(0.9 * 16), 48)  # the encoder saw the visible patches only


def test_mate_reconstruction_loss_follows_the_generator():
    model = make_mate().eval()
    pts = cloud()
    a = model.reconstruction_loss(pts, torch.Generator().manual_seed(3))
    b = model.reconstruction_loss(pts, torch.Generator().manual_seed(3))
    c = model.reconstruction_loss(pts, torch.Generator().manual_seed(4))
    assert a.ndim == 0 and torch.equal(a, b) and not torch.equal(a, c)
    a.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.head.cls_token.grad is None  # the self-supervised loss does not touch the classifier


def test_mate_needs_labels():
    with pytest.raises(KeyError, match="reconstruction_loss"):
        make_mate()({"points": cloud()})
    with pytest.raises(ValueError, match="mask_ratio"):
        make_mate(mask_ratio=1.0)


def test_mate_joint_training_lowers_both_losses():
    torch.manual_seed(0)
    model = MATE(num_classes=4, num_groups=8, group_size=8, embed_dim=16, depth=1, num_heads=2, decoder_depth=1,
                 decoder_num_heads=2, drop_path_rate=0.0, augment="none", head_dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    batch = {"points": cloud(b=8, n=96, seed=1), "label": torch.arange(8) % 4}
    losses = []
    for _ in range(20):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append((out["cls_loss"].item(), out["rec_loss"].item()))
    assert losses[-1][0] < 0.5 * losses[0][0] and losses[-1][1] < losses[0][1]


def test_mate_configs_and_their_source_only_twin_share_the_encoder():
    for joint, twin in [("demo", "demo_source_only"), ("modelnet40", "modelnet40_source_only")]:
        a = load_checked_config(REPO / "configs" / "mate" / f"{joint}.yaml")
        b = load_checked_config(REPO / "configs" / "mate" / f"{twin}.yaml")
        assert a["model"]["type"] == "MATE" and b["model"]["type"] == "PointClassifier"
        assert a["model"]["mask_ratio"] == 0.9
        shared = ("num_classes", "num_groups", "group_size", "embed_dim", "depth", "num_heads", "augment")
        assert {k: a["model"][k] for k in shared} == {k: b["model"][k] for k in shared}
        assert a["train"] == b["train"] and a["data"] == b["data"]
    demo = load_checked_config(REPO / "configs" / "mate" / "demo.yaml")
    assert demo["model"]["num_classes"] == build_dataset(demo["data"]["train"]).num_classes


# --- the real ModelNet meshes (OFF in zips) -------------------------------------------------------------------------
def modelnet_zips():
    return [shared_data_path("flux3d", "test", "assets", f"ModelNet{n}.zip") for n in (40, 10)]


def test_modelnet_zip_meshes_become_normalised_labelled_clouds():
    data = build_dataset({"type": "ModelNetMeshZip", "paths": [str(p) for p in modelnet_zips()], "num_points": 512})
    assert len(data) == 8
    assert sorted(set(data.class_names)) == ["desk", "monitor", "sofa", "table"]
    for i in range(len(data)):
        item = data[i]
        points = item["points"]
        assert points.shape == (512, 3) and points.dtype == torch.float32 and torch.isfinite(points).all()
        assert abs(points.norm(dim=1).max().item() - 1.0) < 1e-5  # unit sphere, as modelnet40_normal_resampled
        assert points.mean(0).abs().max() < 1e-5
        assert MODELNET40_CLASSES[int(item["label"])] == data.class_names[i]
    assert torch.equal(data[0]["points"], data[0]["points"])  # seeded by (seed, index)
    again = ModelNetMeshZip([str(p) for p in modelnet_zips()], num_points=512, seed=1)
    assert not torch.equal(again[0]["points"], data[0]["points"])
    test = ModelNetMeshZip(modelnet_zips()[0], split="test", num_points=64)
    assert len(test) == 2 and all("/test/" in m for m in test.members)


def test_modelnet_zip_samples_lists_points_and_names():
    samples = modelnet_zip_samples(modelnet_zips()[1], num_points=128)
    assert [name for _, name in samples] == ["sofa", "sofa", "table", "table"]
    assert all(isinstance(p, np.ndarray) and p.shape == (128, 3) for p, _ in samples)


def test_modelnet_zip_reads_the_off_header_glitch_and_names_bad_members(tmp_path):
    """ModelNet's known 'OFF1490 1000 0' first line (counts glued to the keyword) reads as the clean header."""
    source = modelnet_zips()[0]
    with zipfile.ZipFile(source) as archive:
        text = archive.read("ModelNet40/monitor/test/monitor_0466.off").decode()
    glitched = tmp_path / "glitch.zip"
    with zipfile.ZipFile(glitched, "w") as archive:
        archive.writestr("ModelNet40/monitor/test/monitor_0466.off", text.replace("OFF\n", "OFF", 1))
    assert text.startswith("OFF\n") and not text.replace("OFF\n", "OFF", 1).startswith("OFF\n")
    member = "ModelNet40/monitor/test/monitor_0466.off"
    (vertices, triangles), (want_vertices, want_triangles) = read_mesh(glitched, member), read_mesh(source, member)
    assert np.array_equal(vertices, want_vertices) and np.array_equal(triangles, want_triangles)
    assert vertices.shape == (255, 3) and len(ModelNetMeshZip(glitched, num_points=64)[0]["points"]) == 64
    cut = tmp_path / "cut.zip"
    with zipfile.ZipFile(cut, "w") as archive:
        archive.writestr("ModelNet40/monitor/test/monitor_0466.off", text[: len(text) // 3])
    with pytest.raises(PointCloudFormatError, match="cut.zip:ModelNet40/monitor/test/monitor_0466.off: truncated"):
        ModelNetMeshZip(cut)[0]
    flat = tmp_path / "flat.zip"
    with zipfile.ZipFile(flat, "w") as archive:
        archive.writestr("monitor_0466.off", text)
    with pytest.raises(PointCloudFormatError, match="flat.zip: member 'monitor_0466.off'"):
        ModelNetMeshZip(flat)
    (tmp_path / "not.zip").write_text("hello")
    with pytest.raises(PointCloudFormatError, match="not.zip: not a readable zip"):
        ModelNetMeshZip(tmp_path / "not.zip")
