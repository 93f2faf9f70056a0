"""Point-cloud corruptions: the 15 of ModelNet40-C (objects) and LiDAR-sweep ones after Robo3D.

Object corruptions (``OBJECT_CORRUPTIONS``): ``fn(points (N, 3), severity 1..5, generator) -> (M, 3)``, after
Sun et al., "Benchmarking Robustness of 3D Point Cloud Recognition Against Common Corruptions" (2022), with
the per-severity parameters of their ``data/generate_c.py`` (``[s1, ..., s5]`` below; counts are given for
N = 1024 points, ModelNet40-C's size, and scale with N/1024 for other sizes). "normalise" means their bbox
normalisation (``bbox_normalize``: centre the bounding box, longest side 2), applied where they apply it.

=================== ==========================================================================================
occlusion           visible points from a camera at distance 3, elevation U(30, 60) deg, azimuth U(2 pi s/5 -
                    pi/5, 2 pi s/5 + pi/5) (severity picks the side, as theirs); normalise. See ``visible_mask``.
lidar               the points visible from a sensor at distance 5, elevation 22.5 deg, azimuth as occlusion,
                    kept only within the middle half of each 1-deg elevation band and snapped onto its centre
                    line (their ``simulate_lidar``); not normalised.
density_inc         [1..5] patches of the 100 nearest points; each patch point gets one new point on the segment
                    to one of its 3 nearest patch neighbours: +100 per patch (density doubled locally).
density             [1..5] patches of the 100 nearest remaining points, 75 of each patch removed.
cutout              [2, 3, 5, 7, 10] patches of the 30 nearest remaining points removed.
uniform             + U(-c, c) per coordinate, c = [0.01, 0.02, 0.03, 0.04, 0.05]; normalise.
gaussian            + N(0, c^2), c = [0.01, 0.015, 0.02, 0.025, 0.03]; clipped to [-1, 1] (not normalised).
impulse             [N//30, N//25, N//20, N//15, N//10] points moved by +-0.1 on every coordinate; normalise.
upsampling          [N//5, N//4, N//3, N//2, N] copies of distinct points + U(-0.05, 0.05); appended; normalise.
background          [N//45, N//40, N//35, N//30, N//20] points U(-1, 1)^3 appended; normalise.
rotation            p @ Rx(a) Ry(b) Rz(g), |angles| ~ U(c - 2.5, c + 2.5) deg, c = [2.5, 5, 7.5, 10, 15]; normalise.
shear               p @ [[1, 0, b], [d, 1, e], [f, 0, 1]], |b|, |d|, |e|, |f| ~ U(c - 0.05, c + 0.05),
                    c = [0.05, 0.1, 0.15, 0.2, 0.25], random signs; normalise.
distortion          free-form deformation, 5x5x5 Bernstein lattice on [-1, 1]^3, control displacements
                    U(-c, c) in lattice units (x2 in space), c = [0.1, 0.2, 0.3, 0.4, 0.5]; normalise.
distortion_rbf      RBF interpolation (multiquadric sqrt(r^2 + 0.5^2) + affine) moving a 5x5x5 grid on
                    [-1, 1]^3 by c = [0.025, 0.05, 0.075, 0.1, 0.125] in random directions; normalise.
distortion_rbf_inv  the same with the inverse multiquadric 1 / sqrt(r^2 + 0.5^2).
=================== ==========================================================================================

Occlusion and LiDAR without meshes: ModelNet40-C renders the mesh's depth image (open3d) and back-projects it;
we only have points, so ``visible_mask`` z-buffers them: each point is projected through a pinhole camera
onto a G x G image grid (G = sqrt(N)/2, about 3 visible points per cell), the buffer keeps the smallest depth
per cell, a 3x3 min-filter closes holes left by sparse sampling, and a point is visible when its depth is
within 3 cell widths of that minimum (on a sampled
sphere this keeps every point whose normal is within 72 deg of the view ray and none facing away). The result is the visible subset of the input points (about half),
not a re-sampled depth image, so ``occlusion`` / ``lidar`` return M < N points (theirs resample to 1024 /
768 with replacement; ``CorruptedObjects`` resamples). The frame is y-up (ModelNet40 as Point-MAE reads it).

LiDAR-sweep corruptions (``LIDAR_CORRUPTIONS``): ``fn(points (N, C), severity, generator, ring_column=None)
-> (M, C)`` on sweeps in the sensor frame (metres, columns x, y, z, then features; column 3 is taken as the
intensity when C > 3 and it is not the ring column). Rows are kept, dropped or moved; the extra columns of a
kept row stay with it. Robo3D's three levels (light, moderate, heavy) are severities 1, 3 and 5 here.

=============== =================================================================================================
beam_drop       drop [1/4, 3/8, 1/2, 5/8, 3/4] of the rings (distinct, random; Robo3D drops 16/32/48 of 64).
fog             extinction alpha = [0.005, 0.01, 0.02, 0.03, 0.06] /m (MOR = ln 20 / alpha, 600 .. 50 m): every
                intensity x exp(-2 alpha r) (Hahner's hard-target term); a return is scattered with probability
                1 - exp(-alpha r), moved along its ray to U(0.1, 1) x min(r, 10 m) with intensity x U(0, 1).
snow            [2, 4, 6, 8, 10] % of returns hit a flake: half are lost, half become a near return on the ray at
                U(0.1, 1) x min(r, 15 m) with intensity x U(0, 0.5).
crosstalk       [0.6, 0.7, 0.8, 0.9, 1.0] % of the points displaced by N(0, 3 m) per coordinate (Robo3D).
motion_blur     uncompensated ego motion: a point at azimuth phi is measured t = (phi + pi) / (2 pi) x 0.1 s
                into the 10 Hz sweep and shifted by -v t, speed v = [5, 10, 15, 20, 25] m/s, random heading.
beam_reduction  cross-sensor: keep rings (ring % 4 != 1, % 2 == 0, % 3 == 0, % 4 == 0, % 8 == 0) (64 -> 48,
                32, 22, 16, 8), then every 2nd point along azimuth in each ring (Robo3D's half resolution).
=============== =================================================================================================

Rings: the ``ring_column`` if given, else derived from elevation angles (``derive_rings``: sorted elevations
split where consecutive ones differ by more than 0.15 deg; fine for un-compensated sweeps of real sensors).

Everything is pure torch, on the points' device, reproducible through the ``torch.Generator`` (which must be
on that device); ``corrupt(points, name, severity, seed)`` makes one.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from pcmae.registry import closest

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_POINTS = 1024  # ModelNet40-C's cloud size; patch sizes scale with N / 1024


# ----------------------------------------------------------------------------------------------- helpers
def _check(points: torch.Tensor, severity: int, generator: torch.Generator, name: str, min_cols: int = 3,
           exact_cols: bool = True) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or (
            points.shape[1] != min_cols if exact_cols else points.shape[1] < min_cols):
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        want = f"(N, {min_cols})" if exact_cols else f"(N, C >= {min_cols})"
        raise ValueError(f"corruption {name!r}: points must be a {want} tensor, got {shape}")
    if not points.is_floating_point():
        raise ValueError(f"corruption {name!r}: points must be floating point, got {points.dtype}")
    if len(points) == 0:
        raise ValueError(f"corruption {name!r}: empty point cloud")
    if severity not in SEVERITIES:
        raise ValueError(f"corruption {name!r}: severity must be 1..5, got {severity!r}")
    if not isinstance(generator, torch.Generator) or generator.device.type != points.device.type:
        where = generator.device if isinstance(generator, torch.Generator) else type(generator).__name__
        raise ValueError(f"corruption {name!r}: need a torch.Generator on the points' device {points.device}, "
                         f"got {where}")


def _uniform(generator, shape, low, high, like: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def _signs(generator, shape, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


def _choice(n: int, k: int, generator, device) -> torch.Tensor:
    """``k`` distinct indices of ``range(n)``."""
    return torch.randperm(n, generator=generator, device=device)[:k]


def _scaled(count: int, n: int) -> int:
    return max(1, round(count * n / REFERENCE_POINTS))


def bbox_normalize(points: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> (N, 3): bounding box centred at 0, its longest side scaled to 2 (ModelNet40-C's normalize)."""
    low, high = points.amin(0), points.amax(0)
    extent = (high - low).amax()
    return (points - (high + low) / 2) * (2.0 / extent.clamp_min(1e-12))


