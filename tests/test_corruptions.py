"""Corruptions of ModelNet40-C (objects) and of LiDAR sweeps (after Robo3D), and CorruptedObjects."""
import math

import pytest
import torch
import torch.nn.functional as F

from pcmae.data import build_dataset
from pcmae.data.corruptions import (LIDAR_CORRUPTIONS, OBJECT_CORRUPTIONS, bbox_normalize, corrupt, derive_rings,
                                    ffd_deform, knn_patches, lidar_viewpoint, occlusion, occlusion_viewpoint,
                                    rbf_controls, rbf_deform, rotation, rotation_matrix, shear_matrix,
                                    visible_mask)
from pcmae.data.synthetic_objects import SyntheticObjects
from pcmae.registry import DATASETS

N = 1024
MODELNET40_C = ["occlusion", "lidar", "density_inc", "density", "cutout", "uniform", "gaussian", "impulse",
                "upsampling", "background", "rotation", "shear", "distortion", "distortion_rbf",
                "distortion_rbf_inv"]


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.fixture(scope="module")
def cloud():
    return SyntheticObjects(num_samples=3, num_points=N, seed=0)[2]["points"]  # a cylinder, unit sphere


@pytest.fixture(scope="module")
def sphere():
    return F.normalize(torch.randn(N, 3, generator=gen(1)), dim=1)


def affine_fit(src, dst):
    """Scale s and offset t minimising |s * src + t - dst| (the bbox normalisation is such a map)."""
    a = torch.cat([src.reshape(-1, 1), torch.eye(3).repeat(len(src), 1)], 1).double()
    sol = torch.linalg.lstsq(a, dst.reshape(-1, 1).double()).solution.squeeze(1)
    return sol[0].float(), sol[1:].float()


def undo(src, dst, rows=None):
    """dst mapped back into src's frame with the affine map fitted on ``rows`` (default all)."""
    rows = slice(None) if rows is None else rows
    s, t = affine_fit(src[rows], dst[rows])
    return (dst - t) / s


def test_names_match_modelnet40_c_and_robo3d():
    assert list(OBJECT_CORRUPTIONS) == MODELNET40_C
    assert set(LIDAR_CORRUPTIONS) == {"beam_drop", "fog", "snow", "crosstalk", "motion_blur", "beam_reduction"}


@pytest.mark.parametrize("name", MODELNET40_C)
def test_object_corruption_is_seeded_finite_and_keeps_dtype(name, cloud):
    for severity in (1, 5):
        a = OBJECT_CORRUPTIONS[name](cloud, severity, gen(3))
        b = OBJECT_CORRUPTIONS[name](cloud, severity, gen(3))
        c = OBJECT_CORRUPTIONS[name](cloud, severity, gen(4))
        assert a.dtype == cloud.dtype and a.shape[1] == 3 and len(a) > 0 and torch.isfinite(a).all()
        assert torch.equal(a, b)
        assert a.shape != c.shape or not torch.equal(a, c)


def test_point_counts_follow_the_published_parameters(cloud):
    for s in range(1, 6):
        g = gen(s)
        assert len(OBJECT_CORRUPTIONS["density"](cloud, s, g)) == N - 75 * s
        assert len(OBJECT_CORRUPTIONS["cutout"](cloud, s, g)) == N - 30 * [2, 3, 5, 7, 10][s - 1]
        assert len(OBJECT_CORRUPTIONS["density_inc"](cloud, s, g)) == N + 100 * s
        assert len(OBJECT_CORRUPTIONS["upsampling"](cloud, s, g)) == N + N // [5, 4, 3, 2, 1][s - 1]
        assert len(OBJECT_CORRUPTIONS["background"](cloud, s, g)) == N + N // [45, 40, 35, 30, 20][s - 1]
        for name in ("uniform", "gaussian", "impulse", "rotation", "shear", "distortion"):
            assert len(OBJECT_CORRUPTIONS[name](cloud, s, g)) == N
    half = cloud[:512]  # counts scale with N / 1024
    assert len(OBJECT_CORRUPTIONS["cutout"](half, 5, gen())) == 512 - 10 * 15


