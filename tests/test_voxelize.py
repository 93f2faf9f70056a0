"""Voxelization: the kernel against the one-sort torch reference and the plain-Python reference (random, boundary
and real KITTI clouds), boundaries, cap order, errors, and the benchmark's computed equality columns."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from benchmarks.voxelize import bench_voxelize, compare, fit_exponent, pcmae_method, tiled_sweeps
from pcmae.io import load_points
from pcmae.ops.voxelize import Voxels, voxel_centers, voxelize, voxelize_reference, voxelize_torch_reference
from tests.shared_data import shared_data_path

RANGE = (-2.0, -3.0, -1.0, 6.0, 5.0, 3.0)
VOXEL = (0.5, 0.25, 1.0)  # grid (16, 32, 4)


def random_cloud(n: int, batch_size: int, seed: int, pad: float = 1.5, skip_sample: int | None = None):
    """(n, 4) points spread a bit past RANGE (so some crop), per-point batch ids in random order."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(RANGE[:3]) - pad, torch.tensor(RANGE[3:]) + pad
    xyz = torch.rand(n, 3, generator=g) * (hi - lo) + lo
    # snap a third of the points onto voxel boundaries, range edges included
    snap = torch.rand(n, generator=g) < 0.33
    grid_xyz = torch.round((xyz - torch.tensor(RANGE[:3])) / torch.tensor(VOXEL)) * torch.tensor(VOXEL) \
        + torch.tensor(RANGE[:3])
    xyz = torch.where(snap[:, None], grid_xyz, xyz)
    batch_idx = torch.randint(0, batch_size, (n,), generator=g)
    if skip_sample is not None:
        batch_idx[batch_idx == skip_sample] = (skip_sample + 1) % batch_size
    return torch.cat([xyz, torch.rand(n, 1, generator=g)], dim=1), batch_idx


def assert_same(a: Voxels, b: Voxels):
    assert torch.equal(a.coords, b.coords)
    assert torch.equal(a.point_to_voxel, b.point_to_voxel)
    assert torch.equal(a.counts, b.counts)
    assert tuple(a.grid_size) == tuple(b.grid_size)
    assert a.batch_size == b.batch_size


@pytest.mark.parametrize("batch_size", [1, 3, 5])
@pytest.mark.parametrize("cap", [None, 1, 3])
def test_matches_reference_on_random_clouds(batch_size, cap):
    for seed in range(3):
        points, batch_idx = random_cloud(1500, batch_size, seed, skip_sample=1 if batch_size > 2 else None)
        got = voxelize(points, batch_idx, VOXEL, RANGE, cap, batch_size)
        assert_same(got, voxelize_reference(points, batch_idx, VOXEL, RANGE, cap, batch_size))
        assert got.grid_size == (16, 32, 4)
        assert got.coords.dtype == torch.int32 and got.coords.is_contiguous()
        assert got.point_to_voxel.dtype == torch.int64 and got.counts.dtype == torch.int32


def test_float64_points_and_unsorted_batch_match_reference():
    points, batch_idx = random_cloud(800, 4, seed=7)
    points = points.double()
    before = points.clone()
    assert_same(voxelize(points, batch_idx, VOXEL, RANGE, 2), voxelize_reference(points, batch_idx, VOXEL, RANGE, 2))
    assert torch.equal(points, before)  # the float64 cells are computed on copies


def test_range_edges_min_inside_max_outside():
    rng, size = (0.0, 0.0, 0.0, 4.0, 2.0, 1.0), (0.5, 0.5, 0.5)  # grid (8, 4, 2)
    pts = torch.tensor([[0.0, 0.0, 0.0],    # all minima: voxel (0, 0, 0)
                        [4.0, 1.0, 0.5],    # x == x_max: outside
                        [1.0, 2.0, 0.5],    # y == y_max: outside
                        [1.0, 1.0, 1.0],    # z == z_max: outside
                        [1.0, 1.5, 0.5],    # interior boundaries: x 1.0 -> 2, y 1.5 -> 3, z 0.5 -> 1
                        [-1e-6, 1.0, 0.5],  # just below x_min: outside
                        [3.999, 1.999, 0.999]])  # just below the maxima: last voxel
    vox = voxelize(pts, torch.zeros(len(pts), dtype=torch.long), size, rng)
    assert vox.point_to_voxel.tolist() == [0, -1, -1, -1, 1, -1, 2]
    assert vox.coords.tolist() == [[0, 0, 0, 0], [0, 1, 3, 2], [0, 1, 3, 7]]  # (batch, z, y, x)
    assert vox.counts.tolist() == [1, 1, 1]