# ----------------------------------------------------------------------------------------------- noise
def uniform(points, severity, generator):
    """+ U(-c, c) per coordinate, c = [0.01 .. 0.05]; bbox-normalised. (N, 3) -> (N, 3)."""
    _check(points, severity, generator, "uniform")
    c = [0.01, 0.02, 0.03, 0.04, 0.05][severity - 1]
    return bbox_normalize(points + _uniform(generator, points.shape, -c, c, points))


def gaussian(points, severity, generator):
    """+ N(0, c^2), c = [0.01, 0.015, 0.02, 0.025, 0.03], clipped to [-1, 1]. (N, 3) -> (N, 3)."""
    _check(points, severity, generator, "gaussian")
    c = [0.01, 0.015, 0.02, 0.025, 0.03][severity - 1]
    noise = torch.randn(points.shape, generator=generator, device=points.device, dtype=points.dtype) * c
    return (points + noise).clamp(-1.0, 1.0)


def impulse(points, severity, generator):
    """N // [30, 25, 20, 15, 10] distinct points moved by +-0.1 on each coordinate; bbox-normalised."""
    _check(points, severity, generator, "impulse")
    n = len(points)
    count = n // [30, 25, 20, 15, 10][severity - 1]
    index = _choice(n, count, generator, points.device)
    out = points.clone()
    out[index] += _signs(generator, (count, 3), points) * 0.1
    return bbox_normalize(out)


