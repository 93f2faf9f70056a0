"""benchmarks/temporal_step.py (tools/benchmark.py section temporal_step): T-MAE vs Voxel-MAE step, two sizes."""
from __future__ import annotations

import multiprocessing
import os
import numpy as np
import pytest
import torch

from benchmarks import temporal_step
from tests.shared_data import shared_data_path

TINY = ["--repeats", "1", "--every", "8", "--voxel", "1.0", "--range", "-8", "-8", "-3", "8", "8", "1"]


def test_temporal_step_runs_end_to_end():
    """Every row in this process (a fresh process per row costs ~4 s of imports; run_fresh is tested below)."""
    rows = temporal_step.bench_temporal_step(temporal_step.parse_args(TINY + ["--in-process"]))
    temporal_kinds = ("temporal_mae", "temporal_mae encoder fusion only")
    assert [(r["model"], r["size"]) for r in rows] == [(m, s) for s in ("full", "half")
                                                       for m in ("voxel_mae", *temporal_kinds)]
    by = {(r["model"], r["size"]): r for r in rows}
    for size in ("full", "half"):
        single = by["voxel_mae", size]
        assert single["past voxels"] == 0
        assert single["time / Voxel-MAE"] == "1.00" and single["peak / Voxel-MAE"] == "1.00"
        for kind in temporal_kinds:
            temporal = by[kind, size]
            assert single["current voxels"] == temporal["current voxels"] > 0  # the same current frame and grid
            assert single["visible voxels"] == temporal["visible voxels"] < single["current voxels"]
            assert temporal["past voxels"] > 0
        for r in (by[kind, size] for kind in ("voxel_mae", *temporal_kinds)):
            assert r["malloc"] == temporal_step.malloc_setting()
            assert r["threads"] == 1
            assert r["tokens"] == r["current voxels"] + r["past voxels"]
            assert r["encoded"] == r["visible voxels"] + r["past voxels"]
            assert float(r["step s"]) > 0 and float(r["step CPU s"]) > 0
            assert float(r["us / token"]) == pytest.approx(1e6 * float(r["step s"]) / r["tokens"], rel=0.01, abs=0.1)
    for model in ("voxel_mae", *temporal_kinds):
        full, half = by[model, "full"], by[model, "half"]
        assert half["tokens"] < full["tokens"]
        time_ratio, token_ratio = (float(v) for v in full["full / half: time vs tokens"].split(" vs "))
        assert token_ratio == pytest.approx(full["tokens"] / half["tokens"], abs=0.01)
        assert float(full["full / half GFLOP"]) == pytest.approx(
            float(full["matmul GFLOP"]) / float(half["matmul GFLOP"]), rel=0.1)
        assert float(half["matmul GFLOP"]) > 0
        assert time_ratio == pytest.approx(float(full["step s"]) / float(half["step s"]), rel=0.02, abs=0.01)


def test_pair_is_the_real_consecutive_sweeps_past_moved_by_the_fixed_ego_motion():
    current_path = shared_data_path("patchwork-plusplus", "data", "000001.bin")
    past_path = shared_data_path("patchwork-plusplus", "data", "000000.bin")
    current, past, source = temporal_step.load_pair()
    raw_current = np.fromfile(current_path, np.float32).reshape(-1, 4)
    raw_past = np.fromfile(past_path, np.float32).reshape(-1, 4)
    assert torch.equal(current, torch.from_numpy(raw_current))
    assert torch.allclose(past[:, 0], torch.from_numpy(raw_past[:, 0]) - temporal_step.PAST_SHIFT_M)
    assert torch.equal(past[:, 1:], torch.from_numpy(raw_past[:, 1:]))
    assert "000001.bin + 000000.bin" in source


