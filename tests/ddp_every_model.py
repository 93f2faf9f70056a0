"""Every registered model and every shipped config's model, tiny: the cases of test_every_model.py, and its DDP run.

``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_every_model.py OUT.json`` runs, in ONE gloo process
group, two SGD steps of each case wrapped in DistributedDataParallel (find_unused_parameters off, so a parameter
without a gradient fails at the second step as it does under torchrun), each rank on its own batch; rank 0 writes
{case: "ok" | the error} to OUT.json, "ok" only when both ranks end with the same weights.
"""
from __future__ import annotations

import copy
import json
import sys
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# sizes shrunk wherever they appear in a model section (the structure: types, grids, targets, masking, stays)
TINY_SIZES = {"embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_dim": 16, "decoder_depth": 1,
              "decoder_num_heads": 2, "patch_size": 16, "num_groups": 8, "group_size": 8, "num_pred_points": 4,
              "hidden_dim": 16, "output_channels": 16}
GRID = dict(voxel_size=[0.4, 0.4, 0.2], point_cloud_range=[-20.0, -20.0, -3.0, 20.0, 20.0, 5.0])  # z: 40 voxels
SMALL_SPARSE = dict(base_channels=8, output_channels=16, encoder_channels=[[8], [16, 16], [16, 16]],
                    encoder_paddings=[[1], [1, 1], [1, 1]])
