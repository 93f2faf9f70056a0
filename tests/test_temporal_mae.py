"""T-MAE: frame pairs (LidarSequence), windowed cross-attention, TemporalMAE, its evaluation and export."""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pcmae.backbones.serialized_transformer import SerializedCrossTransformer
from pcmae.backbones.spconv_compat import INSTALL_HINT, spconv_available
from pcmae.data import LidarSequence, build_dataset
from pcmae.data.lidar_sim import GROUND
from pcmae.data.sequences import SequenceError
from pcmae.engine.build import build_model
from pcmae.engine.config import TrainConfig
from pcmae.engine.trainer import Trainer
from pcmae.evaluation.baselines import RangePrior
from pcmae.evaluation.occupancy import copy_past_baseline, evaluate_dataset
from pcmae.registry import ConfigError
from pcmae.structures import PointBatch

RANGE = [-20.0, -20.0, -3.0, 20.0, 20.0, 5.0]
COARSE = {"type": "SimulatedLidarSweeps", "beams": "hdl32", "azimuth_resolution": 1.0}  # ~9k points a sweep
TINY = dict(type="TemporalMAE", voxel_size=[0.4, 0.4, 0.2], point_cloud_range=RANGE, point_channels=5,
            tokenizer={"type": "pointnet", "embed_dim": 16, "hidden_dim": 16},
            backbone={"type": "transformer", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 16,
                      "decoder_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2},
            masking={"type": "random", "ratio": 0.75}, num_pred_points=4,
            fusion={"depth": 1, "num_heads": 2, "patch_size": 16})


def sequence(num_frames=6, frames_per_scene=3, **kwargs):
    frames = {**COARSE, "num_frames": num_frames, "frames_per_scene": frames_per_scene,
              **kwargs.pop("frames", {})}
    return LidarSequence(frames, point_cloud_range=kwargs.pop("point_cloud_range", RANGE), **kwargs)


def nearest_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(b).query(a)[0]


# --- frame pairs ---------------------------------------------------------------------------------------------

def test_the_aligned_past_frame_lands_on_the_current_static_geometry():
    data = sequence(num_frames=2, frames_per_scene=2, point_cloud_range=None)
    item = data[0]
    current, past = item["points"][:, :3].numpy(), item["past_points"][:, :3].numpy()
    raw_past = data.frames[0]["points"][:, :3].numpy()  # the same frame before alignment (sensor moved 1 m)
    static = current[(item["object_id"] != GROUND).numpy()]  # objects (parked cars, walls, ...): no ground plane
    aligned, unaligned = np.median(nearest_distance(static, past)), np.median(nearest_distance(static, raw_past))
    assert item["dt"] == pytest.approx(0.1) and item["gap"] == 1
    assert aligned < 0.15 and unaligned > 2 * aligned, (aligned, unaligned)
    # the alignment is exactly inv(pose_t) @ pose_{t-1}
    meta = [data.frames.frame_meta(i) for i in (0, 1)]
    expected = raw_past.astype(np.float64) @ (np.linalg.inv(meta[1]["pose"]) @ meta[0]["pose"])[:3, :3].T
    expected += (np.linalg.inv(meta[1]["pose"]) @ meta[0]["pose"])[:3, 3]
    np.testing.assert_allclose(past, expected, atol=1e-4)


def test_pairs_stay_inside_their_scene_and_follow_the_gap_window():
    data = sequence(num_frames=8, frames_per_scene=4, gap=[1, 2])
    scene_of = [data.frames.frame_meta(i)["scene"] for i in range(8)]
    assert [current for current, _ in data.pairs] == [1, 2, 3, 5, 6, 7]  # frames 0 and 4 open their scenes
    assert dict(data.pairs) == {1: [0], 2: [1, 0], 3: [2, 1], 5: [4], 6: [5, 4], 7: [6, 5]}
    for current, past in data.pairs:
        assert all(scene_of[p] == scene_of[current] for p in past)
    drawn = {data.past_index(1, np.random.default_rng(seed)) for seed in range(20)}  # item 1 = frame 2
    assert drawn == {1, 0}

    paired_with_self = sequence(num_frames=8, frames_per_scene=4, no_past="self")
    assert len(paired_with_self) == 8
    first = paired_with_self[0]
    assert first["dt"] == 0.0 and first["gap"] == 0
    torch.testing.assert_close(first["past_points"], first["points"])


def test_one_random_draw_transforms_both_frames():
    flips = [{"type": "GlobalRotScale", "rot_range": [-3.0, 3.0], "scale_range": [0.9, 1.1]}]
    plain, turned = sequence(num_frames=2, frames_per_scene=2), sequence(
        num_frames=2, frames_per_scene=2, transforms=flips, augment_seed=5)
    a, b = plain[0], turned[0]
    # the same linear map takes both frames: solve it on the current frame, apply it to the past frame
    ca, cb = a["points"][:, :3].double(), b["points"][:, :3].double()
    assert len(ca) == len(cb)  # rotation about z and scaling by < 1.1 keep every point of this range inside
    m = torch.linalg.lstsq(ca, cb).solution
    assert not torch.allclose(m, torch.eye(3, dtype=m.dtype), atol=1e-2)
    torch.testing.assert_close(a["past_points"][:, :3].double() @ m, b["past_points"][:, :3].double(), atol=1e-3,
                               rtol=0)


def test_collate_packs_both_frames_and_dt():
    data = sequence(num_frames=6, frames_per_scene=3)
    batch = data.collate_fn([data[0], data[1], data[2]])
    assert isinstance(batch["past_points"], PointBatch) and batch["past_points"].batch_size == 3
    assert batch["dt"].dtype == torch.float32 and batch["dt"].tolist() == pytest.approx([0.1, 0.1, 0.1])
    assert batch["points"].counts().tolist() == [len(data[i]["points"]) for i in range(3)]


def write_info(tmp_path: Path, poses, timestamps=(0.0, 0.1, 0.2), missing: int | None = None) -> Path:
    """A 3-frame info file of real-looking random sweeps; ``poses[i]`` None leaves lidar2global out."""
    rng = np.random.default_rng(0)
    entries = []
    for i, (pose, stamp) in enumerate(zip(poses, timestamps)):
        path = tmp_path / f"{i:06d}.bin"
        (rng.uniform(-10, 10, (500, 4)).astype(np.float32)).tofile(path)
        entry = {"lidar_points": {"lidar_path": path.name}, "scene": "log", "frame_index": i, "timestamp": stamp}
        if pose is not None:
            entry["lidar2global"] = np.asarray(pose).tolist()
        entries.append(entry)
    info = tmp_path / "infos.pkl"
    info.write_bytes(pickle.dumps({"metainfo": {"dataset": "kitti"}, "data_list": entries}))
    if missing is not None:
        (tmp_path / f"{missing:06d}.bin").unlink()
    return info


def shifted(x: float) -> np.ndarray:
    pose = np.eye(4)
    pose[0, 3] = x
    return pose


def test_bad_sequences_name_the_frame(tmp_path):
    frames = lambda info: {"type": "LidarSweeps", "info_file": str(info)}  # noqa: E731
    (tmp_path / "a").mkdir()
    no_pose = write_info(tmp_path / "a", [shifted(0), None, shifted(2)])
    with pytest.raises(SequenceError, match=r"frame 1 \(.*000001\.bin\): no pose \(lidar2global\)"):
        LidarSequence(frames(no_pose))
    (tmp_path / "b").mkdir()
    scaled = shifted(1.0)
    scaled[:3, :3] *= 1.5
    with pytest.raises(SequenceError, match=r"frame 1 \(.*000001\.bin\): pose is not rigid"):
        LidarSequence(frames(write_info(tmp_path / "b", [shifted(0), scaled, shifted(2)])))
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match=r"data_list\[0\] lidar file not found: .*000000\.bin"):
        LidarSequence(frames(write_info(tmp_path / "c", [shifted(0), shifted(1), shifted(2)], missing=0)))
    (tmp_path / "d").mkdir()
    frozen = write_info(tmp_path / "d", [shifted(0), shifted(1), shifted(2)], timestamps=(0.0, 0.0, 0.0))
    with pytest.raises(SequenceError, match=r"frame 1 .*timestamp 0.0 is not after .*set dataset.frame_period"):
        LidarSequence(frames(frozen))
    data = LidarSequence(frames(frozen), frame_period=0.1)  # logs without timestamps: dt from the frame gap
    assert [data[i]["dt"] for i in range(len(data))] == pytest.approx([0.1, 0.1])
    # the past frame moved by the poses: frame 0 is 1 m behind frame 1 along x
    raw = data.frames[0]["points"]
    torch.testing.assert_close(data[0]["past_points"][:, 0], raw[:, 0] - 1.0)
    with pytest.raises(ConfigError, match=r"'dataset.frames.point_cloud_range' is set on the sequence"):
        LidarSequence({**frames(frozen), "point_cloud_range": RANGE})
    with pytest.raises(ConfigError, match=r"'dataset.gap' needs 1 <= lo <= hi"):
        LidarSequence(frames(frozen), gap=[2, 1], frame_period=0.1)


