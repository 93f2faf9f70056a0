"""farthest_point_sample(mode="pointnet2_ops") against a line-by-line transcription of pointnet2_ops' CUDA kernel.

``kernel_fps`` below transcribes ``furthest_point_sampling_kernel`` (erikwijmans/Pointnet2_PyTorch b5ceb6d9,
pointnet2_ops_lib/pointnet2_ops/_ext-src/src/sampling_gpu.cu lines 59-173, with ``opt_n_threads`` of
include/cuda_utils.h and the 1e10 start of src/sampling.cpp): threads are a loop, shared memory a list. It
shares no code with pcmae.ops.fps, which instead reorders the cloud and masks skipped points.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pcmae.ops.fps import farthest_point_sample, farthest_point_sample_reference

BACKENDS = ["torch", "pruned", "fpsample", "bucket", "auto"]
EXACT_ON_TIES = ["torch", "pruned", "fpsample", "auto"]  # "bucket" may take the other of two tied points


def kernel_fps(cloud: np.ndarray, m: int) -> list:
    """cloud (n, 3) float32 -> the m indices pointnet2_ops' kernel writes (float32 math, no FMA contraction)."""
    n = cloud.shape[0]
    block_size = max(min(1 << int(math.log(n) / math.log(2.0)), 512), 1)  # opt_n_threads
    temp = [np.float32(1e10)] * n  # torch::full(..., 1e10) in sampling.cpp
    idxs = [0] * m
    old = 0
    x, y, z = (cloud[:, i].tolist() for i in range(3))
    x = [np.float32(v) for v in x]
    y = [np.float32(v) for v in y]
    z = [np.float32(v) for v in z]
    for j in range(1, m):
        dists, dists_i = [], []
        x1, y1, z1 = x[old], y[old], z[old]
        for tid in range(block_size):
            besti, best = 0, np.float32(-1)
            for k in range(tid, n, block_size):
                mag = (x[k] * x[k]) + (y[k] * y[k]) + (z[k] * z[k])
                if float(mag) <= 1e-3:  # float promoted to double against the double literal
                    continue
                d = (x[k] - x1) * (x[k] - x1) + (y[k] - y1) * (y[k] - y1) + (z[k] - z1) * (z[k] - z1)
                d2 = min(d, temp[k])
                temp[k] = d2
                besti = k if d2 > best else besti
                best = d2 if d2 > best else best
            dists.append(best)
            dists_i.append(besti)
        half = block_size // 2
        while half >= 1:  # __update(dists, dists_i, tid, tid + half) for tid < half
            for tid in range(half):
                v1, v2 = dists[tid], dists[tid + half]
                i1, i2 = dists_i[tid], dists_i[tid + half]
                dists[tid] = max(v1, v2)
                dists_i[tid] = i2 if v2 > v1 else i1
            half //= 2
        old = dists_i[0]
        idxs[j] = old
    return idxs