def test_half_is_the_front_half_of_both_frames():
    g = torch.Generator().manual_seed(0)
    current, past = torch.randn(500, 4, generator=g), torch.randn(400, 4, generator=g)
    full = temporal_step.make_batch(current, past, "full")
    half = temporal_step.make_batch(current, past, "half")
    assert torch.equal(full["points"].xyz, current[:, :3]) and torch.equal(full["past_points"].xyz, past[:, :3])
    assert torch.equal(half["points"].xyz, current[current[:, 0] >= 0, :3])
    assert torch.equal(half["past_points"].xyz, past[past[:, 0] >= 0, :3])
    assert half["dt"].tolist() == pytest.approx([temporal_step.FRAME_PERIOD_S])
    with pytest.raises(ValueError, match="size must be one of"):
        temporal_step.make_batch(current, past, "quarter")


def test_a_failing_row_in_its_fresh_process_is_one_line_not_a_hang(capsys):
    with pytest.raises(SystemExit):
        temporal_step.parse_args(["--voxel", "0"])
    assert "--voxel > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        temporal_step.parse_args(["--every", "0"])
    assert "--every must be >= 1" in capsys.readouterr().err
    args = temporal_step.parse_args(["--repeats", "1", "--range", "0", "0", "50", "10", "10", "51"])  # above all points
    with pytest.raises(RuntimeError, match="benchmarks.temporal_step: voxel_mae full: ValueError: no voxel"):
        temporal_step.run_fresh(multiprocessing.get_context("spawn"), "voxel_mae", "full", args)


def test_registered_as_a_tools_benchmark_section(monkeypatch):
    from tests.test_ops import load_benchmark_tool

    tool = load_benchmark_tool()
    args = tool.parse_args(["--sections", "temporal_step", "--threads", "2,1", "--repeats", "4"])
    assert args.sections == ["temporal_step"]
    seen = []
    monkeypatch.setattr(temporal_step, "bench_temporal_step", lambda a: seen.append(a) or [])
    tool.SECTIONS["temporal_step"](args)
    assert (seen[0].repeats, seen[0].threads, seen[0].voxel, seen[0].every, seen[0].in_process) == (4, 2, 0.2, 1, False)
    assert seen[0].range == list(temporal_step.RANGE)


def test_models_differ_only_in_the_temporal_parts():
    grid = (1.0, [-8, -8, -3, 8, 8, 1])
    voxel_mae = temporal_step.build_model("voxel_mae", *grid)
    default = temporal_step.build_model("temporal_mae", *grid)
    encoder_only = temporal_step.build_model("temporal_mae encoder fusion only", *grid)
    assert type(voxel_mae).__name__ == "VoxelMAE" and type(default).__name__ == "TemporalMAE"
    assert default.past_encoder is None and len(default.fusion.blocks.blocks) == 2  # shared encoder, depth 2
    single = {k: v.shape for k, v in voxel_mae.state_dict().items()}
    for model in (default, encoder_only):
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert {k: shapes.get(k) for k in single} == single  # the same tokenizer, backbone, heads
    extra = set(encoder_only.state_dict()) - set(single)
    assert extra and all(k.startswith("fusion.") for k in extra)  # nothing at the queries
    assert set(default.state_dict()) - set(single) > extra
    with pytest.raises(ValueError, match="model kind must be one of"):
        temporal_step.build_model("point_mae", *grid)


def test_malloc_column_names_the_glibc_environment(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    assert temporal_step.malloc_setting() == "default"
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "68719476736")
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert temporal_step.malloc_setting() == "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736"


def test_encoder_fusion_only_keywords_follow_the_model_signature():
    class Before:
        def __init__(self, share_encoder=True, fusion=None, query_fusion=None):
            pass

    class After(Before):
        def __init__(self, share_encoder=True, fusion=None, past_at_queries=True, query_fusion=None):
            pass

    assert temporal_step.encoder_fusion_only(Before) == {"query_fusion": {"depth": 0}}
    assert temporal_step.encoder_fusion_only(After) == {"past_at_queries": False}