def test_range_not_a_multiple_of_voxel_size_drops_partial_cell():
    # (1.0 - 0.0) / 0.3 = 3.33 -> 3 cells: [0.9, 1.0) lies outside the grid (as in mmcv's hard voxelization)
    pts = torch.tensor([[0.1, 0.1, 0.1], [0.95, 0.1, 0.1]])
    vox = voxelize(pts, torch.zeros(2, dtype=torch.long), (0.3, 0.3, 0.3), (0, 0, 0, 1, 1, 1))
    assert vox.grid_size == (3, 3, 3)
    assert vox.point_to_voxel.tolist() == [0, -1]


def test_cap_keeps_first_points_in_input_order():
    # six points in one voxel of sample 1, interleaved with points of sample 0 in another voxel
    pts = torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [1.5, 0.1, 0.1], [0.3, 0.3, 0.3],
                        [0.4, 0.4, 0.4], [0.5, 0.5, 0.5], [0.6, 0.6, 0.6], [0.7, 0.7, 0.7]])
    batch = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1])
    vox = voxelize(pts, batch, (1.0, 1.0, 1.0), (0, 0, 0, 2, 1, 1), max_points_per_voxel=3)
    assert vox.coords.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]
    # sample 1's voxel keeps input rows 0, 1, 3; rows 5, 6, 7 are over the cap
    assert vox.point_to_voxel.tolist() == [2, 2, 1, 2, 0, -1, -1, -1]
    assert vox.counts.tolist() == [1, 1, 3]


def test_voxels_sorted_unique_and_counts_consistent():
    points, batch_idx = random_cloud(3000, 3, seed=11)
    vox = voxelize(points, batch_idx, VOXEL, RANGE, max_points_per_voxel=2)
    keys = [tuple(c) for c in vox.coords.tolist()]
    assert keys == sorted(set(keys))
    kept = vox.point_to_voxel[vox.point_to_voxel >= 0]
    assert torch.equal(torch.bincount(kept, minlength=vox.num_voxels).int(), vox.counts)
    assert int(vox.counts.max()) <= 2
    # every kept point lies in its voxel's batch and within half a voxel of its center
    ids = vox.point_to_voxel >= 0
    assert torch.equal(vox.coords[vox.point_to_voxel[ids], 0].long(), batch_idx[ids])
    centers = voxel_centers(vox, VOXEL, RANGE)
    offset = (points[ids, :3] - centers[vox.point_to_voxel[ids]]).abs()
    assert bool((offset <= torch.tensor(VOXEL) / 2 + 1e-6).all())


def test_voxel_centers_values():
    coords = torch.tensor([[0, 0, 0, 0], [2, 3, 1, 5]], dtype=torch.int32)  # (batch, z, y, x)
    centers = voxel_centers(coords, VOXEL, RANGE)
    expected = torch.tensor([[-2.0 + 0.25, -3.0 + 0.125, -1.0 + 0.5], [-2.0 + 5.5 * 0.5, -3.0 + 1.5 * 0.25, -1.0 + 3.5]])
    torch.testing.assert_close(centers, expected)


def test_empty_samples_and_empty_input():
    points, batch_idx = random_cloud(500, 3, seed=3)
    vox = voxelize(points, batch_idx, VOXEL, RANGE, batch_size=6)  # samples 3..5 have no points
    assert vox.batch_size == 6 and int(vox.coords[:, 0].max()) <= 2
    empty = voxelize(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), VOXEL, RANGE, 4, batch_size=2)
    assert empty.coords.shape == (0, 4) and empty.counts.shape == (0,) and empty.point_to_voxel.shape == (0,)
    assert empty.batch_size == 2
    assert voxelize(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), VOXEL, RANGE).batch_size == 0
    outside = torch.full((4, 3), 100.0)
    vox = voxelize(outside, torch.zeros(4, dtype=torch.long), VOXEL, RANGE)
    assert vox.num_voxels == 0 and vox.point_to_voxel.tolist() == [-1] * 4


