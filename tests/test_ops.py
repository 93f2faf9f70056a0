"""Geometry kernels: every fast path against its pure-torch reference, plus hand-checked cases and errors."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from pcmae.ops import (
    chamfer_distance,
    farthest_point_sample,
    farthest_point_sample_reference,
    knn,
    knn_reference,
    nearest_sq_dist,
    segment_reduce,
    segment_reduce_reference,
)
from pcmae.ops.fps import _fpsample_bucket, _fpsample_exact, _pruned_fps, _tree_slot_of_first_point, auto_backend
from tests.shared_data import shared_data_path

fpsample = pytest.importorskip("fpsample")
pytest.importorskip("pykdtree")

# the package re-exports the function ``knn``, which hides the submodule of the same name as an attribute
knn_module = importlib.import_module("pcmae.ops.knn")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kitti_points() -> torch.Tensor:
    """(1, 115384, 3) float32: a real KITTI velodyne sweep (quantised values, many exact distance ties)."""
    path = shared_data_path("openpcdet", "data", "kitti", "training", "velodyne", "000000.bin")
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 4)[None, :, :3].copy())


def is_farthest_point_sequence(xyz: torch.Tensor, picks: torch.Tensor) -> bool:
    """Independent check of one cloud (N, 3): each pick has the largest min distance to the earlier picks."""
    points = xyz.double()
    min_dist = torch.full((points.shape[0],), float("inf"), dtype=torch.float64)
    for i, p in enumerate(picks.tolist()):
        if i > 0 and min_dist[p] != min_dist.max():
            return False
        min_dist = torch.minimum(min_dist, ((points - points[p]) ** 2).sum(-1))
    return picks[0].item() == 0


# ----------------------------------------------------------------------------------------------- FPS

@pytest.mark.parametrize("backend", ["torch", "fpsample", "auto"])
def test_fps_hand_checked_order_and_lowest_index_on_ties(backend):
    line = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0]]])
    assert farthest_point_sample(line, 4, backend=backend).tolist() == [[0, 3, 2, 1]]
    # after 0 and 3, points 1 and 2 are both at squared distance 1: the lower index comes first
    tie = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 2, 0]]])
    assert farthest_point_sample(tie, 4, backend=backend).tolist() == [[0, 3, 1, 2]]
    # two distinct positions, four samples: once both are picked every distance is 0 -> index 0 again
    dup = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0]]])
    assert farthest_point_sample(dup, 4, backend=backend).tolist() == [[0, 1, 0, 0]]


def test_fps_reference_is_a_farthest_point_sequence():
    xyz = torch.randn(2, 300, 3, generator=generator(0))
    picks = farthest_point_sample_reference(xyz, 40)
    assert picks.shape == (2, 40) and picks.dtype == torch.long
    assert all(is_farthest_point_sequence(xyz[b], picks[b]) for b in range(2))


@pytest.mark.parametrize("n, m", [(1000, 125), (5000, 625), (20000, 1000)])
def test_fps_fpsample_equals_reference_on_random_float32_clouds(n, m):
    g = generator(n)
    xyz = torch.cat([torch.randn(1, n, 3, generator=g), torch.rand(1, n, 3, generator=g) * 50 - 25])
    expected = farthest_point_sample_reference(xyz, m)
    assert torch.equal(farthest_point_sample(xyz, m, backend="fpsample"), expected)
    assert torch.equal(farthest_point_sample(xyz, m), expected)


def test_fps_fpsample_equals_reference_with_duplicates_and_lattice_ties():
    g = generator(1)
    lattice = torch.randint(0, 6, (1, 3000, 3), generator=g).float()  # 216 positions: ties + saturation
    doubled = torch.randn(1, 1500, 3, generator=g).repeat(1, 2, 1)[:, torch.randperm(3000, generator=g)]
    xyz = torch.cat([lattice, doubled])
    for m in (100, 400):
        expected = farthest_point_sample_reference(xyz, m)
        assert torch.equal(farthest_point_sample(xyz, m, backend="fpsample"), expected)
    assert is_farthest_point_sequence(lattice[0], expected[0, :216])


def test_fps_exact_on_real_kitti_sweep():
    xyz = kitti_points()
    expected = farthest_point_sample_reference(xyz, 200)
    assert torch.equal(farthest_point_sample(xyz, 200, backend="fpsample"), expected)
    assert torch.equal(farthest_point_sample(xyz, 200, backend="pruned"), expected)


def test_fps_pruned_is_exact_on_a_real_kitti_sweep():
    """The pruned backend (auto for clouds of 16k+ points; the test above holds it to the reference loop for 200
    samples) against fpsample's exact kernel, which picks as the reference (tests above), for 2048 samples."""
    xyz = kitti_points()
    assert auto_backend(xyz) == "pruned"
    picks = farthest_point_sample(xyz, 2048)
    assert torch.equal(picks[0], torch.from_numpy(_fpsample_exact(xyz[0].numpy(), 2048)))
    part = xyz[:, ::4].double()  # float64 has no fpsample kernel: against the loop, fewer points and samples
    assert torch.equal(farthest_point_sample(part, 100), farthest_point_sample_reference(part, 100))