# --- cross-attention -----------------------------------------------------------------------------------------

def test_windowed_cross_attention_equals_full_attention_when_one_window_holds_everything():
    torch.manual_seed(0)
    fusion = SerializedCrossTransformer(32, depth=2, num_heads=4, patch_size=256).eval()

    def coords(n, b):
        return torch.cat([torch.full((n, 1), b), torch.randint(0, 50, (n, 3))], dim=1)

    q_coords, k_coords = torch.cat([coords(30, 0), coords(20, 1)]), torch.cat([coords(40, 0), coords(25, 1)])
    x, pos, context, context_pos = torch.randn(50, 32), torch.randn(50, 32), torch.randn(65, 32), torch.randn(65, 32)
    out = fusion(x, q_coords, pos, context, k_coords, context_pos)
    expected = torch.empty_like(out)
    for b in (0, 1):  # full attention: every query of a sample sees all its context and the "no context" token
        q, k = q_coords[:, 0] == b, k_coords[:, 0] == b
        keys = torch.cat([fusion.no_context, (context + context_pos)[k][None]], dim=1)
        h = x[q][None]
        for block in fusion.blocks:
            h = block(h + pos[q][None], keys)
        expected[q] = fusion.norm(h)[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # small windows: a query no longer sees every context token, so the answer changes
    fusion.patch_size = 8
    assert not torch.allclose(fusion(x, q_coords, pos, context, k_coords, context_pos), expected, atol=1e-3)


def test_value_at_finds_the_value_of_the_same_voxel_and_nothing_else():
    from pcmae.ops import value_at

    g = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.cat([torch.randint(0, 2, (300, 1), generator=g),
                                     torch.randint(0, 6, (300, 3), generator=g)], dim=1), dim=0)
    values = torch.randn(len(coords), 3, generator=g)
    query = torch.cat([torch.randint(0, 2, (200, 1), generator=g), torch.randint(-1, 7, (200, 3), generator=g)], 1)
    out, found = value_at(query, coords, values)
    for q, o, f in zip(query, out, found):  # brute force
        same = (coords == q).all(dim=1)
        assert bool(f) == bool(same.any())
        torch.testing.assert_close(o, values[same][0] if same.any() else torch.zeros(3))
    assert found.any() and not found.all()