TRANSFORMER = {"type": "transformer", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 16,
               "decoder_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}
SPARSE_CONV = {"type": "sparse_conv", "decoder_dim": 16, "sparse_encoder": SMALL_SPARSE}
POINT_MAE = dict(num_groups=8, group_size=8, embed_dim=16, depth=1, num_heads=2)
# every registered model, with every registered backbone, tokenizer and masking rule at least once
REGISTERED = {
    "PointMAE": dict(type="PointMAE", **POINT_MAE, decoder_depth=1, decoder_num_heads=2),
    "PointMAE-block": dict(type="PointMAE", **POINT_MAE, decoder_depth=1, decoder_num_heads=2, mask_type="block"),
    "PointClassifier": dict(type="PointClassifier", num_classes=4, **POINT_MAE),
    "MATE": dict(type="MATE", num_classes=4, **POINT_MAE, decoder_depth=1, decoder_num_heads=2),
    "PointPartSegmenter": dict(type="PointPartSegmenter", num_parts=6, num_categories=3, **POINT_MAE,
                               propagation_dims=[16, 16], head_dims=[16, 8]),
    "VoxelMAE-transformer-pointnet-random": dict(
        type="VoxelMAE", **GRID, point_channels=4, tokenizer={"type": "pointnet", "embed_dim": 16, "hidden_dim": 16},
        backbone=TRANSFORMER, masking={"type": "random", "ratio": 0.7}, num_pred_points=4),
    "VoxelMAE-sparse_conv-mean-range_aware": dict(
        type="VoxelMAE", **GRID, point_channels=4, tokenizer={"type": "mean"}, backbone=SPARSE_CONV,
        masking={"type": "range_aware", "range_bins": [8.0, 16.0, float("inf")], "ratios": [0.5, 0.7, 0.9]},
        num_pred_points=4),
    "RadialMAE-transformer-mean": dict(type="RadialMAE", **GRID, point_channels=5, tokenizer={"type": "mean"},
                                       backbone=TRANSFORMER),
    "RadialMAE-sparse_conv-pointnet-all-targets": dict(
        type="RadialMAE", **GRID, point_channels=4, tokenizer={"type": "pointnet", "embed_dim": 8},
        backbone=SPARSE_CONV, masking={"type": "radial", "ratio": 0.5, "sector_deg": 10.0},
        loss_weights={"num_points": 0.5, "chamfer": 1.0}, num_pred_points=4),
    "TemporalMAE-transformer-shared": dict(
        type="TemporalMAE", **GRID, point_channels=4, tokenizer={"type": "pointnet", "embed_dim": 16, "hidden_dim": 16},
        backbone=TRANSFORMER, masking={"type": "random", "ratio": 0.75}, num_pred_points=4, share_encoder=True,
        fusion={"depth": 1, "num_heads": 2, "patch_size": 16}),
    "TemporalMAE-sparse_conv-separate": dict(
        type="TemporalMAE", **GRID, point_channels=4, tokenizer={"type": "mean"}, backbone=SPARSE_CONV,
        masking={"type": "radial", "ratio": 0.75, "sector_deg": 10.0}, num_pred_points=4, share_encoder=False,
        fusion={"depth": 1, "num_heads": 2, "patch_size": 16}),
}
LIDAR_MODELS = ("VoxelMAE", "RadialMAE", "TemporalMAE")


def shipped_configs() -> list[str]:
    """Every pcmae YAML config under configs/ (not the _base_ parts, not mmdet3d's Python configs)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml") if "_base_" not in p.parts)


def tiny(section):
    """The model section with TINY_SIZES put in for the sizes it sets (recursively)."""
    if isinstance(section, dict):
        return {k: TINY_SIZES[k] if k in TINY_SIZES else tiny(v) for k, v in section.items()}
    return copy.deepcopy(section)


def config_model(path: str) -> dict:
    """The config's model section, tiny; a sparse-conv encoder keeps its stages but gets 16 output channels."""
    from pcmae.engine.build import load_checked_config

    model = tiny(load_checked_config(REPO / path)["model"])
    if needs_spconv(model):
        model["backbone"]["sparse_encoder"] = {**model["backbone"].get("sparse_encoder", {}), "output_channels": 16}
    return model


def all_cases() -> dict:
    """{case id: model config}: the registered models' tiny settings, then each shipped config's model, tiny."""
    return {**{f"registered:{k}": v for k, v in REGISTERED.items()},
            **{f"config:{p}": config_model(p) for p in shipped_configs()}}


def needs_spconv(cfg: dict) -> bool:
    return (cfg.get("backbone") or {}).get("type") == "sparse_conv"


def make_batch(cfg: dict, seed: int) -> dict:
    """A batch the model's dataset would give: packed LiDAR sweeps (2 samples, points spread over the range; temporal
    models also a past frame, the same sweeps moved by up to 1 m, and dt) or object clouds (2, 64, 3) (+ labels for
    a classifier, + categories and part labels for a part segmenter)."""
    g = torch.Generator().manual_seed(seed)
    if cfg["type"] in LIDAR_MODELS:
        from pcmae.structures import PointBatch

        lo, hi = (torch.tensor(cfg.get("point_cloud_range", [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])).view(2, 3))
        channels = cfg.get("point_channels", 4)
        clouds = []
        for n in (700, 500):
            xyz = lo + torch.rand(n, 3, generator=g) * (hi - lo) * 0.999
            xyz = torch.cat([xyz, xyz[: n // 2] + torch.randn(n // 2, 3, generator=g) * 0.05])  # neighbours, repeats
            xyz = torch.minimum(torch.maximum(xyz, lo), lo + (hi - lo) * 0.999)
            clouds.append(torch.cat([xyz, torch.rand(len(xyz), channels - 3, generator=g)], dim=1))
        batch = {"points": PointBatch.from_list(clouds)}
        if cfg["type"] == "TemporalMAE":
            past = [torch.cat([c[:, :2] + torch.rand(2, generator=g) - 0.5, c[:, 2:]], dim=1) for c in clouds]
            batch["past_points"] = PointBatch.from_list(past)
            batch["dt"] = torch.tensor([0.1, 0.2])
        return batch
    batch = {"points": torch.randn(2, 64, 3, generator=g)}
    if cfg["type"] in ("PointClassifier", "MATE"):
        batch["label"] = torch.randint(0, cfg.get("num_classes", 40), (2,), generator=g)
    if cfg["type"] == "PointPartSegmenter":  # a category and a part label per point
        batch["label"] = torch.randint(0, cfg.get("num_categories", 16), (2,), generator=g)
        batch["seg"] = torch.randint(0, cfg.get("num_parts", 50), (2, 64), generator=g)
    return batch


def ddp_steps(cfg: dict, rank: int, steps: int = 2) -> str:
    from pcmae.engine.build import build_model

    torch.manual_seed(0)
    model = build_model(copy.deepcopy(cfg))
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters off
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    for step in range(steps):
        torch.manual_seed(100 * rank + step)  # masks differ per rank, as in training
        loss = ddp(make_batch(cfg, seed=10 * rank + step))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    torch.distributed.all_gather(gathered, flat)
    return "ok" if torch.equal(gathered[0], gathered[1]) else "the two ranks' weights differ after the steps"


def main(out: Path) -> None:
    from pcmae.backbones.spconv_compat import spconv_available

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))  # a stuck collective raises
    rank = torch.distributed.get_rank()
    results = {}
    for name, cfg in all_cases().items():
        if needs_spconv(cfg) and not spconv_available():
            results[name] = "skipped: spconv missing"
            continue
        try:
            results[name] = ddp_steps(cfg, rank)
        except Exception as err:  # noqa: BLE001  (reported per case; DDP errors are raised on both ranks)
            results[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    # both ranks reach here before the group goes (once, a rank hung in destroy_process_group after the other left)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    if rank == 0:
        out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