@pytest.mark.parametrize("bucket_size", [1, 4, 64])
def test_fps_pruned_ties_duplicates_and_tiny_clouds(bucket_size):
    g = generator(5)
    lattice = torch.randint(0, 6, (1, 700, 3), generator=g).float()  # 216 positions, many duplicates and ties
    for xyz, m in ((lattice, 700), (lattice.double(), 300), (torch.randn(1, 3, 3, generator=g), 3),
                   (torch.zeros(1, 5, 3), 4), (torch.randn(1, 1000, 3, generator=g) * 1e4, 200)):
        expected = farthest_point_sample_reference(xyz, m)[0].numpy()
        assert np.array_equal(_pruned_fps(xyz[0].numpy(), m, bucket_size), expected)
    assert _pruned_fps(lattice[0].numpy(), 0).shape == (0,)


def test_fps_auto_backend_choice():
    assert auto_backend(torch.zeros(1, 8192, 3)) == "fpsample"
    assert auto_backend(torch.zeros(64, 2048, 3)) == "torch"  # big batch of small clouds: batched loop
    assert auto_backend(torch.zeros(2, 20000, 3, dtype=torch.float64)) == "pruned"
    assert auto_backend(torch.zeros(1, 100, 3, dtype=torch.float64)) == "torch"