def test_outputs_are_subsets_where_points_are_only_removed(cloud):
    rows = {tuple(r) for r in cloud.tolist()}
    for name in ("density", "cutout"):
        out = OBJECT_CORRUPTIONS[name](cloud, 4, gen())
        assert all(tuple(r) in rows for r in out.tolist()), name


def test_uniform_noise_stays_within_the_published_bound(cloud):
    spans = []
    for s in range(1, 6):
        c = [0.01, 0.02, 0.03, 0.04, 0.05][s - 1]
        out = OBJECT_CORRUPTIONS["uniform"](cloud, s, gen(s))
        assert out.abs().amax(0).max() == pytest.approx(1.0, abs=1e-6)  # bbox-normalised: longest side 2
        noise = undo(cloud, out) - cloud
        assert 0.9 * c <= noise.abs().max() <= 1.1 * c  # up to the fit of the normalisation
        spans.append(float(noise.std()))
    assert spans == sorted(spans)


def test_gaussian_noise_std_grows_with_severity_and_is_clipped(cloud):
    stds = []
    for s in range(1, 6):
        out = OBJECT_CORRUPTIONS["gaussian"](cloud, s, gen(s))
        assert out.abs().max() <= 1.0
        std = float((out - cloud).std())
        assert std == pytest.approx([0.01, 0.015, 0.02, 0.025, 0.03][s - 1], rel=0.1)
        stds.append(std)
    assert stds == sorted(stds)


def test_impulse_moves_the_published_count_by_0_1_per_coordinate(cloud):
    for s in (1, 5):
        out = OBJECT_CORRUPTIONS["impulse"](cloud, s, gen(s))
        offset = undo(cloud, out) - cloud
        moved = offset.abs().amax(1) > 0.05
        assert int(moved.sum()) == N // [30, 25, 20, 15, 10][s - 1]
        assert torch.allclose(offset[moved].abs(), torch.full_like(offset[moved], 0.1), atol=0.01)
        assert offset[~moved].abs().max() < 0.01


def test_upsampling_and_background_add_points_in_their_published_ranges(cloud):
    out = OBJECT_CORRUPTIONS["upsampling"](cloud, 3, gen())
    back = undo(cloud, out, slice(0, N))
    assert torch.allclose(back[:N], cloud, atol=1e-5)
    linf = (back[N:, None] - cloud[None]).abs().amax(-1).min(1).values  # to the nearest original point
    assert linf.max() <= 0.05 + 1e-5
    out = OBJECT_CORRUPTIONS["background"](cloud, 5, gen())
    back = undo(cloud, out, slice(0, N))
    added = back[N:]
    assert added.abs().max() <= 1 + 1e-5 and added.abs().max() > 0.8
    assert (added[:, None] - cloud[None]).norm(dim=-1).min(1).values.max() > 0.1  # not on the surface


def euler_xyz(r):
    """Angles (a, b, g) of r = Rx(a) @ Ry(b) @ Rz(g)."""
    return (torch.atan2(-r[1, 2], r[2, 2]), torch.asin(r[0, 2]), torch.atan2(-r[0, 1], r[0, 0]))


def test_rotation_is_proper_with_the_published_angle_range(cloud):
    like = torch.zeros(3)
    for s in range(1, 6):
        c = [2.5, 5, 7.5, 10, 15][s - 1]
        for seed in range(8):
            r = rotation_matrix(s, gen(seed), like)
            assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6)
            assert torch.linalg.det(r) == pytest.approx(1.0, abs=1e-6)
            for angle in euler_xyz(r):
                assert c - 2.5 - 1e-3 <= abs(math.degrees(float(angle))) <= c + 2.5 + 1e-3
    out = rotation(cloud, 4, gen(7))
    assert torch.allclose(out, bbox_normalize(cloud @ rotation_matrix(4, gen(7), like)), atol=1e-6)
    ratio = torch.pdist(out) / torch.pdist(cloud)  # distances kept up to the normalisation's one scale
    assert ratio.std() / ratio.mean() < 1e-4


def test_shear_matrix_has_the_published_form():
    for s in range(1, 6):
        c = [0.05, 0.1, 0.15, 0.2, 0.25][s - 1]
        m = shear_matrix(s, gen(s), torch.zeros(3))
        assert torch.equal(m.diagonal(), torch.ones(3)) and m[0, 1] == 0 and m[2, 1] == 0
        for value in (m[0, 2], m[1, 0], m[1, 2], m[2, 0]):
            assert c - 0.05 - 1e-6 <= abs(float(value)) <= c + 0.05 + 1e-6


def test_ffd_is_identity_at_rest_and_translates_by_twice_a_constant_displacement(cloud):
    assert torch.allclose(ffd_deform(cloud, torch.zeros(3, 5, 5, 5)), cloud)
    shift = torch.tensor([0.1, -0.05, 0.02])
    moved = ffd_deform(cloud, shift[:, None, None, None].expand(3, 5, 5, 5))
    assert torch.allclose(moved - cloud, 2 * shift.expand_as(cloud), atol=1e-6)
    outside = torch.tensor([[1.5, 0.0, 0.0]])
    assert torch.equal(ffd_deform(outside, torch.ones(3, 5, 5, 5)), outside)


def test_rbf_interpolates_the_moved_control_grid():
    like = torch.zeros(3)
    for s in (1, 5):
        grid, moved = rbf_controls(s, gen(s), like)
        assert grid.shape == (125, 3)
        assert torch.allclose((moved - grid).norm(dim=1), torch.full((125,), 0.025 * s), atol=1e-6)
        for kernel in ("multiquadric", "inverse_multiquadric"):
            assert torch.allclose(rbf_deform(grid, grid, moved, kernel), moved, atol=1e-4)


@pytest.mark.parametrize("name", ["distortion", "distortion_rbf", "distortion_rbf_inv"])
def test_distortions_grow_with_severity(name, cloud):
    residual = []
    for s in range(1, 6):
        out = OBJECT_CORRUPTIONS[name](cloud, s, gen(11))
        residual.append(float((undo(cloud, out) - cloud).norm(dim=1).mean()))
    assert residual == sorted(residual) and residual[0] > 1e-3
    if name == "distortion":
        assert residual[-1] < 2 * 0.5  # |shift| <= 2 c per axis


def test_cutout_removes_exactly_the_points_inside_its_balls(cloud):
    s, count = 5, 10
    out = OBJECT_CORRUPTIONS["cutout"](cloud, s, gen(5))
    patches, centres, radii = knn_patches(cloud, count, 30, gen(5))
    removed = torch.ones(N, dtype=torch.bool)
    removed[patches.reshape(-1)] = False
    assert torch.equal(out, cloud[removed])
    kept_dist = torch.cdist(out, centres)  # a kept point was free at every cut: never inside a ball
    assert (kept_dist >= radii - 1e-6).all()
    for patch, centre, radius in zip(patches, centres, radii):
        assert ((cloud[patch] - centre).norm(dim=1) <= radius + 1e-6).all()


def test_density_inc_adds_points_only_inside_the_patches(cloud):
    s = 3
    out = OBJECT_CORRUPTIONS["density_inc"](cloud, s, gen(9))
    assert torch.equal(out[:N], cloud)
    _, centres, radii = knn_patches(cloud, s, 100, gen(9))
    added = out[N:].reshape(s, 100, 3)
    assert ((added - centres[:, None]).norm(dim=-1) <= radii[:, None] + 1e-5).all()


def test_density_removes_three_quarters_of_local_patches(cloud):
    out = OBJECT_CORRUPTIONS["density"](cloud, 2, gen(2))
    removed = ~(cloud[:, None] == out[None]).all(-1).any(1)
    assert int(removed.sum()) == 150
    g, free = gen(2), torch.ones(N, dtype=torch.bool)  # the same draws: a patch, then 75 of its 100 points
    for _ in range(2):
        remaining = free.nonzero().squeeze(1)
        patch, centre, radius = knn_patches(cloud[remaining], 1, 100, g)
        patch = remaining[patch[0]]
        dropped = patch[torch.randperm(100, generator=g)[:75]]
        assert removed[dropped].all() and int(removed[patch].sum()) >= 75
        assert ((cloud[dropped] - centre).norm(dim=1) <= radius + 1e-6).all()
        free[dropped] = False