def unit_sphere_cloud(n: int, seed: int, near_origin: int) -> torch.Tensor:
    """(1, n, 3) float32 object-like cloud normalised to the unit sphere, ``near_origin`` points within 0.0316
    of the origin (not index 0) - what a shape through its own centroid gives."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, 3, generator=g)
    pts /= pts.norm(dim=1, keepdim=True).max()
    inner = 1 + torch.randperm(n - 1, generator=g)[:near_origin]
    pts[inner] = (torch.rand(near_origin, 3, generator=g) - 0.5) * 0.03
    return pts[None].contiguous()


def lattice_cloud(side: int, copies: int = 1) -> torch.Tensor:
    """(1, side^3 * copies, 3): an integer lattice centred on the origin (point at the origin included), each
    point ``copies`` times: exact distance ties everywhere and, past side^3 samples, an exhausted cloud."""
    r = torch.arange(side, dtype=torch.float32) - (side - 1) // 2
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3) * 0.25
    return grid.repeat(copies, 1)[None].contiguous()


def check_all_backends(xyz: torch.Tensor, m: int, backends=BACKENDS) -> torch.Tensor:
    expected = torch.tensor([kernel_fps(c.float().numpy(), m) for c in xyz])
    for backend in backends:
        got = farthest_point_sample(xyz, m, backend=backend, mode="pointnet2_ops")
        assert torch.equal(got, expected), backend
    return expected


@pytest.mark.parametrize("n,m,near", [(700, 48, 40), (300, 64, 5), (37, 20, 3)])
def test_near_origin_points_are_skipped_as_the_kernel_does(n, m, near):
    xyz = unit_sphere_cloud(n, seed=n, near_origin=near)
    picks = check_all_backends(xyz, m)
    skipped = set((xyz[0].norm(dim=1) ** 2 <= 1e-3).nonzero().flatten().tolist()) - {0}
    assert skipped and not skipped & set(picks[0].tolist())
    # plain FPS does pick them (they are far from the surface points once the cloud is well covered)
    assert skipped & set(farthest_point_sample_reference(xyz, n)[0].tolist())


@pytest.mark.parametrize("side,copies,m", [(4, 1, 64), (3, 2, 40), (5, 1, 60)])
def test_ties_follow_the_kernels_thread_reduction_order(side, copies, m):
    """Lattices tie on every step; past side^3 samples (and with duplicates) every distance is 0. The kernel's
    winners are not the lowest indices: exact mode picks differently on these clouds."""
    xyz = lattice_cloud(side, copies)
    picks = check_all_backends(xyz, m, EXACT_ON_TIES)
    assert not torch.equal(picks, farthest_point_sample_reference(xyz, m))


def test_magnitude_threshold_is_compared_in_double():
    """A point whose float32 x*x + y*y is float32(1e-3) = 0.00100000005 is NOT skipped (the kernel compares the
    float with the double 1e-3); a float32 comparison would skip it."""
    target = np.float32(1e-3)
    found = None
    for x in np.linspace(0.01, 0.03, 2000, dtype=np.float32):  # search a float32 pair hitting target exactly
        y0 = np.float32(math.sqrt(float(target) - float(x) * float(x)))
        for y in (y0, np.nextafter(y0, np.float32(1)), np.nextafter(y0, np.float32(0))):
            if x * x + y * y == target:
                found = (float(x), float(y))
                break
        if found:
            break
    assert found is not None and float(target) > 1e-3
    cloud = torch.tensor([[0.5, 0.5, 0.5], [*found, 0.0], [0.01, 0.01, 0.01], [-0.5, -0.5, 0.5]])[None]
    picks = check_all_backends(cloud, 4)
    assert 1 in picks[0].tolist() and 2 not in picks[0].tolist()


def test_degenerate_clouds():
    # every point near the origin: index 0 only, as the kernel's besti = 0
    tiny = torch.full((1, 9, 3), 0.01)
    tiny[0, :, 0] += torch.arange(9) * 1e-3
    assert check_all_backends(tiny, 5, EXACT_ON_TIES).tolist() == [[0, 0, 0, 0, 0]]
    # index 0 near the origin is still the first pick; once the others are exhausted the kernel repeats the
    # first of them in its tie order
    cloud = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0.001, 0]])[None]
    picks = check_all_backends(cloud, 5, EXACT_ON_TIES)
    assert picks[0, 0] == 0 and 4 not in picks[0].tolist()
    # a batch mixing both, float64 input (computed in float32, as the kernel), m == n
    both = torch.cat([unit_sphere_cloud(27, seed=1, near_origin=6), lattice_cloud(3)], 0)
    picks = check_all_backends(both.double(), 27, EXACT_ON_TIES)
    assert picks.shape == (2, 27)


def test_distances_start_at_1e10():
    """Points over 1e5 apart tie at 1e10 in the kernel; torch and pruned reproduce it, fpsample cannot."""
    g = torch.Generator().manual_seed(3)
    xyz = (torch.rand(1, 200, 3, generator=g) - 0.5) * 4e5
    expected = torch.tensor([kernel_fps(xyz[0].numpy(), 30)])
    for backend in ("torch", "pruned", "auto"):
        assert torch.equal(farthest_point_sample(xyz, 30, backend=backend, mode="pointnet2_ops"), expected)
    assert not torch.equal(farthest_point_sample(xyz, 30), expected)
    with pytest.raises(ValueError, match="cannot cap distances at 1e10"):
        farthest_point_sample(xyz, 30, backend="fpsample", mode="pointnet2_ops")


def test_default_mode_is_unchanged_and_unknown_mode_is_refused():
    xyz = unit_sphere_cloud(300, seed=4, near_origin=5)
    assert torch.equal(farthest_point_sample(xyz, 64), farthest_point_sample(xyz, 64, mode="exact"))
    assert torch.equal(farthest_point_sample(xyz, 64), farthest_point_sample_reference(xyz, 64))
    with pytest.raises(ValueError, match="mode must be one of"):
        farthest_point_sample(xyz, 4, mode="cuda")
