"""LiDAR pre-training: voxel tokenizer, Voxel-MAE / R-MAE over both backbones, query sampling, evaluation, configs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmae.backbones.spconv_compat import INSTALL_HINT, spconv_available
from pcmae.data import SimulatedLidarSweeps
from pcmae.engine.build import build_model, load_checked_config
from pcmae.evaluation.occupancy import neighbour_baseline, precision_recall_f1
from pcmae.pretrainers import RadialMAE, VoxelMAE
from pcmae.ops import neighbour_mean
from pcmae.pretrainers.voxel_targets import is_occupied, padded_voxel_points, sample_empty_voxels
from pcmae.registry import ConfigError
from pcmae.structures import PointBatch
from pcmae.tokenizers.voxel_tokenizer import VoxelTokenizer

REPO = Path(__file__).resolve().parents[1]
needs_spconv = pytest.mark.skipif(not spconv_available(), reason=f"spconv missing: {INSTALL_HINT}")
RANGE = (-40.0, -40.0, -3.0, 40.0, 40.0, 5.0)
VOXEL = (0.4, 0.4, 0.2)  # grid z = 40: fits SECOND's sparse encoder
SMALL = dict(point_channels=5, voxel_size=VOXEL, point_cloud_range=RANGE, num_pred_points=4,
             tokenizer={"type": "pointnet", "embed_dim": 32},
             backbone={"type": "transformer", "embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 32,
                       "decoder_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2})
SPARSE = {**SMALL, "tokenizer": {"type": "mean"}, "backbone": {"type": "sparse_conv", "decoder_dim": 32}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models: on 2 shared cores a second torch thread mostly spins (learns_occupancy: 18 s with 1 thread,
    169 s with 2 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sweeps() -> dict:
    """Two simulated HDL-32E sweeps packed into one batch."""
    ds = SimulatedLidarSweeps(num_frames=2, beams="hdl32", point_cloud_range=RANGE)
    return ds.collate_fn([ds[0], ds[1]])


def test_mean_tokenizer_equals_per_voxel_means_and_crops_the_range():
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.rand(500, 3, generator=g) * 4 - 2, torch.rand(500, 1, generator=g)], dim=1)
    pts[:7, 0] = 50.0  # outside the range
    batch = PointBatch.from_list([pts[:300], pts[300:]])
    tok = VoxelTokenizer(4, voxel_size=(0.5, 0.5, 0.5), point_cloud_range=(-2, -2, -2, 2, 2, 2), mode="mean",
                         max_points_per_voxel=None)(batch)
    assert (tok.point_to_voxel[:7] == -1).all() and (tok.point_to_voxel[7:] >= 0).all()
    # reference: group by (sample, integer cell) with numpy
    b = batch.batch_idx.numpy()
    cells = np.floor((pts[:, :3].numpy() + 2) / 0.5).astype(int)
    keep = np.arange(500) >= 7
    keys = {}
    for i in np.flatnonzero(keep):
        keys.setdefault((b[i], *cells[i][::-1]), []).append(i)
    assert len(keys) == len(tok.coords)
    for v, (bb, z, y, x) in enumerate(tok.coords.tolist()):
        members = keys[(bb, z, y, x)]
        torch.testing.assert_close(tok.features[v], pts[members].mean(0))
        assert tok.counts[v] == len(members)
    # a variable number of tokens per sample, no padding
    per_sample = torch.bincount(tok.batch_idx, minlength=2)
    assert per_sample.sum() == len(tok.coords) and per_sample[0] != per_sample[1]


def test_pointnet_tokens_are_order_invariant_and_trainable():
    g = torch.Generator().manual_seed(1)
    pts = torch.cat([torch.rand(400, 3, generator=g) * 4 - 2, torch.rand(400, 1, generator=g)], dim=1)
    tokenizer = VoxelTokenizer(4, embed_dim=16, voxel_size=(1.0, 1.0, 1.0), point_cloud_range=(-2, -2, -2, 2, 2, 2))
    a = tokenizer(PointBatch.from_list([pts]))
    perm = torch.randperm(400, generator=g)
    b = tokenizer(PointBatch.from_list([pts[perm]]))
    assert torch.equal(a.coords, b.coords)  # voxels come out in (batch, z, y, x) order
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)
    a.features.sum().backward()
    assert tokenizer.point_mlp[0].weight.grad.abs().sum() > 0


def test_padded_voxel_points_gathers_each_voxels_points():
    xyz = torch.arange(30, dtype=torch.float32).view(10, 3)
    point_to_voxel = torch.tensor([0, 1, 0, 2, -1, 1, 0, 0, 2, 1])
    pts, valid = padded_voxel_points(xyz, point_to_voxel, torch.tensor([2, 0]), num_voxels=3, cap=3)
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    assert pts[0, :2].tolist() == xyz[[3, 8]].tolist()
    assert pts[1].tolist() == xyz[[0, 2, 6]].tolist()  # capped at 3 of voxel 0's 4 points


def test_empty_queries_are_free_space_inside_the_grid():
    model = VoxelMAE(**SMALL)
    ds = SimulatedLidarSweeps(num_frames=1, beams="hdl32", point_cloud_range=RANGE)
    tokens = model.tokenizer(ds.collate_fn([ds[0]])["points"])
    torch.manual_seed(0)
    mask = model.draw_mask(tokens)
    coords, centers, labels = model.draw_queries(tokens, mask)
    hidden, empty = coords[labels == 1], coords[labels == 0]
    grid = model.grid_size()
    assert len(empty) > 0.5 * len(hidden)
    assert is_occupied(hidden, tokens.coords[mask], grid).all()
    assert not is_occupied(empty, tokens.coords, grid).any()  # never a visible or hidden voxel
    gx, gy, gz = grid
    assert ((empty[:, 3] < gx) & (empty[:, 2] < gy) & (empty[:, 1] < gz) & (empty[:, 1:] >= 0).all(1)).all()
    # query centers sit at their voxel's center
    lo, vs = torch.tensor(RANGE[:3]), torch.tensor(VOXEL)
    torch.testing.assert_close(centers, (coords[:, 1:].flip(-1).float() + 0.5) * vs + lo)


def test_sample_empty_voxels_limits_and_deduplicates():
    occupied = torch.tensor([[0, 5, 5, 5]], dtype=torch.int32)
    centers = torch.tensor([[5.5, 5.5, 5.5]])
    out = sample_empty_voxels(occupied, centers, occupied, torch.zeros(1, 3), torch.ones(3), torch.zeros(6),
                              (10, 10, 10), num=200, generator=torch.Generator().manual_seed(0))
    assert len(out) <= 200 and len(torch.unique(out, dim=0)) == len(out)
    assert not is_occupied(out, occupied, (10, 10, 10)).any()


@pytest.mark.parametrize("cls", [VoxelMAE, RadialMAE])
@pytest.mark.parametrize("backbone", ["transformer", pytest.param("sparse_conv", marks=needs_spconv)])
def test_objectives_run_and_train_every_part(cls, backbone, sweeps):
    torch.manual_seed(0)
    model = cls(**(SPARSE if backbone == "sparse_conv" else SMALL))
    out = model(sweeps)
    expected = {"occupancy", "num_points", "chamfer"} if cls is VoxelMAE else {"occupancy"}
    assert expected | {"loss", "occupancy_acc"} == set(out)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    encoder = model.backbone.encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    assert model.occupancy_head.weight.grad.abs().sum() > 0
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []  # DDP (find_unused_parameters off) needs a gradient for every parameter
    if cls is RadialMAE:  # occupancy only: the other heads are not built
        assert model.points_head is None and model.num_points_head is None and not model.predicts_points


@pytest.mark.parametrize("weights", [{"num_points": 0.0}, {"chamfer": 0.0}, {"num_points": 0.0, "chamfer": 0.0}])
def test_heads_of_weight_zero_targets_are_not_built(weights, sweeps):
    torch.manual_seed(0)
    model = VoxelMAE(**SMALL, loss_weights=weights)
    out = model(sweeps)
    assert not set(weights) & set(out)
    out["loss"].backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    heads = {"num_points": "num_points_head", "chamfer": "points_head"}
    for target, head in heads.items():
        assert (getattr(model, head) is None) == (target in weights)
    assert ("points" in model.predict_occupancy(sweeps["points"])) == ("chamfer" not in weights)


def test_old_checkpoints_with_untrained_heads_still_load():
    """Checkpoints written while R-MAE built (and never trained) the point heads load: those keys are dropped."""
    old = VoxelMAE(**SMALL, loss_weights={"num_points": 1.0, "chamfer": 1.0}).state_dict()
    model = RadialMAE(**SMALL)
    model.load_state_dict(old)  # strict
    torch.testing.assert_close(model.occupancy_head.weight, old["occupancy_head.weight"])
    with pytest.raises(RuntimeError, match="occupancy_head.weight"):
        model.load_state_dict({k: v for k, v in old.items() if not k.startswith("occupancy_head.")})


def test_grid_is_public():
    model = VoxelMAE(**SMALL)
    assert model.point_cloud_range == list(RANGE) and model.voxel_size == pytest.approx(VOXEL)


def test_parts_are_registry_entries_chosen_by_type():
    from pcmae.registry import BACKBONES, MASKINGS, TOKENIZERS

    assert {"transformer", "sparse_conv"} <= set(BACKBONES.names())
    assert {"pointnet", "mean"} <= set(TOKENIZERS.names())
    assert {"random", "range_aware", "radial"} <= set(MASKINGS.names())
    model = VoxelMAE(**{**SMALL, "tokenizer": {"type": "mean"}})
    assert model.tokenizer.embed_dim == 5 and model.backbone.input_proj.in_features == 5
    for key, cfg, message in [
            ("backbone", {"type": "transfomer"}, r"model\.backbone\.type: unknown backbone type 'transfomer' "
                                                 r"\(did you mean 'transformer'"),
            ("tokenizer", {"type": "pointnt"}, r"model\.tokenizer\.type: unknown tokenizer type 'pointnt'"),
            ("masking", {"type": "sectors"}, r"model\.masking\.type: unknown masking type 'sectors'"),
            ("backbone", {"type": "transformer", "dpeth": 2}, r"unknown config key 'model\.backbone\.dpeth'"),
            ("tokenizer", {"type": "pointnet", "point_channels": 4}, r"'model\.tokenizer\.point_channels' is set by"),
            ("backbone", "transformer", r"'model\.backbone' must be a mapping with 'type'"),
            ("decoder_depth", 2, r"'model\.decoder_depth': it moved to model\.backbone\.decoder_depth"),
            ("loss_weights", {"chamfer": -1.0}, r"'model\.loss_weights\.chamfer' must be a number >= 0"),
            ("loss_weights", {"occupancy": 0.0}, r"'model\.loss_weights\.occupancy' must be > 0")]:
        with pytest.raises(ConfigError, match=message):
            build_model({"type": "VoxelMAE", **SMALL, key: cfg})


def test_radial_model_hides_whole_sectors_per_sample(sweeps):
    model = RadialMAE(**SMALL)
    tokens = model.tokenizer(sweeps["points"])
    torch.manual_seed(0)
    mask = model.draw_mask(tokens)
    for b in range(2):
        mine = tokens.batch_idx == b
        azimuth = torch.remainder(torch.atan2(tokens.centers[mine, 1], tokens.centers[mine, 0]), 2 * math.pi)
        position = azimuth / (2 * math.pi) * 360  # in 1-degree sectors from +x
        # voxel centers on a diagonal sit exactly on a sector edge, where one ulp of atan2 decides: leave them out
        clear = (position - position.round()).abs() > 1e-4
        sector = position[clear].long().clamp(max=359)
        hidden = torch.zeros(360, dtype=torch.long).index_add_(0, sector, mask[mine][clear].long())
        total = torch.bincount(sector, minlength=360)
        assert ((hidden == 0) | (hidden == total)).all()  # a sector is hidden whole or not at all
        assert abs((hidden > 0).sum().item() / (total > 0).sum().item() - 0.8) < 0.05


def test_voxel_mae_learns_occupancy_on_a_fixed_batch(sweeps):
    torch.manual_seed(0)
    model = VoxelMAE(**SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(25):
        torch.manual_seed(1)  # the same mask and queries every step
        loss = model(sweeps)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_neighbour_baseline_and_scores_on_a_hand_made_grid():
    visible = torch.tensor([[0, 1, 1, 1]])
    query = torch.tensor([[0, 1, 1, 2], [0, 1, 3, 3], [1, 1, 1, 2], [0, 2, 2, 2]])
    hit = neighbour_baseline(query, visible)
    assert hit.tolist() == [True, False, False, True]  # another sample's voxel is no neighbour
    scores = precision_recall_f1(hit, torch.tensor([1, 1, 0, 0]))
    assert scores == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


@needs_spconv
def test_sparse_encoder_output_shape_and_shallow_grid_error():
    from pcmae.backbones import SparseEncoder

    enc = SparseEncoder(4, [41, 64, 48])
    feats, coors = torch.randn(50, 4), torch.cat([torch.zeros(50, 1, dtype=torch.int32),
                                                  torch.randint(0, 40, (50, 3), dtype=torch.int32)], 1)
    bev = enc(feats, coors, 1)
    d, h, w = enc.output_shape()
    assert bev.shape == (1, enc.bev_channels, h, w) and enc.bev_channels == 128 * d
    with pytest.raises(ValueError, match="shrinks to"):
        SparseEncoder(4, [11, 64, 48])


def test_masking_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.masking.ratoi"):
        VoxelMAE(**SMALL, masking={"type": "random", "ratoi": 0.5})
    with pytest.raises(ConfigError, match="model.masking.type"):
        VoxelMAE(**SMALL, masking={"type": "sectors"})
    with pytest.raises(ValueError, match="model.loss_weights.chamfr"):
        VoxelMAE(**SMALL, loss_weights={"chamfr": 1.0})


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*_mae/*.yaml")))
def test_every_lidar_config_validates_and_builds(path):
    cfg = load_checked_config(REPO / path)
    if cfg["model"].get("backbone", {}).get("type") == "sparse_conv" and not spconv_available():
        pytest.skip(f"spconv missing: {INSTALL_HINT}")
    model = build_model(cfg["model"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_neighbour_mean_against_a_loop():
    g = torch.Generator().manual_seed(3)
    coords = torch.unique(torch.cat([torch.randint(0, 2, (60, 1), generator=g),
                                     torch.randint(0, 4, (60, 3), generator=g)], 1), dim=0)
    values = torch.randn(len(coords), 2, generator=g)
    query = torch.cat([torch.randint(0, 2, (30, 1), generator=g), torch.randint(-1, 5, (30, 3), generator=g)], 1)
    mean, count = neighbour_mean(query, coords, values)
    for i, q in enumerate(query.tolist()):
        near = [j for j, c in enumerate(coords.tolist())
                if c[0] == q[0] and c[1:] != q[1:] and max(abs(a - b) for a, b in zip(c[1:], q[1:])) <= 1]
        assert count[i] == len(near)
        if near:
            torch.testing.assert_close(mean[i], values[near].mean(0))


@pytest.mark.parametrize("cls", [VoxelMAE, RadialMAE])
def test_picture_is_an_rgb_image_of_the_batch_and_leaves_rng_and_mode_alone(cls, sweeps, tmp_path):
    from pcmae.visualization import save_png

    model = cls(**SMALL).train()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    image = model.picture(sweeps)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape == (2 * 400, 1200, 3)  # a row of 3 panels (15 x 5 inches at 80 dpi) per sweep
    assert (image < 128).any() and (image == 255).any()  # drawn points on a white page
    assert np.array_equal(model.picture(sweeps), image)  # the seeded mask: the same picture twice
    path = save_png(image, tmp_path / "p.png")
    from matplotlib.image import imread

    assert np.array_equal((imread(path)[..., :3] * 255).round().astype(np.uint8), image)


def test_visualization_import_leaves_matplotlib_alone():
    code = ("import sys; import pcmae.visualization, pcmae.evaluation.bev, "
            "pcmae.engine, pcmae.pretrainers; print('matplotlib' in sys.modules)")
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr
