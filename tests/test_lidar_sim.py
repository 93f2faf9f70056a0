"""The ray-casting LiDAR simulator: beam geometry, exact hits on hand-built scenes, culling vs brute force,
points on their primitives, moving-sensor consistency, determinism."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pcmae.data.lidar_sim import (GROUND, Scene, SceneObject, beam_pattern, boxes_in_sensor_frame, cast_rays, hdl32,
                                  hdl64, make_scene, sensor_pose, simulate_sequence, simulate_sweep)


def to_world(points, pose):
    return points[:, :3].astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]


def box_local(xyz, box7):
    """World/sensor points -> the frame of a (7,) box: centred, rotated by -yaw."""
    c, s = np.cos(box7[6]), np.sin(box7[6])
    d = xyz - box7[:3]
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)


@pytest.fixture(scope="module")
def scene():
    return make_scene(3)


@pytest.fixture(scope="module")
def clean_sweep(scene):
    """A noiseless, dropout-free HDL-64E sweep from the start of the street, the sensor turned 2 rad."""
    beams = hdl64(range_noise=0.0, dropout=0.0, azimuth_resolution_deg=0.4)
    pose = sensor_pose(scene, 0.0, heading=2.0, sensor_height=beams.sensor_height)
    return beams, simulate_sweep(scene, pose, beams)


# ------------------------------------------------------------------------------------------ beams
@pytest.mark.parametrize("make, rings, top, bottom", [(hdl64, 64, 2.0, -24.8), (hdl32, 32, 10.67, -30.67)])
def test_beam_patterns(make, rings, top, bottom):
    beams = make()
    elevations = np.array(beams.elevations_deg)
    assert beams.num_rings == rings and len(np.unique(elevations)) == rings
    assert elevations[0] == pytest.approx(bottom) and elevations[-1] == pytest.approx(top)
    assert beams.num_columns == 1800
    directions, ring = beams.rays()
    assert directions.shape == (1800 * rings, 3) and np.allclose(np.linalg.norm(directions, axis=1), 1)
    np.testing.assert_allclose(np.degrees(np.arcsin(directions[:, 2])), elevations[ring], atol=1e-9)
    assert beam_pattern(make(), azimuth_resolution_deg=0.4).num_columns == 900


def test_hdl64_spacing_is_finer_near_the_horizon():
    spacing = np.diff(hdl64().elevations_deg)
    assert spacing[-10:].mean() < spacing[:10].mean() < 0.6  # ~1/3 deg upper block, ~1/2 deg lower block


def test_bad_beam_pattern_is_refused():
    with pytest.raises(ValueError, match="unknown beam pattern 'vlp16'"):
        beam_pattern("vlp16")
    with pytest.raises(ValueError, match="min_range < max_range"):
        hdl64(max_range=0.5)


def test_sweep_rings_and_vertical_angles_match_the_pattern(clean_sweep):
    beams, sweep = clean_sweep
    points = sweep.points
    assert points.shape[1] == 5 and points.dtype == np.float32
    ring = points[:, 4].astype(int)
    assert np.array_equal(points[:, 4], ring) and ring.min() >= 0 and ring.max() < beams.num_rings
    elevation = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
    np.testing.assert_allclose(elevation, np.array(beams.elevations_deg)[ring], atol=2e-3)
    downward = np.flatnonzero(np.array(beams.elevations_deg) < -2.0)  # these all reach the ground
    assert set(downward) <= set(np.unique(ring))
    assert 0 <= points[:, 3].min() and points[:, 3].max() <= 1 and points[:, 3].std() > 0.02


# ------------------------------------------------------------------------------------------ exact hits
def test_hits_on_hand_built_primitives():
    objects = [SceneObject("car", "box", np.array([10.0, 0.0, 1.0]), np.array([2.0, 2.0, 2.0]), 0.0, 0.5),
               SceneObject("car", "box", np.array([0.0, 10.0, 1.0]), np.array([2.0, 2.0, 2.0]), np.pi / 4, 0.5),
               SceneObject("pole", "cylinder", np.array([-5.0, 0.0, 2.0]), np.array([1.0, 1.0, 4.0]), 0.0, 0.5)]
    scene = Scene(objects, ground_height=0.0, slope=(0.1, 0.0))
    origin = np.array([0.0, 0.0, 1.0])
    directions = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, -1], [0, 0, 1], [0, -1, 0]], np.float64)
    hits = cast_rays(scene, origin, directions)
    # box face at x = 9; yawed box's corner at y = 10 - sqrt(2); cylinder at x = -4.5; ground right below;
    # straight up and along -y: nothing
    np.testing.assert_allclose(hits.distance[:5], [9.0, 10 - np.sqrt(2), 4.5, 1.0, np.inf])
    assert hits.distance[5] == np.inf and hits.object_id[5] == -2
    assert hits.object_id[:4].tolist() == [0, 1, 2, GROUND]
    np.testing.assert_allclose(hits.normal[0], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(hits.normal[2], [1, 0, 0], atol=1e-12)
    # from 6 m up, looking down at the centre of the cylinder's top (z = 4): passes above its side at x = -4.5
    top = cast_rays(scene, np.array([0.0, 0.0, 6.0]), np.array([[-5.0, 0.0, -2.0]]) / np.sqrt(29))
    assert top.distance[0] == pytest.approx(np.sqrt(29)) and top.object_id[0] == 2
    np.testing.assert_allclose(top.normal[0], [0, 0, 1], atol=1e-12)
    ground_normal = np.array([-0.1, 0.0, 1.0]) / np.linalg.norm([-0.1, 0.0, 1.0])
    np.testing.assert_allclose(hits.normal[3], ground_normal, atol=1e-12)
    # along +x the sloped ground (z = 0.1 x) is reached at x = 10 but the box (x = 9) is nearer
    down_x = np.array([[np.cos(-0.3), 0.0, np.sin(-0.3)]])
    t_ground = 1.0 / (0.1 * np.cos(-0.3) - np.sin(-0.3))  # origin z - ground = t (0.1 dx - dz)
    assert cast_rays(scene, origin, down_x).distance[0] == pytest.approx(t_ground)


def close_quarters_scene():
    """The sensor stands inside a long wall's footprint circle; objects straddle the azimuth seam at +-pi."""
    return Scene([SceneObject("wall", "box", np.array([0.0, 3.0, 1.0]), np.array([30.0, 0.3, 2.0]), 0.0, 0.4),
                  SceneObject("pole", "cylinder", np.array([-8.0, -0.1, 3.0]), np.array([0.3, 0.3, 6.0]), 0.0, 0.5),
                  SceneObject("car", "box", np.array([-6.0, 0.2, 0.8]), np.array([1.0, 2.0, 1.6]), 0.1, 0.6)])


@pytest.mark.parametrize("which", ["street", "close quarters"])
def test_culled_casting_matches_brute_force(scene, which):
    scene = scene if which == "street" else close_quarters_scene()
    beams = hdl64(azimuth_resolution_deg=1.0)
    pose = sensor_pose(scene, 0.3)
    directions = beams.rays()[0] @ pose[:3, :3].T
    fast = cast_rays(scene, pose[:3, 3], directions)
    slow = cast_rays(scene, pose[:3, 3], directions, cull=False)
    assert np.array_equal(fast.object_id, slow.object_id)
    assert np.array_equal(fast.distance, slow.distance)
    assert len(np.unique(fast.object_id[fast.object_id >= 0])) >= min(10, len(scene.objects))


# ------------------------------------------------------------------------------------------ points on primitives
def test_ground_points_lie_on_the_ground(scene, clean_sweep):
    _, sweep = clean_sweep
    ground = to_world(sweep.points[sweep.object_id == GROUND], sweep.pose)
    assert len(ground) > 10000 and abs(scene.slope[0]) + abs(scene.slope[1]) > 0
    np.testing.assert_allclose(ground[:, 2], scene.ground_z(ground[:, 0], ground[:, 1]), atol=2e-3)


def test_object_points_lie_on_their_faces(scene, clean_sweep):
    _, sweep = clean_sweep
    world = to_world(sweep.points, sweep.pose)
    checked = {"box": 0, "cylinder": 0}
    for k in np.unique(sweep.object_id[sweep.object_id >= 0]):
        obj = scene.objects[k]
        local = box_local(world[sweep.object_id == k], obj.box7())
        half = obj.size / 2
        if obj.shape == "box":
            assert np.all(np.abs(local) <= half + 2e-3)
            gap_to_face = np.min(half - np.abs(local), axis=1)  # distance to the nearest face plane
            np.testing.assert_allclose(gap_to_face, 0, atol=2e-3)
        else:
            radial = np.hypot(local[:, 0], local[:, 1])
            on_side = np.abs(radial - half[0]) < 2e-3
            on_cap = (np.abs(np.abs(local[:, 2]) - half[2]) < 2e-3) & (radial <= half[0] + 2e-3)
            assert np.all(on_side | on_cap) and np.all(np.abs(local[:, 2]) <= half[2] + 2e-3)
        checked[obj.shape] += 1
    assert checked["box"] >= 5 and checked["cylinder"] >= 2