@pytest.mark.parametrize("n", [1000, 7000, 20000])
def test_fps_bucket_starts_at_zero_and_matches_reference_without_ties(n):
    xyz = torch.randn(1, n, 3, generator=generator(10 + n))
    # these seeded clouds have no exact float32 tie for the largest distance: bucket FPS is then exact
    assert torch.equal(farthest_point_sample(xyz, n // 10, backend="bucket"),
                       farthest_point_sample_reference(xyz, n // 10))


def test_fps_bucket_tree_slot_of_point_zero_on_degenerate_clouds():
    g = generator(2)
    clouds = [torch.randint(0, 4, (2000, 3), generator=g).float(),           # lattice, many duplicates
              torch.randn(3000, 3, generator=g) * torch.tensor([100.0, 1, 0.01]) + 500,  # flat, offset
              torch.zeros(64, 3)]                                             # one position
    for cloud in clouds:
        cloud = cloud.numpy()
        for height in (1, 3, 6):
            slot = _tree_slot_of_first_point(cloud, height)
            picks = fpsample._bucket_fps_kdline_sampling(cloud, 32, height, slot)
            assert picks[0] == 0
        assert _fpsample_bucket(cloud, 32)[0] == 0
    assert is_farthest_point_sequence(torch.from_numpy(clouds[0].numpy()),
                                      torch.from_numpy(_fpsample_bucket(clouds[0].numpy(), 64)))


def test_fps_float64_and_half_inputs():
    xyz = torch.randn(2, 500, 3, generator=generator(3), dtype=torch.float64)
    assert torch.equal(farthest_point_sample(xyz, 50), farthest_point_sample_reference(xyz, 50))
    with pytest.raises(ValueError, match="float64"):
        farthest_point_sample(xyz, 50, backend="fpsample")
    half = xyz.to(torch.bfloat16)
    assert torch.equal(farthest_point_sample(half, 50, backend="fpsample"),
                       farthest_point_sample_reference(half.float(), 50))


def test_fps_errors():
    xyz = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match=r"num_samples \(11\) is larger than the number of points \(10\)"):
        farthest_point_sample(xyz, 11)
    bad = xyz.clone()
    bad[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        farthest_point_sample(bad, 4)
    bad[1, 3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        farthest_point_sample_reference(bad, 4)
    with pytest.raises(ValueError, match=r"shape \(B, N, 3\)"):
        farthest_point_sample(xyz[..., :2], 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        farthest_point_sample(xyz, 4, backend="cuda")
    assert farthest_point_sample(xyz, 0).shape == (2, 0)


# ----------------------------------------------------------------------------------------------- kNN

def brute_force_knn(query: torch.Tensor, points: torch.Tensor, k: int):
    """float64 distances, full stable sort: (dist2, idx) sorted by distance then index."""
    d = ((query.double()[:, :, None] - points.double()[:, None]) ** 2).sum(-1)
    d, idx = d.sort(dim=-1, stable=True)
    return d[..., :k], idx[..., :k]


@pytest.mark.parametrize("backend", ["torch", "kdtree", "auto"])
def test_knn_matches_brute_force(backend):
    g = generator(4)
    points = torch.randn(3, 2000, 3, generator=g)
    query = torch.cat([points[:, :50], torch.randn(3, 150, 3, generator=g)], dim=1)
    dist2, idx = knn(query, points, 16, backend=backend)
    ref_dist, ref_idx = brute_force_knn(query, points, 16)
    assert idx.dtype == torch.long and idx.shape == (3, 200, 16)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist2.double(), ref_dist, rtol=1e-5, atol=1e-6)
    assert torch.equal(idx[:, :50, 0], torch.arange(50).expand(3, 50))  # a point is its own nearest
    assert bool((dist2[..., 1:] >= dist2[..., :-1]).all())


def test_knn_backends_agree_and_reference_chunking_changes_nothing():
    g = generator(5)
    points, query = torch.rand(2, 5000, 3, generator=g), torch.rand(2, 700, 3, generator=g)
    d_ref, i_ref = knn_reference(query, points, 32)
    d_small, i_small = knn_reference(query, points, 32, chunk_elements=7000)
    d_tree, i_tree = knn(query, points, 32, backend="kdtree")
    assert torch.equal(i_ref, i_small) and torch.equal(d_ref, d_small)
    assert torch.equal(i_ref, i_tree) and torch.equal(d_ref, d_tree)


def test_knn_duplicate_points_sorted_by_distance_then_index():
    g = generator(6)
    base = torch.randn(1, 100, 3, generator=g)
    points = base.repeat(1, 3, 1)  # every position three times: indices i, i + 100, i + 200
    for backend in ("torch", "kdtree"):
        dist2, idx = knn(base[:, :20], points, 7, backend=backend)
        assert idx[0, :, :3].tolist() == [[i, i + 100, i + 200] for i in range(20)]
        assert bool((dist2[0, :, :3] == 0).all())
        key = dist2.double() * 1e6 + idx.double() / 1e6  # lexicographic (distance, index) is ascending
        assert bool((key[..., 1:] > key[..., :-1]).all())


def test_knn_distances_are_differentiable():
    g = generator(7)
    points = torch.randn(2, 300, 3, generator=g, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 40, 3, generator=g, dtype=torch.float64, requires_grad=True)
    for backend in ("torch", "kdtree"):
        dist2, idx = knn(query, points, 5, backend=backend)
        dist2.sum().backward()
        nearest = points.detach()[torch.arange(2)[:, None, None], idx]
        torch.testing.assert_close(query.grad, (2 * (query.detach()[:, :, None] - nearest)).sum(2))
        query.grad = points.grad = None


def test_knn_on_real_kitti_sweep():
    points = kitti_points()[:, ::4].contiguous()  # 28846 points
    query = points[:, farthest_point_sample(points, 128)[0]]
    d_ref, i_ref = knn_reference(query, points, 32)
    d_tree, i_tree = knn(query, points, 32)
    torch.testing.assert_close(d_tree, d_ref, rtol=0, atol=0)
    same = i_tree == i_ref  # quantised LiDAR values: only points at exactly the k-th distance may differ
    boundary = d_ref == d_ref[..., -1:]
    assert bool((same | boundary).all())


def test_knn_errors():
    points, query = torch.randn(2, 10, 3), torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"k \(11\) is larger than the number of points \(10\)"):
        knn(query, points, 11)
    with pytest.raises(ValueError, match="positive int"):
        knn_reference(query, points, 0)
    with pytest.raises(ValueError, match="same batch size"):
        knn(query[:1], points, 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        knn(query, points.masked_fill(points > 1.5, float("nan")), 3)


# ------------------------------------------------------------------------------------------- Chamfer

def dense_chamfer(x, y, norm=2, reduction="mean"):
    """Dense reference: the full (B, N, M) matrix; Point-MAE's ChamferDistanceL1/L2 formulas."""
    d = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    d_xy, d_yx = d.min(dim=2).values, d.min(dim=1).values
    if norm == 2:
        per_cloud = d_xy.mean(1) + d_yx.mean(1)
    else:
        per_cloud = (d_xy.sqrt().mean(1) + d_yx.sqrt().mean(1)) / 2
    return per_cloud.mean() if reduction == "mean" else per_cloud


def test_chamfer_hand_checked():
    x = torch.tensor([[[0.0, 0, 0]]])
    y = torch.tensor([[[1.0, 0, 0], [3, 0, 0]]])
    # x->y: 1; y->x: (1 + 9) / 2 = 5
    assert chamfer_distance(x, y, norm=2).item() == pytest.approx(6.0)
    assert chamfer_distance(x, y, norm=1).item() == pytest.approx((1 + (1 + 3) / 2) / 2)
    d, idx = nearest_sq_dist(y, x)
    assert d.tolist() == [[1.0, 9.0]] and idx.tolist() == [[0, 0]]


@pytest.mark.parametrize("backend", ["torch", "kdtree"])
@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chamfer_values_and_gradients_equal_dense_reference(backend, norm, reduction):
    g = generator(8)
    x0 = torch.randn(3, 200, 3, generator=g, dtype=torch.float64)
    y0 = torch.randn(3, 150, 3, generator=g, dtype=torch.float64)
    x1, y1 = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    x2, y2 = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    ours = chamfer_distance(x1, y1, norm=norm, reduction=reduction, backend=backend)
    dense = dense_chamfer(x2, y2, norm=norm, reduction=reduction)
    assert ours.shape == dense.shape == (() if reduction == "mean" else (3,))
    torch.testing.assert_close(ours, dense)
    ours.sum().backward()
    dense.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(y1.grad, y2.grad)
    dense_cdist = (torch.cdist(x0, y0) ** 2).min(2).values.mean(1) + (torch.cdist(y0, x0) ** 2).min(2).values.mean(1)
    if norm == 2:
        torch.testing.assert_close(ours.detach(), dense_cdist.mean() if reduction == "mean" else dense_cdist)


def test_chamfer_l1_gradient_is_finite_where_points_coincide():
    x = torch.randn(1, 20, 3, generator=generator(9), dtype=torch.float64)
    y = x[:, :10].clone().requires_grad_()
    chamfer_distance(x.requires_grad_(), y, norm=1).backward()
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(y.grad).all())


@pytest.mark.parametrize("backend", ["torch", "kdtree"])
def test_chamfer_masks_equal_per_cloud_truncation(backend):
    g = generator(10)
    x = torch.randn(3, 60, 3, generator=g, dtype=torch.float64)
    y = torch.randn(3, 50, 3, generator=g, dtype=torch.float64)
    x_len, y_len = [60, 17, 33], [5, 50, 21]
    x_mask = torch.arange(60)[None] < torch.tensor(x_len)[:, None]
    y_mask = torch.arange(50)[None] < torch.tensor(y_len)[:, None]
    # masked y points sit exactly on x points: if they were matched, the distances would drop to 0
    y = torch.where(y_mask[..., None], y, x[:, :50])
    x.requires_grad_()
    y.requires_grad_()
    per_cloud = chamfer_distance(x, y, x_mask, y_mask, reduction="none", backend=backend)
    expected = torch.stack([dense_chamfer(x[b:b + 1, :x_len[b]], y[b:b + 1, :y_len[b]]) for b in range(3)])
    torch.testing.assert_close(per_cloud, expected)
    torch.testing.assert_close(chamfer_distance(x, y, x_mask, y_mask, backend=backend), expected.mean())
    per_cloud.sum().backward()
    assert bool((x.grad[~x_mask] == 0).all()) and bool((y.grad[~y_mask] == 0).all())
    assert bool((x.grad[x_mask].abs().sum(-1) > 0).all())
    _, idx = nearest_sq_dist(x.detach(), y.detach(), y_mask, backend=backend)
    assert bool(torch.gather(y_mask, 1, idx).all())


def test_chamfer_errors():
    x, y = torch.randn(2, 8, 3), torch.randn(2, 5, 3)
    y_mask = torch.ones(2, 5, dtype=torch.bool)
    y_mask[1] = False
    with pytest.raises(ValueError, match=r"y_mask leaves no valid point in cloud\(s\) \[1\]"):
        chamfer_distance(x, y, y_mask=y_mask)
    with pytest.raises(ValueError, match="y_mask leaves no valid point"):
        nearest_sq_dist(x, y, y_mask)
    with pytest.raises(ValueError, match="norm must be 1 or 2"):
        chamfer_distance(x, y, norm=3)
    with pytest.raises(ValueError, match="reduction must be one of"):
        chamfer_distance(x, y, reduction="sum")
    with pytest.raises(ValueError, match=r"x_mask must have shape \(2, 8\)"):
        chamfer_distance(x, y, x_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="same batch size"):
        chamfer_distance(x, y[:1])


def test_chamfer_16k_by_16k_never_materialises_the_full_matrix(monkeypatch):
    """Forward and backward of a 16k x 16k Chamfer on the torch path: the largest distance block the search
    builds is bounded by chunk_elements (4M, vs 268M for the full matrix), and the result equals the kd-tree."""
    n, budget = 16384, 1 << 22
    g = generator(11)
    x = torch.rand(1, n, 3, generator=g, requires_grad=True)
    y = torch.rand(1, n, 3, generator=g, requires_grad=True)
    largest = []
    original = knn_module._pairwise_sq_dist

    def recording(query, points):
        out = original(query, points)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(knn_module, "_pairwise_sq_dist", recording)
    loss = chamfer_distance(x, y, backend="torch", chunk_elements=budget)
    loss.backward()
    assert largest and max(largest) <= budget <= n * n // 64
    assert sum(largest) == 2 * n * n  # every pair was looked at, in blocks
    torch.testing.assert_close(loss, chamfer_distance(x, y, backend="kdtree"))
    assert x.grad.shape == (1, n, 3) and bool(torch.isfinite(x.grad).all())


PEAK_MEMORY_SCRIPT = """
import resource, torch
from pcmae.ops import chamfer_distance
g = torch.Generator().manual_seed(0)
x = torch.rand(1, 16384, 3, generator=g, requires_grad=True)
y = torch.rand(1, 16384, 3, generator=g, requires_grad=True)
chamfer_distance(x[:, :100], y[:, :100], backend="torch").backward()  # load every kernel once
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
chamfer_distance(x, y, backend="torch").backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_chamfer_16k_by_16k_peak_memory_measured_in_a_fresh_process():
    """The process high-water mark grows by far less than the 1 GiB a dense 16k x 16k float32 matrix needs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    growth_bytes = int(result.stdout.strip().splitlines()[-1]) * 1024  # ru_maxrss is in KiB on Linux
    assert growth_bytes < 16384 * 16384 * 4 // 4, f"peak grew by {growth_bytes / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------------ segments

@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_segment_reduce_matches_reference_with_gradients(reduce):
    g = generator(12)
    values = torch.randn(200, 5, generator=g, dtype=torch.float64)
    values[10:20] = values[0]  # ties inside a segment for max/min
    ids = torch.randint(0, 30, (200,), generator=g)
    ids[ids == 7] = 8  # segment 7 is empty
    ids[10:20] = ids[0]
    v1, v2 = values.clone().requires_grad_(), values.clone().requires_grad_()
    out = segment_reduce(v1, ids, 32, reduce)  # 30 and 31 empty too
    ref = segment_reduce_reference(v2, ids, 32, reduce)
    assert out.shape == (32, 5)
    torch.testing.assert_close(out, ref)
    assert bool((out[[7, 30, 31]] == 0).all())
    weights = torch.randn(32, 5, generator=g, dtype=torch.float64)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad)


def test_segment_reduce_hand_checked_and_errors():
    values = torch.tensor([[1.0], [5.0], [2.0], [-3.0]])
    ids = torch.tensor([2, 0, 2, 2])
    assert segment_reduce(values, ids, 3, "sum").flatten().tolist() == [5.0, 0.0, 0.0]
    assert segment_reduce(values, ids, 3, "mean").flatten().tolist() == [5.0, 0.0, 0.0]
    assert segment_reduce(values, ids, 3, "max").flatten().tolist() == [5.0, 0.0, 2.0]
    assert segment_reduce(values, ids, 3, "min").flatten().tolist() == [5.0, 0.0, -3.0]
    with pytest.raises(ValueError, match=r"segment_ids must lie in \[0, 2\), got values in \[0, 2\]"):
        segment_reduce(values, ids, 2, "sum")
    with pytest.raises(ValueError, match="reduce must be one of"):
        segment_reduce(values, ids, 3, "prod")
    with pytest.raises(ValueError, match="segment_ids has 3 entries but values has 4 rows"):
        segment_reduce(values, ids[:3], 3, "sum")
    with pytest.raises(ValueError, match="1-D int64"):
        segment_reduce(values, ids.float(), 3, "sum")


# ------------------------------------------------------------------------------- missing dependencies

def test_missing_fast_libraries_warn_once_and_fall_back_to_torch(monkeypatch):
    fps_module = importlib.import_module("pcmae.ops.fps")
    checks = importlib.import_module("pcmae.ops._checks")
    monkeypatch.setattr(checks, "_warned", set())
    monkeypatch.setattr(fps_module, "fpsample", None)
    monkeypatch.setattr(knn_module, "KDTree", None)
    xyz = torch.randn(1, 3000, 3, generator=generator(14))
    with pytest.warns(RuntimeWarning, match="fpsample is not installed"):
        picks = farthest_point_sample(xyz, 64)
    assert torch.equal(picks, farthest_point_sample_reference(xyz, 64))
    with pytest.warns(RuntimeWarning, match="pykdtree is not installed"):
        dist2, idx = knn(xyz[:, :100], xyz, 8)
    assert torch.equal(idx, knn_reference(xyz[:, :100], xyz, 8)[1])
    with pytest.raises(ImportError, match="pip install fpsample"):
        farthest_point_sample(xyz, 64, backend="fpsample")
    with pytest.raises(ImportError, match="pip install pykdtree"):
        knn(xyz, xyz, 8, backend="kdtree")


# ----------------------------------------------------------------------------------------------- CUDA

@CUDA
def test_cuda_paths_equal_cpu():
    g = generator(13)
    xyz = torch.randn(4, 3000, 3, generator=g)
    assert torch.equal(farthest_point_sample(xyz.cuda(), 256).cpu(), farthest_point_sample_reference(xyz, 256))
    query = xyz[:, :300]
    d_cpu, i_cpu = knn(query, xyz, 16)
    d_gpu, i_gpu = knn(query.cuda(), xyz.cuda(), 16)
    assert torch.equal(i_gpu.cpu(), i_cpu)
    torch.testing.assert_close(d_gpu.cpu(), d_cpu)
    y = torch.randn(4, 2000, 3, generator=g)
    torch.testing.assert_close(chamfer_distance(xyz.cuda(), y.cuda()).cpu(), chamfer_distance(xyz, y))


# ------------------------------------------------------------------------------------------ benchmark

def load_benchmark_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("pcmae_benchmark_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_cli_prints_one_row_per_implementation_and_pcmae_matches_its_reference():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(repo / "tools" / "benchmark.py"), "--sections", "ops",
                             "--sizes", "300", "--repeats", "1", "--threads", "1"], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    header, body = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]
    same = header.index("= pcmae reference")
    impl = header.index("implementation")
    ops = {r[header.index("op")] for r in body}
    assert ops == {"FPS", "kNN", "Chamfer-L2"}
    assert {r[header.index("threads")] for r in body} == {"1"}
    assert "pykdtree (build + query, raw)" in {r[impl] for r in body}
    pcmae_rows = [r for r in body if r[impl].startswith("pcmae")]
    assert len(pcmae_rows) >= 8
    assert all(r[same] == "yes" or r[same].startswith("yes (") or r[same] == "(is the reference)" for r in pcmae_rows)
    chamfer = next(r for r in body if r[impl] == "pcmae chamfer_distance (auto)")
    assert chamfer[same].startswith("yes (loss rel diff") and "0 of 600 point gradients differ" in chamfer[same]
    assert all(float(r[header.index("median ms")]) > 0 for r in body if r[header.index("median ms")] != "-")


def test_benchmark_chamfer_past_the_reference_limit_checks_sampled_points(monkeypatch):
    """Where the full reference is skipped, sampled points are checked by brute force, and a wrong answer shows."""
    tool = load_benchmark_tool()
    monkeypatch.setattr(tool, "TORCH_PAIRS_LIMIT_CPU", 0)
    monkeypatch.setattr(tool, "DENSE_LIMIT_BYTES", 0)
    monkeypatch.setattr(tool, "CHAMFER_SAMPLES", 300)
    g = generator(8)
    xyz, other = torch.rand(1, 3000, 3, generator=g), torch.rand(1, 3000, 3, generator=g)
    rows = {r["implementation"]: r for r in tool.bench_chamfer(xyz, other, 1, 1)}
    assert rows["pcmae chamfer_distance (auto)"]["= pcmae reference"] == \
        "yes (2 x 300 sampled points, max diff 0.0e+00)"
    assert rows["pcmae backend='torch' (chunked)"]["note"].startswith("skipped")
    right = tool.nearest_sq_dist
    monkeypatch.setattr(tool, "nearest_sq_dist", lambda a, b: (right(a, b)[0] * 1.001, right(a, b)[1]))
    assert tool.sampled_nearest_check(xyz, other, 50, seed=0).startswith("NO (2 x 50 sampled points")


def test_benchmark_timing_rule_warm_up_interleaved_median_and_cpu_time():
    import time

    from benchmarks.timing import median_wall_and_cpu_ms, torch_threads

    calls = []

    def sleeper():
        calls.append("sleep")
        time.sleep(0.02)

    def spinner():
        calls.append("spin")
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    wall, cpu = median_wall_and_cpu_ms({"sleep": sleeper, "spin": spinner}, repeats=3)
    assert calls == ["sleep", "spin"] + ["sleep", "spin"] * 3  # one warm-up each, then interleaved
    assert wall["sleep"] >= 19 and cpu["sleep"] < 10  # waiting costs wall time, not CPU time
    assert cpu["spin"] >= 19
    with torch_threads(1) as used:
        assert used == 1 == torch.get_num_threads()