def upsampling(points, severity, generator):
    """Append N // [5, 4, 3, 2, 1] jittered copies (U(-0.05, 0.05)) of distinct points; bbox-normalised."""
    _check(points, severity, generator, "upsampling")
    n = len(points)
    count = n // [5, 4, 3, 2, 1][severity - 1]
    index = _choice(n, count, generator, points.device)
    added = points[index] + _uniform(generator, (count, 3), -0.05, 0.05, points)
    return bbox_normalize(torch.cat([points, added]))


def background(points, severity, generator):
    """Append N // [45, 40, 35, 30, 20] points uniform in [-1, 1]^3; bbox-normalised."""
    _check(points, severity, generator, "background")
    count = len(points) // [45, 40, 35, 30, 20][severity - 1]
    return bbox_normalize(torch.cat([points, _uniform(generator, (count, 3), -1.0, 1.0, points)]))


# ----------------------------------------------------------------------------------------------- transforms
def _axis_rotation(angle: torch.Tensor, axis: int) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    rows = {0: [[one, zero, zero], [zero, c, -s], [zero, s, c]],
            1: [[c, zero, s], [zero, one, zero], [-s, zero, c]],
            2: [[c, -s, zero], [s, c, zero], [zero, zero, one]]}[axis]
    return torch.stack([torch.stack(r) for r in rows])