def test_range_noise_and_dropout_statistics(scene):
    pose = sensor_pose(scene, 0.0)
    base = dict(azimuth_resolution_deg=0.5)
    clean = simulate_sweep(scene, pose, hdl64(range_noise=0.0, dropout=0.0, **base), np.random.default_rng(1))
    noisy = simulate_sweep(scene, pose, hdl64(range_noise=0.05, dropout=0.0, **base), np.random.default_rng(1))
    dropped = simulate_sweep(scene, pose, hdl64(range_noise=0.0, dropout=0.25, **base), np.random.default_rng(1))
    assert len(noisy.points) == len(clean.points)
    residual = np.linalg.norm(noisy.points[:, :3], axis=1) - np.linalg.norm(clean.points[:, :3], axis=1)
    assert residual.std() == pytest.approx(0.05, rel=0.05) and abs(residual.mean()) < 0.005
    assert len(dropped.points) / len(clean.points) == pytest.approx(0.75, abs=0.02)
    ranges = np.linalg.norm(clean.points[:, :3], axis=1)
    assert ranges.min() >= 1.0 and ranges.max() <= 100.0


def test_labels_in_sensor_frame_contain_their_points(scene, clean_sweep):
    _, sweep = clean_sweep
    boxes = boxes_in_sensor_frame(scene.boxes(), sweep.pose)
    for k in np.unique(sweep.object_id[sweep.object_id >= 0])[:10]:
        local = box_local(sweep.points[sweep.object_id == k, :3].astype(np.float64), boxes[k])
        assert np.all(np.abs(local) <= boxes[k, 3:6] / 2 + 2e-3)


# ------------------------------------------------------------------------------------------ scenes and motion
def test_scene_layout_keeps_the_road_clear_and_objects_apart():
    scene = make_scene(11)
    assert len(scene.objects) >= 40
    assert {"car", "building", "wall", "pole", "trunk"} == set(scene.kinds)
    xy = np.array([o.center[:2] for o in scene.objects])
    radius = np.array([0.5 * np.hypot(*o.size[:2]) for o in scene.objects])
    gaps = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) - radius[:, None] - radius[None]
    assert np.all(gaps[~np.eye(len(xy), dtype=bool)] > 0)
    # no footprint corner reaches the ego lane |y| < 2.5 m where the sensor drives
    for obj in scene.objects:
        corners = np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)]) * obj.size[:2] / 2
        y = obj.center[1] + np.sin(obj.yaw) * corners[:, 0] + np.cos(obj.yaw) * corners[:, 1]
        assert np.all(np.abs(y) > 2.5) and np.all(np.sign(y) == np.sign(obj.center[1])), obj


def test_moving_sensor_sees_a_static_scene_consistently():
    scene = make_scene(5)
    seq = simulate_sequence(scene, 2, speed=10.0, beams=hdl64(azimuth_resolution_deg=0.4), seed=2)
    assert seq.poses.shape == (2, 4, 4) and np.allclose(seq.timestamps, [0.0, 0.1])
    np.testing.assert_allclose(seq.poses[1, :2, 3] - seq.poses[0, :2, 3], [1.0, 0.0])  # 10 m/s for 0.1 s
    before, after = seq.sweeps
    on_objects = after.object_id >= 0  # ground rings move with the sensor: only objects tell
    on_objects &= np.linalg.norm(after.points[:, :3], axis=1) < 30
    tree = cKDTree(to_world(before.points[before.object_id >= 0], before.pose))
    distance, _ = tree.query(to_world(after.points[on_objects], after.pose))
    wrong, _ = tree.query(to_world(after.points[on_objects], before.pose))  # as if the sensor had not moved
    assert on_objects.sum() > 2000
    assert np.median(distance) < 0.06 and np.percentile(distance, 90) < 0.15
    assert np.percentile(wrong, 90) > 0.5


def test_sequence_frames_are_reproducible_alone():
    scene = make_scene(1)
    beams = hdl32(azimuth_resolution_deg=1.0)
    whole = simulate_sequence(scene, 3, beams=beams, seed=4)
    alone = simulate_sequence(scene, 1, beams=beams, seed=4, first_frame=2)
    assert np.array_equal(whole.sweeps[2].points, alone.sweeps[0].points)
    np.testing.assert_array_equal(whole.poses[2], alone.poses[0])


def test_determinism_per_seed():
    assert np.array_equal(make_scene(9).boxes(), make_scene(9).boxes())
    assert not np.array_equal(make_scene(9).boxes(), make_scene(10).boxes())
    beams = hdl32(azimuth_resolution_deg=1.0)
    a = simulate_sequence(make_scene(9), 1, beams=beams, seed=0).sweeps[0]
    b = simulate_sequence(make_scene(9), 1, beams=beams, seed=0).sweeps[0]
    c = simulate_sequence(make_scene(9), 1, beams=beams, seed=1).sweeps[0]
    assert np.array_equal(a.points, b.points) and np.array_equal(a.object_id, b.object_id)
    assert not np.array_equal(a.points, c.points)