def test_visible_mask_keeps_the_front_of_a_sphere_and_hides_its_back(sphere):
    eye = torch.tensor([0.0, 1.5, 2.6])
    mask = visible_mask(sphere, eye)
    facing = (sphere * F.normalize(eye - sphere, dim=1)).sum(1)
    assert mask[facing > 0.3].all()
    assert not mask[facing < -0.05].any()
    assert 0.25 * N < int(mask.sum()) < 0.4 * N


def test_occlusion_views_from_the_published_pose(sphere):
    like = torch.zeros(3)
    for s in range(1, 6):
        eye = occlusion_viewpoint(s, gen(s), like)
        assert float(eye.norm()) == pytest.approx(3.0, abs=1e-5)
        assert 30 - 1e-3 <= math.degrees(math.asin(float(eye[1]) / 3)) <= 60 + 1e-3
        azimuth = math.degrees(math.atan2(float(eye[2]), float(eye[0])))
        assert abs((azimuth - 72 * s + 180) % 360 - 180) <= 36 + 1e-3
    out = occlusion(sphere, 2, gen(4))
    normalised = bbox_normalize(sphere)
    assert len(out) == int(visible_mask(normalised, occlusion_viewpoint(2, gen(4), like)).sum())
    assert out.abs().amax() == pytest.approx(1.0, abs=1e-6)


def test_lidar_snaps_points_onto_one_degree_scan_lines(sphere):
    out = OBJECT_CORRUPTIONS["lidar"](sphere, 3, gen(6))
    sensor = lidar_viewpoint(3, gen(6), torch.zeros(3))
    assert float(sensor.norm()) == pytest.approx(5.0, abs=1e-5)
    assert math.degrees(math.asin(float(sensor[1]) / 5)) == pytest.approx(22.5, abs=1e-3)
    rel = (out - sensor).double()
    polar = torch.rad2deg(torch.atan2(torch.hypot(rel[:, 0], rel[:, 2]), rel[:, 1]))
    steps = polar - polar.min()
    assert (steps - steps.round()).abs().max() < 1e-3  # whole degrees apart
    assert len(out) < 0.3 * N and len(steps.round().unique()) >= 10