def rotation_matrix(severity: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(3, 3) Rx(a) @ Ry(b) @ Rz(g), each |angle| ~ U(c - 2.5, c + 2.5) deg with a random sign,
    c = [2.5, 5, 7.5, 10, 15][severity - 1]; applied to row vectors as ``points @ R``."""
    c = [2.5, 5.0, 7.5, 10.0, 15.0][severity - 1]
    angles = _uniform(generator, (3,), c - 2.5, c + 2.5, like) * _signs(generator, (3,), like) * math.pi / 180
    return _axis_rotation(angles[0], 0) @ _axis_rotation(angles[1], 1) @ _axis_rotation(angles[2], 2)


def rotation(points, severity, generator):
    """``points @ rotation_matrix(...)``; bbox-normalised. (N, 3) -> (N, 3)."""
    _check(points, severity, generator, "rotation")
    return bbox_normalize(points @ rotation_matrix(severity, generator, points))


def shear_matrix(severity: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(3, 3) [[1, 0, b], [d, 1, e], [f, 0, 1]] (ModelNet40-C's form), |b|, |d|, |e|, |f| ~ U(c - 0.05,
    c + 0.05) with random signs, c = [0.05, 0.1, 0.15, 0.2, 0.25][severity - 1]."""
    c = [0.05, 0.1, 0.15, 0.2, 0.25][severity - 1]
    b, d, e, f = _uniform(generator, (4,), c - 0.05, c + 0.05, like) * _signs(generator, (4,), like)
    one, zero = torch.ones_like(b), torch.zeros_like(b)
    return torch.stack([torch.stack([one, zero, b]), torch.stack([d, one, e]), torch.stack([f, zero, one])])


def shear(points, severity, generator):
    """``points @ shear_matrix(...)``; bbox-normalised. (N, 3) -> (N, 3)."""
    _check(points, severity, generator, "shear")
    return bbox_normalize(points @ shear_matrix(severity, generator, points))


# ----------------------------------------------------------------------------------------------- distortions
def ffd_deform(points: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Free-form deformation (PyGeM's FFD with box origin -1, length 2) of points (N, 3) by control-point
    displacements (3, L, L, L) in lattice units: p + 2 * sum_ijk B_i(u) B_j(v) B_k(w) mu_ijk, Bernstein
    polynomials of degree L - 1 on u = (p + 1) / 2. Points outside [-1, 1]^3 are left unchanged."""
    lattice = displacement.shape[1]
    u = (points + 1) / 2
    inside = ((u >= 0) & (u <= 1)).all(1, keepdim=True)
    i = torch.arange(lattice, device=points.device, dtype=points.dtype)
    binom = torch.tensor([math.comb(lattice - 1, k) for k in range(lattice)], device=points.device,
                         dtype=points.dtype)
    uc = u.clamp(0, 1)[..., None]  # (N, 3, 1)
    bern = binom * uc ** i * (1 - uc) ** (lattice - 1 - i)  # (N, 3, L): per axis
    shift = torch.einsum("ni,nj,nk,cijk->nc", bern[:, 0], bern[:, 1], bern[:, 2], displacement.to(points))
    return torch.where(inside, points + 2 * shift, points)


def distortion(points, severity, generator):
    """FFD on a 5x5x5 lattice, displacements U(-c, c), c = [0.1 .. 0.5]; bbox-normalised. (N, 3) -> (N, 3)."""
    _check(points, severity, generator, "distortion")
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    return bbox_normalize(ffd_deform(points, _uniform(generator, (3, 5, 5, 5), -c, c, points)))


RBF_KERNELS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "multiquadric": lambda r: torch.sqrt(r ** 2 + 0.5 ** 2),  # PyGeM multi_quadratic_biharmonic_spline, radius 0.5
    "inverse_multiquadric": lambda r: 1 / torch.sqrt(r ** 2 + 0.5 ** 2),
}


def rbf_deform(points: torch.Tensor, source: torch.Tensor, target: torch.Tensor, kernel: str) -> torch.Tensor:
    """RBF interpolation (PyGeM's RBF): f(x) = sum_i w_i phi(|x - s_i|) + a + A x with f(source) = target
    exactly and the affine side conditions; points (N, 3), source / target (K, 3) -> (N, 3). Solved in float64."""
    phi = RBF_KERNELS[kernel]
    src, tgt, pts = source.double(), target.double(), points.double()
    k = len(src)
    system = torch.zeros(k + 4, k + 4, dtype=torch.float64, device=points.device)
    system[:k, :k] = phi(torch.cdist(src, src))
    system[:k, k] = 1
    system[k, :k] = 1
    system[:k, k + 1:] = src
    system[k + 1:, :k] = src.T
    rhs = torch.zeros(k + 4, 3, dtype=torch.float64, device=points.device)
    rhs[:k] = tgt
    weights = torch.linalg.solve(system, rhs)
    basis = torch.cat([phi(torch.cdist(pts, src)), torch.ones_like(pts[:, :1]), pts], 1)
    return (basis @ weights).to(points.dtype)


def rbf_controls(severity: int, generator: torch.Generator, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 5x5x5 grid on [-1, 1]^3 (125, 3) and that grid moved by c = [0.025 .. 0.125] along directions
    (cos a sin g, sin a sin g, cos g), a, g ~ U(-pi, pi) (as ModelNet40-C)."""
    axis = torch.linspace(-1, 1, 5, device=like.device, dtype=like.dtype)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    c = [0.025, 0.05, 0.075, 0.1, 0.125][severity - 1]
    alpha, gamma = _uniform(generator, (2, len(grid)), -math.pi, math.pi, like)
    direction = torch.stack([torch.cos(alpha) * torch.sin(gamma), torch.sin(alpha) * torch.sin(gamma),
                             torch.cos(gamma)], 1)
    return grid, grid + c * direction


def distortion_rbf(points, severity, generator):
    """Multiquadric RBF warp of ``rbf_controls``; bbox-normalised. (N, 3) -> (N, 3)."""
    _check(points, severity, generator, "distortion_rbf")
    return bbox_normalize(rbf_deform(points, *rbf_controls(severity, generator, points), "multiquadric"))


def distortion_rbf_inv(points, severity, generator):
    """Inverse-multiquadric RBF warp of ``rbf_controls``; bbox-normalised. (N, 3) -> (N, 3)."""
    _check(points, severity, generator, "distortion_rbf_inv")
    return bbox_normalize(rbf_deform(points, *rbf_controls(severity, generator, points), "inverse_multiquadric"))


# ----------------------------------------------------------------------------------------------- point counts
def knn_patches(points: torch.Tensor, count: int, size: int, generator: torch.Generator):
    """``count`` disjoint patches: each the ``size`` nearest still-unused points of a random unused centre.

    Returns (patches (count, size) long indices, centres (count, 3), radii (count,)): a patch holds every
    point that was unused when it was cut and lies closer than its radius (its size-th neighbour distance).
    """
    n = len(points)
    if count * size > n:
        raise ValueError(f"need {count} patches of {size} points but the cloud has only {n}")
    free = torch.ones(n, dtype=torch.bool, device=points.device)
    patches, centres, radii = [], [], []
    for _ in range(count):
        candidates = free.nonzero().squeeze(1)
        centre = points[candidates[torch.randint(len(candidates), (1,), generator=generator,
                                                 device=points.device)]]
        dist = torch.where(free, (points - centre).norm(dim=1), torch.full_like(points[:, 0], math.inf))
        nearest = dist.topk(size, largest=False)
        patches.append(nearest.indices)
        centres.append(centre[0])
        radii.append(nearest.values.max())
        free[nearest.indices] = False
    return torch.stack(patches), torch.stack(centres), torch.stack(radii)


def cutout(points, severity, generator):
    """Remove [2, 3, 5, 7, 10] disjoint patches of 30 nearest points (x N / 1024). (N, 3) -> (N - 30 s', 3)."""
    _check(points, severity, generator, "cutout")
    patches, _, _ = knn_patches(points, [2, 3, 5, 7, 10][severity - 1], _scaled(30, len(points)), generator)
    keep = torch.ones(len(points), dtype=torch.bool, device=points.device)
    keep[patches.reshape(-1)] = False
    return points[keep]


def density(points, severity, generator):
    """In [1..5] patches of 100 nearest points (x N / 1024) remove 3/4 of each at random."""
    _check(points, severity, generator, "density")
    size = _scaled(100, len(points))
    drop = int(0.75 * size)
    keep = torch.ones(len(points), dtype=torch.bool, device=points.device)
    for _ in range(severity):  # ModelNet40-C: one patch at a time among the points still there
        remaining = keep.nonzero().squeeze(1)
        patch, _, _ = knn_patches(points[remaining], 1, size, generator)
        keep[remaining[patch[0][_choice(size, drop, generator, points.device)]]] = False
    return points[keep]


def density_inc(points, severity, generator):
    """Double the density of [1..5] disjoint patches of 100 nearest points (x N / 1024): every patch point gets
    one new point at U(0, 1) along the segment to one of its 3 nearest patch neighbours. Appended, not
    normalised: (N, 3) -> (N + s * 100 N / 1024, 3)."""
    _check(points, severity, generator, "density_inc")
    size = _scaled(100, len(points))
    if size < 2:
        raise ValueError(f"corruption 'density_inc': needs at least 16 points, got {len(points)}")
    patches, _, _ = knn_patches(points, severity, size, generator)
    patch = points[patches]  # (s, k, 3)
    dist = torch.cdist(patch, patch)
    dist.diagonal(dim1=1, dim2=2).fill_(math.inf)
    near = dist.topk(min(3, size - 1), dim=2, largest=False).indices  # (s, k, 3)
    pick = torch.randint(near.shape[2], near.shape[:2] + (1,), generator=generator, device=points.device)
    partner = torch.gather(patch, 1, torch.gather(near, 2, pick).expand(-1, -1, 3))
    t = torch.rand(patch.shape[:2] + (1,), generator=generator, device=points.device, dtype=points.dtype)
    return torch.cat([points, (patch + t * (partner - patch)).reshape(-1, 3)])


# ----------------------------------------------------------------------------------------------- visibility
def visible_mask(points: torch.Tensor, eye: torch.Tensor, cell_tolerance: float = 3.0) -> torch.Tensor:
    """(N,) bool: which of points (N, 3) a pinhole camera at ``eye`` (3,) looking at the bbox centre sees.

    Z-buffer on a G x G grid of the image plane, G = max(8, round(sqrt(N) / 2)); a point is visible when its
    view depth is within ``cell_tolerance`` cell widths (at its depth) of the smallest depth in its 3x3 cell
    neighbourhood (the min-filter stops far points showing through holes of a sparse front surface).
    """
    target = (points.amin(0) + points.amax(0)) / 2
    forward = F.normalize(target - eye, dim=0)
    hint = torch.zeros_like(forward)
    hint[1 if forward[1].abs() < 0.9 else 0] = 1
    right = F.normalize(torch.linalg.cross(forward, hint), dim=0)
    up = torch.linalg.cross(right, forward)
    rel = points - eye
    depth = rel @ forward
    if bool((depth <= 0).any()):
        raise ValueError("visible_mask: the camera is inside the point cloud's extent")
    u, v = (rel @ right) / depth, (rel @ up) / depth
    grid = max(8, round(math.sqrt(len(points)) / 2))
    span = torch.maximum(u.max() - u.min(), v.max() - v.min()).clamp_min(1e-12)
    cell = span / grid
    iu = ((u - u.min()) / cell).long().clamp(0, grid - 1)
    iv = ((v - v.min()) / cell).long().clamp(0, grid - 1)
    flat = iu * grid + iv
    buffer = torch.full((grid * grid,), math.inf, device=points.device, dtype=points.dtype)
    buffer = buffer.scatter_reduce(0, flat, depth, reduce="amin")
    nearest = -F.max_pool2d(-buffer.view(1, 1, grid, grid), 3, stride=1, padding=1).view(-1)
    return depth <= nearest[flat] + cell_tolerance * cell * depth


def _viewpoint(azimuth: torch.Tensor, elevation: torch.Tensor, distance: float) -> torch.Tensor:
    """y-up: a point at ``distance`` from the origin seen under (azimuth, elevation) radians."""
    return distance * torch.stack([torch.cos(elevation) * torch.cos(azimuth), torch.sin(elevation),
                                   torch.cos(elevation) * torch.sin(azimuth)])


def occlusion_viewpoint(severity: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(3,) camera: distance 3, elevation U(30, 60) deg, azimuth U(2 pi s / 5 - pi / 5, 2 pi s / 5 + pi / 5)."""
    theta = 2 * math.pi * severity / 5
    azimuth = _uniform(generator, (), theta - math.pi / 5, theta + math.pi / 5, like)
    elevation = _uniform(generator, (), math.pi / 6, math.pi / 3, like)
    return _viewpoint(azimuth, elevation, 3.0)


def occlusion(points, severity, generator):
    """The points of the bbox-normalised cloud visible from ``occlusion_viewpoint``; bbox-normalised."""
    _check(points, severity, generator, "occlusion")
    points = bbox_normalize(points)
    return bbox_normalize(points[visible_mask(points, occlusion_viewpoint(severity, generator, points))])


def lidar_viewpoint(severity: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(3,) sensor: distance 5, elevation 22.5 deg, azimuth as ``occlusion_viewpoint``."""
    theta = 2 * math.pi * severity / 5
    azimuth = _uniform(generator, (), theta - math.pi / 5, theta + math.pi / 5, like)
    return _viewpoint(azimuth, torch.tensor(math.pi / 8, device=like.device, dtype=like.dtype), 5.0)


LIDAR_BEAM_DEG = 1.0


def lidar(points, severity, generator):
    """Visible points of the bbox-normalised cloud from ``lidar_viewpoint`` kept where their polar angle
    (from the sensor, about the vertical y axis) lies in the middle half of a 1-deg band, snapped onto the
    band's centre (range and azimuth kept). (N, 3) -> (M, 3), not re-normalised (as ModelNet40-C)."""
    _check(points, severity, generator, "lidar")
    points = bbox_normalize(points)
    sensor = lidar_viewpoint(severity, generator, points)
    rel = points[visible_mask(points, sensor)] - sensor
    radius = rel.norm(dim=1)
    polar = torch.atan2(torch.hypot(rel[:, 0], rel[:, 2]), rel[:, 1])
    azimuth = torch.atan2(rel[:, 2], rel[:, 0])
    delta = math.radians(LIDAR_BEAM_DEG)
    offset = (polar - polar.min()) / delta
    band, frac = offset.floor(), offset - offset.floor()
    keep = (frac >= 0.25) & (frac < 0.75)
    snapped = polar.min() + (band + 0.5) * delta
    ring = torch.stack([torch.sin(snapped) * torch.cos(azimuth), torch.cos(snapped),
                        torch.sin(snapped) * torch.sin(azimuth)], 1) * radius[:, None]
    return (ring + sensor)[keep]


OBJECT_CORRUPTIONS: Dict[str, Callable] = {
    "occlusion": occlusion, "lidar": lidar, "density_inc": density_inc, "density": density, "cutout": cutout,
    "uniform": uniform, "gaussian": gaussian, "impulse": impulse, "upsampling": upsampling,
    "background": background, "rotation": rotation, "shear": shear, "distortion": distortion,
    "distortion_rbf": distortion_rbf, "distortion_rbf_inv": distortion_rbf_inv,
}


# ----------------------------------------------------------------------------------------------- LiDAR sweeps
RING_GAP_DEG = 0.15
MAX_DERIVED_RINGS = 512


def derive_rings(points: torch.Tensor, gap_deg: float = RING_GAP_DEG) -> torch.Tensor:
    """(N,) long ring ids from elevation angles: sorted elevations split where they jump by > gap_deg;
    ring 0 is the lowest. Raises ValueError when that finds more than 512 rings (pass ring_column)."""
    elevation = torch.rad2deg(torch.atan2(points[:, 2], torch.hypot(points[:, 0], points[:, 1])))
    order = elevation.argsort()
    jumps = torch.zeros(len(points), dtype=torch.long, device=points.device)
    jumps[1:] = (elevation[order].diff() > gap_deg).long()
    rings = torch.empty_like(jumps)
    rings[order] = jumps.cumsum(0)
    if int(rings.max()) + 1 > MAX_DERIVED_RINGS:
        raise ValueError(f"cannot derive rings from elevation angles ({int(rings.max()) + 1} groups > "
                         f"{MAX_DERIVED_RINGS}): pass ring_column")
    return rings


def _rings(points: torch.Tensor, ring_column: Optional[int], name: str) -> torch.Tensor:
    if ring_column is None:
        return derive_rings(points)
    if not 3 <= ring_column < points.shape[1]:
        raise ValueError(f"corruption {name!r}: ring_column {ring_column} is not a feature column of "
                         f"{points.shape[1]}-column points")
    ring = points[:, ring_column]
    if not bool(torch.isfinite(ring).all()) or bool((ring < 0).any()):
        raise ValueError(f"corruption {name!r}: ring column {ring_column} has negative or non-finite values")
    return ring.round().long()


def _intensity_column(points: torch.Tensor, ring_column: Optional[int]) -> Optional[int]:
    return 3 if points.shape[1] > 3 and ring_column != 3 else None


def _check_sweep(points, severity, generator, name):
    _check(points, severity, generator, name, min_cols=3, exact_cols=False)


def beam_drop(points, severity, generator, ring_column=None):
    """Drop round(f R) of the R rings present, f = [1/4, 3/8, 1/2, 5/8, 3/4]. (N, C) -> (M, C)."""
    _check_sweep(points, severity, generator, "beam_drop")
    ring = _rings(points, ring_column, "beam_drop")
    present = ring.unique()
    count = round([0.25, 0.375, 0.5, 0.625, 0.75][severity - 1] * len(present))
    dropped = present[_choice(len(present), count, generator, points.device)]
    return points[~torch.isin(ring, dropped)]


def _along_ray(xyz: torch.Tensor, new_range: torch.Tensor) -> torch.Tensor:
    return xyz * (new_range / xyz.norm(dim=1).clamp_min(1e-12))[:, None]


def fog(points, severity, generator, ring_column=None):
    """Fog after Hahner et al. (simplified, see module table): attenuated intensities, scattered returns
    pulled towards the sensor. (N, C) -> (N, C)."""
    _check_sweep(points, severity, generator, "fog")
    alpha = [0.005, 0.01, 0.02, 0.03, 0.06][severity - 1]
    out = points.clone()
    r = points[:, :3].norm(dim=1)
    scattered = torch.rand(len(points), generator=generator, device=points.device,
                           dtype=points.dtype) < 1 - torch.exp(-alpha * r)
    near = _uniform(generator, (len(points),), 0.1, 1.0, points) * r.clamp_max(10.0)
    out[scattered, :3] = _along_ray(points[scattered, :3], near[scattered])
    column = _intensity_column(points, ring_column)
    if column is not None:
        out[:, column] = points[:, column] * torch.exp(-2 * alpha * r)
        out[scattered, column] *= _uniform(generator, (int(scattered.sum()),), 0.0, 1.0, points)
    return out


def snow(points, severity, generator, ring_column=None):
    """Snow (simplified): a fraction [2 .. 10] % of returns hit a flake; half of them are lost, half become
    near returns on their ray with weaker intensity. (N, C) -> (M, C)."""
    _check_sweep(points, severity, generator, "snow")
    fraction = [0.02, 0.04, 0.06, 0.08, 0.10][severity - 1]
    n = len(points)
    hit = _choice(n, round(fraction * n), generator, points.device)
    lost, flake = hit[: len(hit) // 2], hit[len(hit) // 2:]
    out = points.clone()
    r = points[flake, :3].norm(dim=1)
    out[flake, :3] = _along_ray(points[flake, :3], _uniform(generator, (len(flake),), 0.1, 1.0, points)
                                * r.clamp_max(15.0))
    column = _intensity_column(points, ring_column)
    if column is not None:
        out[flake, column] = points[flake, column] * _uniform(generator, (len(flake),), 0.0, 0.5, points)
    keep = torch.ones(n, dtype=torch.bool, device=points.device)
    keep[lost] = False
    return out[keep]


def crosstalk(points, severity, generator, ring_column=None):
    """[0.6 .. 1.0] % of the points (distinct) displaced by N(0, 3 m) per coordinate. (N, C) -> (N, C)."""
    _check_sweep(points, severity, generator, "crosstalk")
    fraction = [0.006, 0.007, 0.008, 0.009, 0.010][severity - 1]
    index = _choice(len(points), max(1, round(fraction * len(points))), generator, points.device)
    out = points.clone()
    out[index, :3] += 3.0 * torch.randn((len(index), 3), generator=generator, device=points.device,
                                        dtype=points.dtype)
    return out


SWEEP_SECONDS = 0.1


def motion_blur(points, severity, generator, ring_column=None):
    """Un-compensated ego motion: shift -v t, t = (azimuth + pi) / (2 pi) * 0.1 s, |v| = [5 .. 25] m/s,
    heading U(-pi, pi) in the x-y plane. (N, C) -> (N, C)."""
    _check_sweep(points, severity, generator, "motion_blur")
    speed = [5.0, 10.0, 15.0, 20.0, 25.0][severity - 1]
    heading = _uniform(generator, (), -math.pi, math.pi, points)
    velocity = speed * torch.stack([torch.cos(heading), torch.sin(heading), torch.zeros_like(heading)])
    t = (torch.atan2(points[:, 1], points[:, 0]) + math.pi) / (2 * math.pi) * SWEEP_SECONDS
    out = points.clone()
    out[:, :3] -= t[:, None] * velocity
    return out


BEAM_REDUCTION_KEEP = [lambda r: r % 4 != 1, lambda r: r % 2 == 0, lambda r: r % 3 == 0,
                       lambda r: r % 4 == 0, lambda r: r % 8 == 0]


def beam_reduction(points, severity, generator, ring_column=None):
    """Cross-sensor: keep the rings of ``BEAM_REDUCTION_KEEP[severity - 1]`` (64 -> 48, 32, 22, 16, 8), then
    every 2nd point of each kept ring in azimuth order. Deterministic (the generator is not used)."""
    _check_sweep(points, severity, generator, "beam_reduction")
    ring = _rings(points, ring_column, "beam_reduction")
    kept = BEAM_REDUCTION_KEEP[severity - 1](ring).nonzero().squeeze(1)
    azimuth = torch.atan2(points[kept, 1], points[kept, 0])
    # order by (ring, azimuth): azimuth in [-pi, pi] so ring * 8 separates the rings
    order = kept[(ring[kept].to(points.dtype) * 8 + azimuth).argsort()]
    sorted_ring = ring[order]
    start = torch.ones_like(sorted_ring, dtype=torch.bool)
    start[1:] = sorted_ring[1:] != sorted_ring[:-1]
    first = torch.where(start, torch.arange(len(order), device=points.device), 0).cummax(0).values
    position = torch.arange(len(order), device=points.device) - first
    return points[order[position % 2 == 0]]


LIDAR_CORRUPTIONS: Dict[str, Callable] = {
    "beam_drop": beam_drop, "fog": fog, "snow": snow, "crosstalk": crosstalk, "motion_blur": motion_blur,
    "beam_reduction": beam_reduction,
}


def corrupt(points: torch.Tensor, name: str, severity: int, seed: int = 0,
            ring_column: Optional[int] = None) -> torch.Tensor:
    """Apply corruption ``name`` (object or LiDAR) with a generator on the points' device seeded by ``seed``."""
    generator = torch.Generator(device=points.device).manual_seed(int(seed))
    if name in OBJECT_CORRUPTIONS:
        if ring_column is not None:
            raise ValueError(f"corruption {name!r} is an object corruption; ring_column does not apply")
        return OBJECT_CORRUPTIONS[name](points, severity, generator)
    if name in LIDAR_CORRUPTIONS:
        return LIDAR_CORRUPTIONS[name](points, severity, generator, ring_column)
    raise ValueError(f"unknown corruption {name!r}{closest(name, [*OBJECT_CORRUPTIONS, *LIDAR_CORRUPTIONS])}; "
                     f"known: {', '.join([*OBJECT_CORRUPTIONS, *LIDAR_CORRUPTIONS])}")
