"""Moving traffic in the LiDAR simulator: scenes at a time, sweeps of moving objects, ego-motion alignment of
static vs moving geometry, pedestrians and lane cars that keep clear of everything, and the static street kept."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pcmae.data.lidar_sim import (LANE_Y, SIDEWALK_WIDTH, WALK_SPEED, beam_pattern, boxes_in_sensor_frame,
                                  make_scene, sensor_pose, simulate_sequence, simulate_sweep)
from tests.test_lidar_sim import box_local

COARSE = dict(azimuth_resolution_deg=1.0)


def to_frame(points, transform):
    return points[:, :3].astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]


def point_to_plane(source, target, k=8):
    """Distance of each source point (N, 3) to the plane through its k nearest target points (M, 3); points whose
    neighbours lie on one scan line (no plane) are left out."""
    _, index = cKDTree(target).query(source, k)
    neighbours = target[index]
    centre = neighbours.mean(1)
    _, spread, axes = np.linalg.svd(neighbours - centre[:, None])
    distance = np.abs(np.einsum("ij,ij->i", source - centre, axes[:, 2]))
    return distance[spread[:, 1] > 0.2 * spread[:, 0]]


def shift_along(source, target, direction, span=2.0, step=0.02):
    """The shift s in [-span, span] along ``direction`` (3,) that best lays ``source`` onto ``target``
    (least mean nearest-point distance, capped at 0.5 m)."""
    tree, shifts = cKDTree(target), np.arange(-span, span + step / 2, step)
    cost = [np.minimum(tree.query(source + s * direction)[0], 0.5).mean() for s in shifts]
    return shifts[int(np.argmin(cost))]


@pytest.fixture(scope="module")
def scene():
    return make_scene(0, moving=True)


@pytest.fixture(scope="module")
def sequence(scene):
    """Two HDL-32E frames 0.1 s apart: the ego drives 1 m along +x, the traffic moves on."""
    return simulate_sequence(scene, 2, beams=beam_pattern("hdl32", **COARSE), seed=0)


# ------------------------------------------------------------------------------------------ scene at a time
def test_scene_at_moves_only_the_movers(scene):
    later = scene.at(2.5)
    assert len(later.objects) == len(scene.objects) and later.kinds == scene.kinds
    movers = [k for k, o in enumerate(scene.objects) if o.moving]
    assert {scene.objects[k].kind for k in movers} == {"car", "pedestrian"}
    for k, (now, then) in enumerate(zip(scene.objects, later.objects)):
        if k not in movers:
            assert then is now  # shared, not copied
            continue
        dx, dy = now.velocity * 2.5
        np.testing.assert_allclose(then.center - now.center, [dx, dy, scene.slope[0] * dx + scene.slope[1] * dy])
        # a mover keeps its height above the ground plane and its label box is yawed along its motion
        assert then.center[2] - scene.ground_z(*then.center[:2]) == pytest.approx(
            now.center[2] - scene.ground_z(*now.center[:2]))
        assert np.cos(now.yaw) * now.velocity[0] + np.sin(now.yaw) * now.velocity[1] == pytest.approx(
            np.linalg.norm(now.velocity))
    np.testing.assert_allclose(scene.boxes(2.5), later.boxes())
    np.testing.assert_allclose(scene.boxes(2.5)[movers, :2] - scene.boxes()[movers, :2],
                               scene.velocities()[movers] * 2.5)
    assert scene.at(0.0) is scene and np.array_equal(scene.boxes(0.0), scene.boxes())


def test_sweep_at_a_time_sees_the_scene_at_that_time(scene):
    beams = beam_pattern("hdl32", range_noise=0.0, dropout=0.0, **COARSE)
    pose = sensor_pose(scene, 0.7, sensor_height=beams.sensor_height)
    sweep = simulate_sweep(scene, pose, beams, np.random.default_rng(1), 0.7)
    same = simulate_sweep(scene.at(0.7), pose, beams, np.random.default_rng(1), 0.0)
    frozen = simulate_sweep(scene, pose, beams, np.random.default_rng(1), 0.0)
    assert np.array_equal(sweep.points, same.points) and np.array_equal(sweep.object_id, same.object_id)
    assert not np.array_equal(sweep.object_id, frozen.object_id)
    # every return from a mover lies in that mover's label box at the sweep's time (noiseless beams)
    boxes = boxes_in_sensor_frame(scene.boxes(0.7), pose)
    hit = [k for k in np.unique(sweep.object_id) if k >= 0 and scene.objects[k].moving]
    assert len(hit) >= 3
    for k in hit:
        local = box_local(sweep.points[sweep.object_id == k, :3].astype(np.float64), boxes[k])
        assert np.all(np.abs(local) <= boxes[k, 3:6] / 2 + 2e-3)


# ------------------------------------------------------------------------------------------ ego-motion alignment
def test_static_geometry_lands_on_itself_after_ego_alignment(scene, sequence):
    before, after = sequence.sweeps
    np.testing.assert_allclose(sequence.poses[1, :2, 3] - sequence.poses[0, :2, 3], [1.0, 0.0])
    before_to_after = np.linalg.inv(after.pose) @ before.pose
    aligned, raw = [], []
    for k in np.intersect1d(before.object_id, after.object_id):
        if k < 0 or scene.objects[k].moving:
            continue
        source, target = before.points[before.object_id == k], to_frame(after.points[after.object_id == k], np.eye(4))
        if min(len(source), len(target)) < 10:
            continue
        aligned.append(point_to_plane(to_frame(source, before_to_after), target))
        raw.append(point_to_plane(to_frame(source, np.eye(4)), target))  # as if the sensor had not moved
    aligned, raw = np.concatenate(aligned), np.concatenate(raw)
    assert len(aligned) > 1000
    assert np.median(aligned) < 0.03  # range noise 0.02 m in each frame
    assert np.median(raw) > 4 * np.median(aligned) and np.median(raw) > 0.1


def test_moving_cars_land_on_themselves_only_with_their_own_motion(scene, sequence):
    before, after = sequence.sweeps
    dt = sequence.timestamps[1] - sequence.timestamps[0]
    before_to_after = np.linalg.inv(after.pose) @ before.pose
    world_to_after = np.linalg.inv(after.pose)[:3, :3]
    checked = 0
    for k, obj in enumerate(scene.objects):
        source, target = before.points[before.object_id == k], to_frame(after.points[after.object_id == k], np.eye(4))
        if obj.kind != "car" or not obj.moving or min(len(source), len(target)) < 30:
            continue
        ego_aligned = to_frame(source, before_to_after)
        if not 8 < np.hypot(*ego_aligned.mean(0)[:2]) < 40:  # a close car's visible part changes with the view
            continue
        dx, dy = obj.velocity * dt
        motion = np.array([dx, dy, scene.slope[0] * dx + scene.slope[1] * dy])
        shift = after.pose[:3, :3] @ (target.mean(0) - ego_aligned.mean(0))  # centroid shift, world axes
        assert np.linalg.norm(shift[:2] - motion[:2]) < min(0.3, 0.5 * np.linalg.norm(motion[:2])), (k, shift, motion)
        speed = np.linalg.norm(obj.velocity)
        searched = shift_along(ego_aligned, target, world_to_after @ motion / (speed * dt))  # along the motion
        assert searched == pytest.approx(speed * dt, abs=0.05)
        assert np.median(point_to_plane(ego_aligned, target)) > 0.3
        assert np.median(point_to_plane(ego_aligned + world_to_after @ motion, target)) < 0.05
        checked += 1
    assert checked >= 2


# ------------------------------------------------------------------------------------------ layout over time
def footprint_outline(obj, n=24):
    """(M, 2) points on the footprint's outline (box: its edges; cylinder: its circle) and its centre."""
    if obj.shape == "cylinder":
        angle = np.linspace(0, 2 * np.pi, 4 * n, endpoint=False)
        outline = obj.size[0] / 2 * np.stack([np.cos(angle), np.sin(angle)], 1)
    else:
        u = np.linspace(-1, 1, n)
        edges = [np.stack([u, np.full(n, s)], 1) for s in (-1, 1)] + [np.stack([np.full(n, s), u], 1) for s in (-1, 1)]
        outline = np.concatenate(edges) * obj.size[:2] / 2
        c, s = np.cos(obj.yaw), np.sin(obj.yaw)
        outline = outline @ np.array([[c, s], [-s, c]])
    return np.concatenate([outline, [[0.0, 0.0]]]) + obj.center[:2]