def test_object_corruptions_refuse_bad_input(cloud):
    with pytest.raises(ValueError, match="severity must be 1..5"):
        OBJECT_CORRUPTIONS["gaussian"](cloud, 6, gen())
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        OBJECT_CORRUPTIONS["gaussian"](cloud[:, :2], 1, gen())
    with pytest.raises(ValueError, match="torch.Generator"):
        OBJECT_CORRUPTIONS["gaussian"](cloud, 1, None)
    with pytest.raises(ValueError, match="at least 16 points"):
        OBJECT_CORRUPTIONS["density_inc"](cloud[:10], 1, gen())
    with pytest.raises(ValueError, match="did you mean 'gaussian'"):
        corrupt(cloud, "gausian", 1)
    assert torch.equal(corrupt(cloud, "shear", 2, seed=3), OBJECT_CORRUPTIONS["shear"](cloud, 2, gen(3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_corruption_runs_on_cuda(cloud):
    points = cloud.cuda()
    for name in OBJECT_CORRUPTIONS:
        assert corrupt(points, name, 5, seed=1).device.type == "cuda"
    sweep = make_sweep(torch.Generator().manual_seed(0)).cuda()
    for name in LIDAR_CORRUPTIONS:
        assert corrupt(sweep, name, 3, seed=1, ring_column=4).device.type == "cuda"
    with pytest.raises(ValueError, match="torch.Generator"):
        OBJECT_CORRUPTIONS["gaussian"](points, 1, gen())


# ----------------------------------------------------------------------------------------------- LiDAR sweeps
RINGS, COLUMNS = 64, 100


def make_sweep(g):
    """(RINGS * COLUMNS, 5) x, y, z, intensity, ring of an HDL-64-like sensor: ring 0 lowest, random ranges."""
    elevation = torch.deg2rad(torch.linspace(-24.8, 2.0, RINGS))
    azimuth = torch.linspace(-math.pi, math.pi, COLUMNS + 1)[:-1] + 0.001
    el, az = torch.meshgrid(elevation, azimuth, indexing="ij")
    r = 5 + 55 * torch.rand(el.shape, generator=g)
    xyz = torch.stack([r * torch.cos(el) * torch.cos(az), r * torch.cos(el) * torch.sin(az), r * torch.sin(el)], -1)
    ring = torch.arange(RINGS).float()[:, None].expand(RINGS, COLUMNS)
    return torch.cat([xyz.reshape(-1, 3), torch.rand(RINGS * COLUMNS, 1, generator=g), ring.reshape(-1, 1)], 1)


@pytest.fixture(scope="module")
def sweep():
    return make_sweep(gen(0))


def test_rings_derived_from_elevation_match_the_ring_column(sweep):
    assert torch.equal(derive_rings(sweep), sweep[:, 4].long())
    with pytest.raises(ValueError, match="pass ring_column"):
        elevation = torch.deg2rad(torch.linspace(-80, 80, 600))  # 0.27 deg apart: 600 "rings"
        derive_rings(torch.stack([torch.cos(elevation), torch.zeros(600), torch.sin(elevation)], 1))
    with pytest.raises(ValueError, match="ring_column 7"):
        LIDAR_CORRUPTIONS["beam_drop"](sweep, 1, gen(), ring_column=7)


def test_beam_drop_removes_whole_rings(sweep):
    for s in range(1, 6):
        out = LIDAR_CORRUPTIONS["beam_drop"](sweep, s, gen(s), ring_column=4)
        rings = out[:, 4].long().unique()
        assert len(rings) == RINGS - round([0.25, 0.375, 0.5, 0.625, 0.75][s - 1] * RINGS)
        assert len(out) == len(rings) * COLUMNS  # kept rings are whole
        rows = {tuple(r) for r in sweep.tolist()}
        assert all(tuple(r) in rows for r in out.tolist())  # rows (with their features) unchanged
    derived = LIDAR_CORRUPTIONS["beam_drop"](sweep[:, :4], 3, gen(3))
    assert torch.equal(derived, LIDAR_CORRUPTIONS["beam_drop"](sweep, 3, gen(3), ring_column=4)[:, :4])


def test_beam_reduction_keeps_every_kth_ring_at_half_azimuth_resolution(sweep):
    expected = [[r for r in range(RINGS) if r % 4 != 1], list(range(0, RINGS, 2)), list(range(0, RINGS, 3)),
                list(range(0, RINGS, 4)), list(range(0, RINGS, 8))]
    for s in range(1, 6):
        out = LIDAR_CORRUPTIONS["beam_reduction"](sweep, s, gen(), ring_column=4)
        rings, counts = out[:, 4].long().unique(return_counts=True)
        assert rings.tolist() == expected[s - 1]
        assert (counts == COLUMNS // 2).all()
    assert len(expected[1]) == 32 and len(expected[3]) == 16


def test_fog_pulls_returns_towards_the_sensor_and_attenuates(sweep):
    r = sweep[:, :3].norm(dim=1)
    fractions = []
    for s in range(1, 6):
        out = LIDAR_CORRUPTIONS["fog"](sweep, s, gen(s), ring_column=4)
        assert out.shape == sweep.shape and torch.equal(out[:, 4], sweep[:, 4])
        r_out = out[:, :3].norm(dim=1)
        assert (r_out <= r + 1e-4).all() and (out[:, 3] <= sweep[:, 3] + 1e-6).all()
        moved = r_out < r - 1e-3
        assert (r_out[moved] <= 10.0 + 1e-4).all()
        cos = F.cosine_similarity(out[moved, :3], sweep[moved, :3], dim=1)
        assert (cos > 1 - 1e-5).all()  # along the same ray
        fractions.append(float(moved.float().mean()))
    assert fractions == sorted(fractions) and 0.05 < fractions[0] < fractions[-1] < 1


def test_snow_drops_some_returns_and_adds_near_ones(sweep):
    for s in (1, 5):
        hit = round([0.02, 0.04, 0.06, 0.08, 0.10][s - 1] * len(sweep))
        out = LIDAR_CORRUPTIONS["snow"](sweep, s, gen(s), ring_column=4)
        assert len(out) == len(sweep) - hit // 2
        rows = {tuple(r) for r in sweep[:, :3].tolist()}
        changed = torch.tensor([tuple(r) not in rows for r in out[:, :3].tolist()])
        assert int(changed.sum()) == hit - hit // 2
        assert (out[changed, :3].norm(dim=1) <= 15.0 + 1e-4).all()


def test_crosstalk_displaces_the_published_fraction(sweep):
    for s in (1, 5):
        out = LIDAR_CORRUPTIONS["crosstalk"](sweep, s, gen(s), ring_column=4)
        moved = (out[:, :3] != sweep[:, :3]).any(1)
        assert int(moved.sum()) == round([0.006, 0.007, 0.008, 0.009, 0.010][s - 1] * len(sweep))
        assert torch.equal(out[:, 3:], sweep[:, 3:])
        assert (out[moved, :3] - sweep[moved, :3]).std() == pytest.approx(3.0, rel=0.3)


def test_motion_blur_shifts_by_velocity_times_time_in_sweep(sweep):
    t = (torch.atan2(sweep[:, 1], sweep[:, 0]) + math.pi) / (2 * math.pi) * 0.1
    means = []
    for s in range(1, 6):
        out = LIDAR_CORRUPTIONS["motion_blur"](sweep, s, gen(s), ring_column=4)
        shift = out[:, :3] - sweep[:, :3]
        speed = [5, 10, 15, 20, 25][s - 1]
        assert torch.allclose(shift.norm(dim=1), speed * t, atol=1e-4)
        assert shift[:, 2].abs().max() < 1e-5 and torch.equal(out[:, 3:], sweep[:, 3:])
        means.append(float(shift.norm(dim=1).mean()))
    assert means == sorted(means)


def test_lidar_corruptions_are_seeded(sweep):
    for name, fn in LIDAR_CORRUPTIONS.items():
        assert torch.equal(fn(sweep, 3, gen(1), 4), fn(sweep, 3, gen(1), 4)), name


# ----------------------------------------------------------------------------------------------- dataset
BASE = {"type": "SyntheticObjects", "num_samples": 4, "num_points": 512}


def test_corrupted_objects_items_are_seeded_and_resampled():
    assert "CorruptedObjects" in DATASETS
    ds = build_dataset({"type": "CorruptedObjects", "dataset": BASE, "corruption": "occlusion", "severity": 2,
                        "num_points": 256})
    again = build_dataset({"type": "CorruptedObjects", "dataset": BASE, "corruption": "occlusion", "severity": 2,
                           "num_points": 256})
    other = build_dataset({"type": "CorruptedObjects", "dataset": BASE, "corruption": "occlusion", "severity": 2,
                           "num_points": 256, "seed": 1})
    item = ds[1]
    assert item["points"].shape == (256, 3) and item["points"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 1 and ds.num_classes == 8
    assert len(ds) == 4 and torch.equal(item["points"], again[1]["points"])
    assert not torch.equal(item["points"], other[1]["points"])


def test_corrupted_objects_fills_short_clouds_with_every_point_then_repeats():
    base = SyntheticObjects(num_samples=2, num_points=512)
    ds = build_dataset({"type": "CorruptedObjects", "dataset": BASE, "corruption": "occlusion", "severity": 1,
                        "num_points": 1024})
    corrupted = OBJECT_CORRUPTIONS["occlusion"](base[0]["points"], 1, ds.generator(0))
    points = ds[0]["points"]
    assert len(corrupted) < 1024 and len(points.unique(dim=0)) == len(corrupted.unique(dim=0))
    clean = build_dataset({"type": "CorruptedObjects", "dataset": BASE, "corruption": None, "num_points": 512})
    assert torch.equal(clean[0]["points"].sort(0).values, base[0]["points"].sort(0).values)  # a permutation


def test_corrupted_objects_refuses_bad_config():
    with pytest.raises(ValueError, match="did you mean 'cutout'"):
        build_dataset({"type": "CorruptedObjects", "dataset": BASE, "corruption": "cut_out"})
    with pytest.raises(ValueError, match="severity must be 1..5"):
        build_dataset({"type": "CorruptedObjects", "dataset": BASE, "corruption": "cutout", "severity": 0})