# --- the model -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["transformer", "sparse_conv"])
def test_gradients_reach_both_encoders_and_the_past_changes_the_answer(backbone):
    if backbone == "sparse_conv" and not spconv_available():
        pytest.skip(f"spconv missing: {INSTALL_HINT}")
    cfg = dict(TINY, share_encoder=False)
    if backbone == "sparse_conv":
        cfg.update(tokenizer={"type": "mean"}, backbone={"type": "sparse_conv", "decoder_dim": 16, "sparse_encoder": {
            "base_channels": 8, "output_channels": 16, "encoder_channels": [[8], [16, 16], [16, 16]],
            "encoder_paddings": [[1], [1, 1], [1, 1]]}})
    torch.manual_seed(0)
    model = build_model(cfg)
    data = sequence(num_frames=3, frames_per_scene=3)
    batch = data.collate_fn([data[0], data[1]])
    model(batch)["loss"].backward()
    past_grads = {n: p.grad for n, p in model.past_encoder.named_parameters()}
    assert past_grads and all(g is not None and g.abs().sum() > 0 for g in past_grads.values())
    current = [p.grad for p in model.backbone.detector_encoder().parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in current)
    # the same mask (seed) with another past frame gives other predictions
    model.eval()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.predict_occupancy(batch["points"], gen(), batch["past_points"], batch["dt"])
    other_past = PointBatch(batch["past_points"].points[::2], batch["past_points"].batch_idx[::2], 2)
    b = model.predict_occupancy(batch["points"], gen(), other_past, batch["dt"])
    assert torch.equal(a["query_coords"], b["query_coords"]) and not torch.allclose(a["prob"], b["prob"])