def inside_footprint(xy, obj):
    d = xy - obj.center[:2]
    if obj.shape == "cylinder":
        return np.hypot(d[:, 0], d[:, 1]) <= obj.size[0] / 2
    c, s = np.cos(obj.yaw), np.sin(obj.yaw)
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], 1)
    return np.all(np.abs(local) <= obj.size[:2] / 2, axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_traffic_keeps_to_its_lanes_and_sidewalks_and_never_collides(seed):
    road_half_width, duration = 6.0, 10.0
    scene = make_scene(seed, moving=True, duration=duration)
    movers = [k for k, o in enumerate(scene.objects) if o.moving]
    kinds = [scene.objects[k].kind for k in movers]
    assert kinds.count("pedestrian") >= 6 and kinds.count("car") == 5
    lanes = {}
    for k in movers:
        obj = scene.objects[k]
        speed = np.linalg.norm(obj.velocity)
        assert obj.velocity[1] == 0
        if obj.kind == "pedestrian":
            assert WALK_SPEED[0] <= speed <= WALK_SPEED[1] and 0.4 <= obj.size[0] <= 0.6 and 1.5 <= obj.size[2] <= 1.9
        else:  # oncoming lane y = +LANE_Y drives -x, the other lane +x, one speed per lane
            assert np.sign(obj.velocity[0]) == -np.sign(obj.center[1]) and abs(obj.center[1]) == LANE_Y
            lanes.setdefault(np.sign(obj.center[1]), set()).add(obj.velocity[0])
    assert sorted(lanes) == [-1, 1] and all(len(v) == 1 for v in lanes.values())
    for time in np.linspace(0.0, duration, 41):
        now = scene.at(time)
        xy = np.array([o.center[:2] for o in now.objects])
        radius = np.array([0.5 * np.hypot(*o.size[:2]) for o in now.objects])
        for k in movers:
            obj = now.objects[k]
            outline = footprint_outline(obj)
            if obj.kind == "pedestrian":  # on the sidewalk
                assert road_half_width < abs(obj.center[1]) - obj.size[0] / 2
                assert abs(obj.center[1]) + obj.size[0] / 2 < road_half_width + SIDEWALK_WIDTH
            else:  # clear of the ego lane
                assert np.all(np.abs(outline[:, 1]) > 1.2), (seed, time, k)
            near = np.flatnonzero(np.hypot(*(xy - xy[k]).T) < radius + radius[k])
            for j in near[near != k]:
                other = now.objects[j]
                assert not inside_footprint(outline, other).any(), (seed, time, obj.kind, other.kind)
                assert not inside_footprint(footprint_outline(other), obj).any(), (seed, time, obj.kind, other.kind)


# ------------------------------------------------------------------------------------------ the static street is kept
@pytest.mark.parametrize("seed", [0, 3, 11])
def test_moving_scene_is_the_static_street_plus_traffic(seed):
    """moving=False is the default and yields the static street; moving=True keeps every static object of that
    street unchanged and in order, except parked cars that reach into the lanes, then appends the traffic.
    (That moving=False equals the street of the code before motion existed was checked against that code
    when motion was added; see the commit message.)"""
    static, default, moving = make_scene(seed, moving=False), make_scene(seed), make_scene(seed, moving=True)
    assert [(o.kind, o.center.tolist(), o.size.tolist(), o.yaw) for o in static.objects] == \
           [(o.kind, o.center.tolist(), o.size.tolist(), o.yaw) for o in default.objects]
    assert not any(o.moving for o in static.objects) and "pedestrian" not in static.kinds
    assert (static.ground_height, static.slope) == (moving.ground_height, moving.slope)
    kept = [o for o in moving.objects if not o.moving]
    assert all(o.moving for o in moving.objects[len(kept):])  # movers come last
    lookup = {(o.kind, tuple(o.center), tuple(o.size), o.yaw, o.reflectivity): i for i, o in enumerate(static.objects)}
    index = [lookup[(o.kind, tuple(o.center), tuple(o.size), o.yaw, o.reflectivity)] for o in kept]
    assert index == sorted(index)
    removed = [o for i, o in enumerate(static.objects) if i not in set(index)]
    assert len(kept) >= len(static.objects) - 8
    for obj in removed:  # parked cars whose inner side reaches the outer lane edge (LANE_Y + 1 m) plus 0.3 m
        assert obj.kind == "car"
        assert np.abs(footprint_outline(obj)[:, 1]).min() < LANE_Y + 1.0 + 0.3 + 1e-6


def test_bad_traffic_requests_are_refused():
    with pytest.raises(ValueError, match=r"counts for moving kinds \['pedestrian'\] need moving=True"):
        make_scene(0, counts={"pedestrian": 3})
    with pytest.raises(ValueError, match="road_half_width >= "):
        make_scene(0, moving=True, road_half_width=3.0)
    with pytest.raises(ValueError, match="unknown object kinds \\['bus'\\]"):
        make_scene(0, moving=True, counts={"bus": 1})
    few = make_scene(0, moving=True, counts={"pedestrian": 0, "oncoming_car": 1, "same_way_car": 0})
    assert [o.kind for o in few.objects if o.moving] == ["car"]


# ------------------------------------------------------------------------------------------ the dataset
def test_simulated_sweeps_with_traffic_label_movers_where_they_are():
    from pcmae.data import SimulatedLidarSweeps

    kwargs = dict(num_frames=3, beams="hdl32", azimuth_resolution=1.0, range_noise=0.0, dropout=0.0,
                  frames_per_scene=3, cache_size=0)
    dataset = SimulatedLidarSweeps(moving=True, **kwargs)
    assert "pedestrian" not in SimulatedLidarSweeps(**kwargs).scene(0).kinds  # the default stays static
    scene = dataset.scene(0)
    movers = {k for k, o in enumerate(scene.objects) if o.moving}
    seen = set()
    for index in (0, 2):
        item = dataset[index]
        object_id, boxes = item["object_id"].numpy(), item["gt_boxes"].numpy().astype(np.float64)
        row = {int(k): r for r, k in enumerate(item["gt_object_id"].tolist())}
        for k in set(np.unique(object_id).tolist()) & movers:
            local = box_local(item["points"][object_id == k, :3].numpy().astype(np.float64), boxes[row[k]])
            assert np.all(np.abs(local) <= boxes[row[k], 3:6] / 2 + 2e-3), (index, scene.objects[k].kind)
            seen.add(scene.objects[k].kind)
        np.testing.assert_allclose(boxes, boxes_in_sensor_frame(scene.boxes(item["timestamp"]), item["pose"].numpy())
                                   [item["gt_object_id"].numpy()], atol=1e-4)
    assert seen == {"car", "pedestrian"}
