"""Voxelization: the sort-based kernel against the plain-Python reference, boundaries, cap order, errors."""
from __future__ import annotations

import pytest
import torch

from benchmarks.voxelize import bench_voxelize, fit_exponent
from pcmae.ops.voxelize import Voxels, voxel_centers, voxelize, voxelize_reference

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
    assert_same(voxelize(points, batch_idx, VOXEL, RANGE, 2), voxelize_reference(points, batch_idx, VOXEL, RANGE, 2))


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


def test_benchmark_methods_agree_on_voxel_count():
    rows = bench_voxelize(sizes=(2000, 4000), repeats=1)
    for n in (2000, 4000):
        counts = {r["method"]: r["voxels"] for r in rows if r["points"] == n}
        assert len(counts) >= 2 and len(set(counts.values())) == 1, counts
        assert all(r["seconds"] > 0 for r in rows)
