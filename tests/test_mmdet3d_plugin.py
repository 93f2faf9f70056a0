"""pcmae inside mmdet3d (the real stack): the plugin registers its encoders, a pcmae checkpoint initialises them
directly (init_cfg) or through the export tool, and the encoder then computes exactly what it computed in pcmae.
Also: the mmengine loading trap the checked loader avoids, and grid / channel mismatches refused by key."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.mmdet3d_helpers import import_mmdet3d_datasets
from tests.shared_data import shared_data_path

REPO = Path(__file__).resolve().parents[1]
KITTI_SWEEP = ("openpcdet", "data", "kitti", "training", "velodyne", "000000.bin")
NUSCENES_SWEEP = ("mmdet3d", "demo", "data", "nuscenes",
                  "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin")
SECOND_KITTI = "second/second_hv_secfpn_8xb6-80e_kitti-3d-3class.py"
CENTERPOINT_NUS = "centerpoint/centerpoint_voxel01_second_secfpn_8xb4-cyclic-20e_nus-3d.py"
CENTERPOINT_ENCODER = dict(order=("conv", "norm", "act"), encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128),
                                                                             (128, 128)),
                           encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
                           block_type="basicblock", output_channels=128)


@pytest.fixture(scope="module", autouse=True)
def mmdet3d_stack():
    import_mmdet3d_datasets()  # skips, saying what to install, without mmdet3d + mmcv ops
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # mmdet3d's own SparseEncoder is exact on CPU only single-threaded
    yield
    torch.set_num_threads(before)


def mmdet3d_config(name: str):
    """One of mmdet3d's shipped configs, as an mmengine Config."""
    import mmdet3d
    from mmengine.config import Config

    return Config.fromfile(str(Path(mmdet3d.__file__).parent / ".mim" / "configs" / name))


def build_detector(cfg):
    from pcmae.integrations.mmdet3d.export import build_detector as build

    return build(cfg)[1]


def perturbed(model, seed: int):
    """Every parameter and BN statistic drawn away from its initial value (so a load that does nothing shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=g) * 0.05
                tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else tensor + noise)
    return model


def save_pcmae(tmp_path, model_cfg: dict, seed: int = 0):
    """A pcmae pre-training checkpoint of ``model_cfg`` with perturbed weights -> (path, model)."""
    from pcmae.engine.build import build_model
    from pcmae.engine.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = perturbed(build_model(copy.deepcopy(model_cfg)), seed)
    path = save_checkpoint(tmp_path / f"{model_cfg['type']}_{seed}.pth", {"model": model.state_dict(),
                                                                            "config": {"model": model_cfg}})
    return path, model.eval()


KITTI_SECOND = dict(type="RadialMAE", point_channels=4, voxel_size=[0.05, 0.05, 0.1],
                    point_cloud_range=[0.0, -40.0, -3.0, 70.4, 40.0, 1.0], max_points_per_voxel=5,
                    tokenizer={"type": "mean"}, backbone={"type": "sparse_conv", "decoder_dim": 32})
KITTI_SECOND_TEMPORAL = dict(KITTI_SECOND, type="TemporalMAE", share_encoder=False,  # the past encoder is not exported
                            fusion={"depth": 1, "num_heads": 2, "patch_size": 16})
NUS_CENTERPOINT = dict(type="VoxelMAE", point_channels=5, voxel_size=[0.1, 0.1, 0.2],
                       point_cloud_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0], max_points_per_voxel=10,
                       tokenizer={"type": "mean"},
                       backbone={"type": "sparse_conv", "decoder_dim": 32, "sparse_encoder": CENTERPOINT_ENCODER},
                       loss_weights={"occupancy": 1.0, "num_points": 0.0, "chamfer": 0.0})


def sweep_voxels(model, parts, columns):
    """A real sweep through the pcmae model's own voxelization: (mean features (V, C), coords (V, 4) int32)."""
    from pcmae.structures import PointBatch

    points = torch.from_numpy(np.fromfile(shared_data_path(*parts), np.float32).reshape(-1, columns).copy())
    tokens = model.tokenizer(PointBatch(points, torch.zeros(len(points), dtype=torch.long), 1))
    return tokens.features, tokens.coords.int()


def encoder_outputs_and_grads(encoder, features, coords, train: bool):
    encoder.train(train)
    features = features.clone().requires_grad_(True)
    out = encoder(features, coords, 1)
    out.pow(2).mean().backward()
    weight = next(p for n, p in encoder.named_parameters() if n.endswith("conv_input.0.weight"))
    grads = (features.grad.clone(), weight.grad.clone())
    encoder.zero_grad()
    return out.detach(), grads


# ----------------------------------------------------------------------------------------------------- plugin
def test_plugin_without_mmdet3d_is_one_clear_import_error():
    code = "import sys; sys.modules['mmdet3d'] = None; import pcmae.integrations.mmdet3d"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1
    assert "During handling" not in run.stderr  # one error, not a chain
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: pcmae.integrations.mmdet3d needs mmdet3d 1.4.0") and "make venv-mmdet3d" in last


def test_custom_imports_line_registers_the_encoders(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    config = tmp_path / "det.py"
    config.write_text("custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)\n"
                      "default_scope = 'mmdet3d'\n"
                      "model = dict(type='PcmaeSparseEncoder', in_channels=4, sparse_shape=[41, 160, 140])\n")
    cfg = Config.fromfile(str(config))
    from mmdet3d.registry import MODELS

    with DefaultScope.overwrite_default_scope("mmdet3d"):
        encoder = MODELS.build(cfg.model)
        assert {"PcmaeSparseEncoder", "PcmaeVoxelEncoder", "PcmaeTransformerBEV"} <= set(MODELS.module_dict)
    from mmengine.model import BaseModule

    assert isinstance(encoder, BaseModule) and encoder.output_shape() == (2, 20, 18)


# -------------------------------------------------------------------------------------- export round trips
@pytest.mark.parametrize("layout", ["second_kitti", "centerpoint_nuscenes", "second_kitti_temporal"])
def test_export_round_trip_equals_pcmae_encoder(tmp_path, layout):
    """pcmae encoder -> export -> mmdet3d's own detector (its SparseEncoder) loads it strictly with mmengine ->
    the same BEV map and the same gradients on a real sweep, bit for bit."""
    from mmengine.runner import load_checkpoint

    from pcmae.integrations.mmdet3d import export_checkpoint

    if layout == "second_kitti":
        model_cfg, base, slot, sweep, columns = KITTI_SECOND, SECOND_KITTI, "middle_encoder", KITTI_SWEEP, 4
    elif layout == "second_kitti_temporal":
        model_cfg, base, slot, sweep, columns = KITTI_SECOND_TEMPORAL, SECOND_KITTI, "middle_encoder", KITTI_SWEEP, 4
    else:
        model_cfg, base, slot, sweep, columns = NUS_CENTERPOINT, CENTERPOINT_NUS, "pts_middle_encoder", NUSCENES_SWEEP, 5
    ckpt, model = save_pcmae(tmp_path, model_cfg)
    features, coords = sweep_voxels(model, sweep, columns)
    cfg = mmdet3d_config(base)
    cfg.model[slot].type = "PcmaeSparseEncoder"
    reports = export_checkpoint(ckpt, tmp_path / "det.pth", cfg)
    assert [(r.complete, r.unexpected) for r in reports] == [(True, [])]
    assert len(reports[0].loaded) == len(model.backbone.encoder.state_dict())

    detector = build_detector(mmdet3d_config(base))  # mmdet3d's SparseEncoder, not pcmae's
    theirs = getattr(detector, slot)
    before = theirs.state_dict()["conv_input.0.weight"].clone()
    load_checkpoint(detector, str(tmp_path / "det.pth"), strict=False, logger="silent")
    loaded = theirs.state_dict()
    for key, value in model.backbone.encoder.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert not torch.equal(before, loaded["conv_input.0.weight"])
    for train in (False, True):
        ours_out, ours_grads = encoder_outputs_and_grads(model.backbone.encoder, features, coords, train)
        their_out, their_grads = encoder_outputs_and_grads(theirs, features, coords, train)
        assert ours_out.abs().max() > 0
        assert torch.equal(ours_out, their_out)
        for a, b in zip(ours_grads, their_grads):
            assert torch.equal(a, b)


def test_init_cfg_points_straight_at_a_pcmae_checkpoint(tmp_path):
    ckpt, model = save_pcmae(tmp_path, KITTI_SECOND, seed=1)
    cfg = mmdet3d_config(SECOND_KITTI)
    cfg.model.middle_encoder.update(type="PcmaeSparseEncoder", init_cfg=dict(type="Pretrained", checkpoint=str(ckpt)))
    detector = build_detector(cfg)
    want = model.backbone.encoder.state_dict()
    assert not torch.equal(detector.middle_encoder.state_dict()["conv_input.0.weight"], want["conv_input.0.weight"])
    detector.init_weights()
    got = detector.middle_encoder.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_init_cfg_reads_an_exported_file_and_refuses_an_empty_checkpoint(tmp_path):
    from pcmae.integrations.mmdet3d import PretrainedWeightsError, export_checkpoint

    ckpt, model = save_pcmae(tmp_path, NUS_CENTERPOINT, seed=2)
    cfg = mmdet3d_config(CENTERPOINT_NUS)
    cfg.model.pts_middle_encoder.type = "PcmaeSparseEncoder"
    export_checkpoint(ckpt, tmp_path / "cp.pth", cfg)
    cfg.model.pts_middle_encoder.init_cfg = dict(type="Pretrained", checkpoint=str(tmp_path / "cp.pth"))
    detector = build_detector(cfg)
    detector.init_weights()
    got = detector.pts_middle_encoder.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.backbone.encoder.state_dict().items())

    cfg.model.pts_middle_encoder.init_cfg = dict(type="Pretrained", checkpoint=None)
    with pytest.raises(PretrainedWeightsError, match="init_cfg.checkpoint is empty"):
        build_detector(cfg).init_weights()


def test_mmengine_prefix_loading_leaves_conv_weights_random_where_pcmae_loads_them(tmp_path):
    """The trap this loader exists for: mmengine's Pretrained init with a prefix drops spconv's metadata, mmdet3d
    then permutes every sparse-conv kernel as spconv 1.x and skips it with a warning."""
    from mmengine.model.weight_init import initialize

    from pcmae.integrations.mmdet3d import export_checkpoint

    ckpt, model = save_pcmae(tmp_path, KITTI_SECOND, seed=3)
    cfg = mmdet3d_config(SECOND_KITTI)
    cfg.model.middle_encoder.type = "PcmaeSparseEncoder"
    export_checkpoint(ckpt, tmp_path / "det.pth", cfg)
    want = model.backbone.encoder.state_dict()
    plain = build_detector(mmdet3d_config(SECOND_KITTI)).middle_encoder
    initialize(plain, dict(type="Pretrained", checkpoint=str(tmp_path / "det.pth"), prefix="middle_encoder."))
    got = plain.state_dict()
    conv_keys = [k for k in want if k.endswith("weight") and want[k].dim() == 5]
    assert len(conv_keys) == 12 and not any(torch.equal(got[k], want[k]) for k in conv_keys)

    ours = build_detector(cfg).middle_encoder
    report = ours.load_pretrained(str(tmp_path / "det.pth"))  # prefix from the export's meta
    assert report.complete and len(report.loaded) == 72
    assert all(torch.equal(ours.state_dict()[k], want[k]) for k in conv_keys)