def test_same_seed_same_queries_as_a_single_frame_voxel_mae_and_copy_past_scores():
    torch.manual_seed(0)
    temporal = build_model(dict(TINY)).eval()
    single = build_model({k: v for k, v in TINY.items() if k != "fusion"} | {"type": "VoxelMAE"}).eval()
    data = sequence(num_frames=3, frames_per_scene=3, gap=1)
    prior = RangePrior(5.0, [0.5] * 8)
    result = evaluate_dataset(temporal, data, RANGE, prior, seeds=(0,), compare={"single_frame": single})
    predictors = result["predictors"]
    assert {"copy_past", "single_frame", "model", "neighbour"} <= set(predictors)
    # copy the past: a hidden voxel the past frame also hits is occupied; free space mostly stays free
    assert predictors["copy_past"]["precision"] > 0.8 and predictors["copy_past"]["recall"] > 0.3
    # the copy-past rule itself, on a voxel the past frame holds and one it does not
    past = PointBatch.from_list([torch.tensor([[1.1, 1.1, 0.1, 0.0, 0.0]])])
    query = torch.tensor([[0, 15, 52, 52], [0, 15, 52, 53]])  # (b, z, y, x) of (1.1, 1.1, 0.1) and its x-neighbour
    assert copy_past_baseline(query, past, temporal).tolist() == [True, False]
    other_grid = build_model({k: v for k, v in TINY.items() if k != "fusion"} | {"type": "VoxelMAE",
                                                                                 "voxel_size": [0.5, 0.5, 0.2]})
    with pytest.raises(ValueError, match="compared model 'other' drew other hidden / query voxels"):
        evaluate_dataset(temporal, data, RANGE, prior, seeds=(0,), compare={"other": other_grid})


def test_detector_parts_are_voxel_mae_parts():
    temporal, single = build_model(dict(TINY, share_encoder=False)), build_model(
        {k: v for k, v in TINY.items() if k not in ("fusion",)} | {"type": "VoxelMAE"})
    for slot, part in temporal.detector_parts().items():
        theirs = single.detector_parts()[slot].state_dict()
        mine = part.state_dict()
        assert list(mine) == list(theirs) and all(mine[k].shape == theirs[k].shape for k in mine)
    # the exported encoder is the current-frame one, not the past copy
    assert temporal.detector_parts()["middle_encoder"].encoder is temporal.backbone.encoder