@pytest.mark.parametrize("bad, message", [
    (dict(voxel_size=(0.5, 0.0, 1.0)), "voxel_size"),
    (dict(voxel_size=(0.5, -1.0, 1.0)), "voxel_size"),
    (dict(voxel_size=(0.5, 1.0)), "voxel_size"),
    (dict(point_cloud_range=(0, 0, 0, 1, 1)), "point_cloud_range"),
    (dict(point_cloud_range=(0, 0, 2, 1, 1, 2)), "point_cloud_range"),
    (dict(point_cloud_range=(0, 5, 0, 1, 1, 1)), "point_cloud_range"),
    (dict(point_cloud_range=(0, 0, 0, float("inf"), 1, 1)), "point_cloud_range"),
    (dict(voxel_size=(1e-9, 1, 1), point_cloud_range=(0, 0, 0, 100, 1, 1)), "int32"),
    (dict(voxel_size=(1e-6, 1e-6, 1e-6), point_cloud_range=(0, 0, 0, 2000, 2000, 2000)), "int64"),
    (dict(max_points_per_voxel=0), "max_points_per_voxel"),
    (dict(batch_size=1), "batch_size"),
])
def test_bad_arguments_name_the_argument(bad, message):
    points, batch_idx = random_cloud(50, 2, seed=0)
    kwargs = {"voxel_size": VOXEL, "point_cloud_range": RANGE, **bad}
    with pytest.raises(ValueError, match=message):
        voxelize(points, batch_idx, **kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_points_rejected(value):
    points, batch_idx = random_cloud(50, 2, seed=0)
    points[17, 1] = value
    with pytest.raises(ValueError, match="NaN or inf.*first row 17"):
        voxelize(points, batch_idx, VOXEL, RANGE)


def test_bad_tensors_rejected():
    points, batch_idx = random_cloud(50, 2, seed=0)
    with pytest.raises(ValueError, match="points"):
        voxelize(points[:, :2], batch_idx, VOXEL, RANGE)
    with pytest.raises(ValueError, match="batch_idx"):
        voxelize(points, batch_idx[:-1], VOXEL, RANGE)
    with pytest.raises(ValueError, match="batch_idx"):
        voxelize(points, batch_idx.float(), VOXEL, RANGE)
    with pytest.raises(ValueError, match="batch_idx must be >= 0"):
        voxelize(points, batch_idx - 1, VOXEL, RANGE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    points, batch_idx = random_cloud(5000, 3, seed=5)
    cpu = voxelize(points, batch_idx, VOXEL, RANGE, 3)
    gpu = voxelize(points.cuda(), batch_idx.cuda(), VOXEL, RANGE, 3)
    assert_same(Voxels(gpu.coords.cpu(), gpu.point_to_voxel.cpu(), gpu.counts.cpu(), gpu.grid_size, gpu.batch_size),
                cpu)


def test_fit_exponent():
    sizes = [1e3, 1e4, 1e5, 1e6]
    assert fit_exponent(sizes, [2e-9 * n ** 1.5 for n in sizes]) == pytest.approx(1.5)
    assert fit_exponent(sizes, [3e-8 * n for n in sizes]) == pytest.approx(1.0)


def test_matches_torch_reference_on_random_clouds():
    for seed, cap in ((0, None), (1, 2)):
        points, batch_idx = random_cloud(4000, 3, seed)
        assert_same(voxelize(points, batch_idx, VOXEL, RANGE, cap),
                    voxelize_torch_reference(points, batch_idx, VOXEL, RANGE, cap))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_points_one_step_either_side_of_every_cell_boundary(dtype):
    """The crop bounds are found once per geometry by bisection over the floats of the points' dtype: points at
    each boundary and at its two float neighbours must land where float64 arithmetic puts them."""
    rng, size = (-1.1, 0.3, -2.0, 2.2, 1.0, 0.7), (0.3, 0.07, 0.9)  # ranges not multiples of the voxel size
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    rows = []
    for axis in range(3):
        cells = int(round((rng[axis + 3] - rng[axis]) / size[axis]))
        edges = [rng[axis] + k * size[axis] for k in range(cells + 2)] + [rng[axis + 3]]
        for edge in np.array(edges, dtype=np_dtype):
            for value in (np.nextafter(edge, -np.inf), edge, np.nextafter(edge, np.inf)):
                row = [(rng[a] + rng[a + 3]) / 2 for a in range(3)]
                row[axis] = float(value)
                rows.append(row)
    points = torch.tensor(rows, dtype=dtype)
    batch_idx = torch.zeros(len(points), dtype=torch.long)
    got = voxelize(points, batch_idx, size, rng)
    assert_same(got, voxelize_reference(points, batch_idx, size, rng))
    assert 0 < int((got.point_to_voxel >= 0).sum()) < len(points)  # both sides of the range were exercised


def test_one_sample_batch_and_keys_past_float64_precision():
    points, _ = random_cloud(600, 1, seed=9)
    in_sample_2 = torch.full((600,), 2)  # every point in sample 2 of 4: the single-sample path
    assert_same(voxelize(points, in_sample_2, VOXEL, RANGE, 2, batch_size=4),
                voxelize_reference(points, in_sample_2, VOXEL, RANGE, 2, batch_size=4))
    # 2**54 cells per sample: keys no longer exact in float64, built in int64 instead
    huge_range, tiny_voxel = (0.0, 0.0, 0.0, 1048.576, 1048.576, 16.384), (0.001, 0.001, 0.001)
    g = torch.Generator().manual_seed(3)
    xyz = torch.rand(300, 3, generator=g, dtype=torch.float64) * torch.tensor(huge_range[3:], dtype=torch.float64)
    xyz[::7] = torch.tensor(huge_range[3:], dtype=torch.float64) - 1e-9  # the far corner: the largest keys
    batch_idx = torch.arange(300) % 2
    got = voxelize(xyz, batch_idx, tiny_voxel, huge_range)
    assert got.grid_size == (1048576, 1048576, 16384)
    assert_same(got, voxelize_reference(xyz, batch_idx, tiny_voxel, huge_range))


def test_half_precision_points_match_float32():
    points, batch_idx = random_cloud(1000, 2, seed=4)
    half = points.half()
    assert_same(voxelize(half, batch_idx, VOXEL, RANGE, 3), voxelize_reference(half.float(), batch_idx, VOXEL, RANGE, 3))


GRID_KITTI = ((0.05, 0.05, 0.1), (0.0, -40.0, -3.0, 70.4, 40.0, 1.0))


def test_real_kitti_sweeps_match_both_references():
    path = shared_data_path("openpcdet", "data", "kitti", "training", "velodyne", "000000.bin")
    sweep = torch.from_numpy(load_points(path, layout="kitti"))[::3]  # a third: the Python reference is slow
    voxel, kitti = GRID_KITTI
    zeros = torch.zeros(len(sweep), dtype=torch.long)
    got = voxelize(sweep, zeros, voxel, kitti, 5)
    assert_same(got, voxelize_reference(sweep, zeros, voxel, kitti, 5))
    assert got.num_voxels > 10_000 and int(got.counts.max()) == 5
    # a 3-sample batch of 200k tiled, turned and jittered real points, interleaved samples, int32 and int64 keys
    points, _ = tiled_sweeps(200_000, seed=1)
    batch_idx = torch.arange(len(points)) % 3
    for cap, grid_voxel in ((5, voxel), (None, (0.01, 0.01, 0.01))):  # the second grid needs 64-bit keys
        assert_same(voxelize(points, batch_idx, grid_voxel, kitti, cap),
                    voxelize_torch_reference(points, batch_idx, grid_voxel, kitti, cap))


def test_fit_exponent():
    sizes = [1e3, 1e4, 1e5, 1e6]
    assert fit_exponent(sizes, [2e-9 * n ** 1.5 for n in sizes]) == pytest.approx(1.5)
    assert fit_exponent(sizes, [3e-8 * n for n in sizes]) == pytest.approx(1.0)


def test_benchmark_equality_columns_are_computed():
    rows = bench_voxelize(sizes=(10_000,), repeats=1, threads=(1,))
    methods = {(r["cap"], r["method"]) for r in rows}
    assert {(5, "pcmae.voxelize"), (5, "pcmae voxelize_torch_reference"), ("none", "torch.unique (flat int64 key)"),
            } <= methods
    assert ((5, "spconv PointToVoxel") in methods) == (importlib.util.find_spec("spconv") is not None)
    for r in rows:
        assert r["voxelize ms"] > 0 and r["+ mean ms"] > 0 and r["threads"] == 1
        if r["method"].startswith("pcmae"):
            assert (r["same voxels"], r["same counts"]) == ("yes", "yes") and r["same means"].startswith("yes")
    # the columns really compare: a point moved out of the range changes its voxel's count and mean, and
    # dropping a single-point voxel's point removes that voxel
    points, _ = tiled_sweeps(20_000)
    zeros = torch.zeros(len(points), dtype=torch.long)
    vox = voxelize(points, zeros, *GRID_KITTI)
    kept = torch.nonzero(vox.point_to_voxel >= 0)[:, 0]
    shared = kept[vox.counts[vox.point_to_voxel[kept]] >= 2][0]
    alone = kept[vox.counts[vox.point_to_voxel[kept]] == 1][0]
    expected = pcmae_method(points, None)[1]()
    moved = points.clone()
    moved[shared, 0] = -10.0
    assert compare(pcmae_method(moved, None)[1](), expected)["same voxels"] == "yes"
    assert compare(pcmae_method(moved, None)[1](), expected)["same counts"] == "no: 1 voxels differ"
    assert compare(pcmae_method(moved, None)[1](), expected)["same means"].startswith("no (max diff")
    dropped = torch.cat([points[:alone], points[alone + 1:]])
    assert compare(pcmae_method(dropped, None)[1](), expected)["same voxels"] == f"no: 0 extra, 1 missing of {vox.num_voxels}"