# ----------------------------------------------------------------------------------------- refusals (tool)
def export_tool(*args):
    return subprocess.run([sys.executable, "tools/export_mmdet3d.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def write_config(tmp_path, base: str, body: str) -> Path:
    import mmdet3d

    path = tmp_path / "detector.py"
    path.write_text(f"_base_ = ['{Path(mmdet3d.__file__).parent / '.mim' / 'configs' / base}']\n"
                    "custom_imports = dict(imports=['pcmae.integrations.mmdet3d'], allow_failed_imports=False)\n"
                    + body)
    return path


@pytest.mark.parametrize("body, key", [
    ("model = dict(middle_encoder=dict(type='PcmaeSparseEncoder', in_channels=5))", "model.middle_encoder.in_channels"),
    ("model = dict(middle_encoder=dict(type='PcmaeSparseEncoder'), data_preprocessor=dict(voxel_layer=dict("
     "voxel_size=[0.05, 0.05, 0.2])))", "model.data_preprocessor.voxel_layer.voxel_size"),
    ("model = dict(middle_encoder=dict(type='PcmaeSparseEncoder', sparse_shape=[41, 800, 704]))",
     "model.middle_encoder.sparse_shape"),
])
def test_export_refuses_a_grid_or_channel_mismatch_naming_the_key(tmp_path, body, key):
    ckpt, _ = save_pcmae(tmp_path, KITTI_SECOND)
    run = export_tool(ckpt, tmp_path / "out.pth", "--config", write_config(tmp_path, SECOND_KITTI, body))
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], run.stderr
    assert not (tmp_path / "out.pth").exists()


TRANSFORMER = dict(type="VoxelMAE", point_channels=4, voxel_size=[0.4, 0.4, 0.2],
                   point_cloud_range=[0.0, -40.0, -3.0, 70.4, 40.0, 1.0], max_points_per_voxel=32,
                   tokenizer={"type": "pointnet", "embed_dim": 32},
                   backbone={"type": "transformer", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 32,
                             "decoder_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}, num_pred_points=4)
TRANSFORMER_DETECTOR = """
voxel_size = [0.4, 0.4, 0.2]
model = dict(
    data_preprocessor=dict(voxel_layer=dict(max_num_points=32, voxel_size=voxel_size, max_voxels=(40000, 40000))),
    voxel_encoder=dict(_delete_=True, type='PcmaeVoxelEncoder', in_channels=4, feat_channels=32, voxel_size=voxel_size,
                       point_cloud_range=[0, -40, -3, 70.4, 40, 1]),
    middle_encoder=dict(_delete_=True, type='PcmaeTransformerBEV', in_channels=32, embed_dim=32, depth={depth},
                        num_heads=2, patch_size=32, voxel_size=voxel_size, point_cloud_range=[0, -40, -3, 70.4, 40, 1]),
    backbone=dict(in_channels=32))
"""


def test_export_reports_random_encoder_weights_and_fails_unless_partial(tmp_path):
    ckpt, _ = save_pcmae(tmp_path, TRANSFORMER)
    config = write_config(tmp_path, SECOND_KITTI, TRANSFORMER_DETECTOR.format(depth=3))  # one block more than trained
    run = export_tool(ckpt, tmp_path / "out.pth", "--config", config)
    assert run.returncode == 1 and not (tmp_path / "out.pth").exists()
    assert "middle_encoder (PcmaeTransformerBEV)" in run.stderr and "left random" in run.stderr
    assert "encoder.blocks.2.attn.qkv.weight" in run.stderr

    run = export_tool(ckpt, tmp_path / "out.pth", "--config", config, "--allow-partial", "--report", tmp_path / "r.json")
    assert run.returncode == 0, run.stderr
    import json

    report = {r["module"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert report["voxel_encoder (PcmaeVoxelEncoder)"]["missing"] == []
    assert all(k.startswith("encoder.blocks.2.") for k in report["middle_encoder (PcmaeTransformerBEV)"]["missing"])
    state = torch.load(tmp_path / "out.pth", weights_only=True)["state_dict"]
    assert "voxel_encoder.tokenizer.point_mlp.0.weight" in state and "middle_encoder.encoder.blocks.0.attn.qkv.weight" in state


# --------------------------------------------------------------------------------------- transformer route
def test_transformer_route_equals_pcmae_encoder_on_a_real_sweep(tmp_path):
    """mmcv's hard voxels -> PcmaeVoxelEncoder -> PcmaeTransformerBEV equals pcmae's tokenizer + encoder scattered
    to BEV; every parameter of both modules gets a gradient."""
    from mmcv.ops import Voxelization

    from pcmae.integrations.mmdet3d import PcmaeTransformerBEV, PcmaeVoxelEncoder
    from pcmae.integrations.mmdet3d.encoders import scatter_to_bev
    from pcmae.structures import PointBatch

    ckpt, model = save_pcmae(tmp_path, TRANSFORMER)
    grid = dict(voxel_size=TRANSFORMER["voxel_size"], point_cloud_range=TRANSFORMER["point_cloud_range"])
    voxel_encoder = PcmaeVoxelEncoder(4, 32, **grid, init_cfg=dict(type="Pretrained", checkpoint=str(ckpt)))
    bev_encoder = PcmaeTransformerBEV(32, 32, depth=2, num_heads=2, patch_size=32, bev_stride=2, **grid,
                                      init_cfg=dict(type="Pretrained", checkpoint=str(ckpt)))
    voxel_encoder.init_weights()
    bev_encoder.init_weights()

    points = torch.from_numpy(np.fromfile(shared_data_path(*KITTI_SWEEP), np.float32).reshape(-1, 4).copy())
    # mmcv assigns cells in float32, pcmae in float64: drop the few points within rounding of a voxel face
    cell = (points[:, :3].double() - torch.tensor(grid["point_cloud_range"][:3])) / torch.tensor(grid["voxel_size"])
    points = points[((cell - cell.round()).abs() > 1e-4).all(dim=1)]
    voxels, coors, num_points = Voxelization(max_num_points=32, max_voxels=100000, deterministic=True, **grid)(points)
    coors = torch.nn.functional.pad(coors, (1, 0))  # (batch, z, y, x) as mmdet3d's data preprocessor
    bev = bev_encoder(voxel_encoder(voxels, num_points, coors), coors, 1)
    assert bev.shape == (1, 32, 100, 88)

    with torch.no_grad():
        tokens = model.tokenizer(PointBatch(points, torch.zeros(len(points), dtype=torch.long), 1))
        latent = model.backbone.encode(tokens.features, tokens.coords, tokens.centers, 1)
        want = scatter_to_bev(latent, tokens.coords, 1, (100, 88), 2)
    assert len(tokens.coords) == len(coors)
    torch.testing.assert_close(bev.detach(), want, rtol=1e-4, atol=1e-4)
    assert (want != 0).any(dim=1).sum() > 500  # occupied BEV cells of the sweep

    bev.pow(2).mean().backward()
    for module in (voxel_encoder, bev_encoder):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_scatter_to_bev_is_the_max_of_each_cell():
    from pcmae.integrations.mmdet3d.encoders import scatter_to_bev

    g = torch.Generator().manual_seed(0)
    coors = torch.stack([torch.randint(0, 2, (300,), generator=g), torch.randint(0, 4, (300,), generator=g),
                         torch.randint(0, 10, (300,), generator=g), torch.randint(0, 12, (300,), generator=g)], 1)
    features = torch.randn(300, 3, generator=g)
    got = scatter_to_bev(features, coors, 2, (5, 6), 2)
    want = torch.zeros(2, 3, 5, 6)
    seen = torch.zeros(2, 5, 6, dtype=torch.bool)
    for (b, _, y, x), f in zip(coors.tolist(), features):
        cell = (b, slice(None), y // 2, x // 2)
        want[cell] = torch.maximum(want[cell], f) if seen[b, y // 2, x // 2] else f
        seen[b, y // 2, x // 2] = True
    assert torch.equal(got, want) and (~seen).any()  # some cells empty: zeros there


def test_two_rank_ddp_step_of_the_encoders(tmp_path):
    """torchrun, 2 ranks (gloo): each rank its own half of a real sweep; after one DDP step both hold the same
    parameters, changed from the initial ones (DDP would raise if a parameter got no gradient). BN running
    statistics are each rank's own until DDP broadcasts rank 0's at the next forward."""
    sweep = shared_data_path(*KITTI_SWEEP)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                          str(REPO / "tests" / "ddp_mmdet3d_step.py"), str(tmp_path), str(sweep)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("transformer", "sparse"):
        init, rank0, rank1 = (torch.load(tmp_path / f"{name}_{s}.pt") for s in ("init", "rank0", "rank1"))
        params = [k for k in init if "running_" not in k and "num_batches" not in k]
        for key in params:
            assert torch.equal(rank0[key], rank1[key]), (name, key)
        unchanged = [k for k in params if torch.equal(init[k], rank0[k])]
        assert len(params) > 10 and unchanged == [], (name, unchanged)