def test_resume_mid_epoch_on_a_sequence_dataset_ends_like_an_uninterrupted_run(tmp_path):
    data = sequence(num_frames=8, frames_per_scene=4, gap=[1, 2],
                    transforms=[{"type": "GlobalRotScale", "rot_range": [-0.5, 0.5]}])  # random draws per item
    cfg = TrainConfig(epochs=2, batch_size=2, lr=1e-3, warmup_epochs=0, log_interval=1, seed=1)  # 3 steps an epoch

    def fit(work_dir, train_cfg, resume=False):
        torch.manual_seed(7)
        trainer = Trainer(build_model(dict(TINY)), data, train_cfg, work_dir, collate_fn=data.collate_fn)
        trainer.fit(resume=resume)
        return trainer

    full = fit(tmp_path / "full", cfg)
    stopped = fit(tmp_path / "resumed", replace(cfg, max_steps=4))  # inside the second epoch
    assert stopped.step == 4
    resumed = fit(tmp_path / "resumed", cfg, resume=True)
    assert resumed.step == 6
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_temporal_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="'model.share_encoder' must be true or false"):
        build_model(dict(TINY, share_encoder="yes"))
    with pytest.raises(ConfigError, match=r"model.fusion"):
        build_model(dict(TINY, fusion={"dept": 2}))
    with pytest.raises(ConfigError, match=r"model.query_fusion"):
        build_model(dict(TINY, query_fusion={"window": 8}))
    assert build_model(dict(TINY, query_fusion={"depth": 0})).query_fusion is None
    plain = build_model(dict(TINY, past_at_queries=False))  # T-MAE's own design: the past reaches the encoder only
    assert plain.past_voxel_proj is None and plain.query_fusion is None
    with pytest.raises(ConfigError, match="'model.past_at_queries' must be true or false"):
        build_model(dict(TINY, past_at_queries=1))
    model = build_model(dict(TINY))
    assert model.query_fusion is not None
    points = PointBatch.from_list([torch.rand(50, 5)])
    with pytest.raises(ValueError, match="needs past_points and dt"):
        model.predict_occupancy(points)


def test_shipped_temporal_demo_config_builds_its_dataset_and_model():
    from pcmae.engine.build import load_checked_config

    cfg = load_checked_config(Path(__file__).resolve().parents[1] / "configs/temporal_mae/demo.yaml")
    data = build_dataset(cfg["data"]["val"], where="data.val")
    assert isinstance(data, LidarSequence) and len(data) == 4
    model = build_model(cfg["model"])
    assert type(model).__name__ == "TemporalMAE" and model.past_encoder is None


def test_evaluate_tool_scores_temporal_single_frame_and_copy_past_on_the_same_voxels(tmp_path, capsys):
    import json

    import yaml

    from pcmae.engine.checkpoint import save_checkpoint
    from tools import evaluate as tool

    val = {"type": "LidarSequence", "frames": {**COARSE, "num_frames": 3, "frames_per_scene": 3, "seed": 1},
           "point_cloud_range": RANGE}
    paths = {}
    for name, model_cfg in (("temporal", dict(TINY)),
                            ("single", {k: v for k, v in TINY.items() if k != "fusion"} | {"type": "VoxelMAE"})):
        torch.manual_seed(0)
        model = build_model(dict(model_cfg))
        cfg = {"model": model_cfg, "data": {"train": val, "val": val}, "train": {"epochs": 1}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        paths[name] = save_checkpoint(tmp_path / f"{name}.pth", {"model": model.state_dict(), "config": cfg})
    (tmp_path / "prior.json").write_text(json.dumps({"range_prior": {"ring_m": 5.0, "rates": [0.5] * 8}}))
    result = tool.main([str(tmp_path / "temporal.yaml"), "--checkpoint", str(paths["temporal"]), "--seeds", "0",
                        "--prior", str(tmp_path / "prior.json"), "--compare", "single_frame",
                        str(tmp_path / "single.yaml"), str(paths["single"])])
    printed = capsys.readouterr().out
    assert "| copy the aligned past frame |" in printed and "| single_frame |" in printed
    assert result["num_sweeps"] == 2 and {"copy_past", "single_frame"} <= set(result["predictors"])
    with pytest.raises(SystemExit, match="a temporal model needs frames with poses"):
        tool.main([str(tmp_path / "temporal.yaml"), "--checkpoint", str(paths["temporal"]), "--prior",
                   str(tmp_path / "prior.json"), "--sweeps", str(tmp_path / "prior.json")])
