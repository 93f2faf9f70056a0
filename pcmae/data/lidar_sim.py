"""A small ray-casting LiDAR simulator: the embedded default for LiDAR demos (no download).

A procedural street scene (sloped ground plane; yawed boxes for cars, buildings and walls; vertical
cylinders for poles, tree trunks and pedestrians; optionally moving traffic) is swept by a Velodyne-like beam pattern (HDL-64E or HDL-32E).
Every ray is cast analytically in numpy (ray-plane, slab test in each box's frame, ray-cylinder with caps)
and keeps its nearest hit. Rays are culled per object by azimuth and elevation, so a 64 x 1800 sweep
against ~50 primitives takes a fraction of a second on one core.

Frames: the scene lives in a world frame (z up); a sensor pose ``(4, 4)`` maps sensor -> world. Sweeps are
returned in the SENSOR frame, columns ``x, y, z, intensity (0..1), ring`` (ring 0 = lowest beam, as the
Velodyne driver and nuScenes number them). Frames are instantaneous (no motion distortion within a sweep):
a sweep at ``timestamp`` t sees every moving object where ``scene.at(t)`` puts it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence

import numpy as np

GROUND = -1  # object id of ground returns
EPS = 1e-6


# ----------------------------------------------------------------------------------------------- beams
@dataclass(frozen=True)
class BeamPattern:
    """A spinning LiDAR: ``elevations_deg`` (R,) ascending (ring 0 = lowest), one column per azimuth step.

    Column j points at azimuth ``j * azimuth_resolution_deg`` (counter-clockwise from +x). Returns closer than
    ``min_range`` or farther than ``max_range`` (metres) are lost; ``range_noise`` is the std (m) of gaussian
    noise along the ray; ``dropout`` the probability that a return is lost at random.
    """

    name: str
    elevations_deg: tuple
    azimuth_resolution_deg: float = 0.2
    max_range: float = 100.0
    min_range: float = 1.0
    range_noise: float = 0.02
    dropout: float = 0.05
    sensor_height: float = 1.73  # metres above the ground when driving the procedural road
    _rays: tuple = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        elevations = np.asarray(self.elevations_deg, np.float64)
        if elevations.ndim != 1 or len(elevations) == 0 or np.any(np.diff(elevations) <= 0):
            raise ValueError(f"BeamPattern {self.name!r}: elevations_deg must be a non-empty ascending sequence")
        if not 0 < self.azimuth_resolution_deg <= 45:
            raise ValueError(f"BeamPattern {self.name!r}: azimuth_resolution_deg must be in (0, 45], "
                             f"got {self.azimuth_resolution_deg}")
        if not 0 <= self.min_range < self.max_range:
            raise ValueError(f"BeamPattern {self.name!r}: need 0 <= min_range < max_range, "
                             f"got {self.min_range}, {self.max_range}")
        if self.range_noise < 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"BeamPattern {self.name!r}: need range_noise >= 0 and 0 <= dropout < 1, "
                             f"got {self.range_noise}, {self.dropout}")
        object.__setattr__(self, "elevations_deg", tuple(float(e) for e in elevations))

    @property
    def num_rings(self) -> int:
        return len(self.elevations_deg)

    @property
    def num_columns(self) -> int:
        return int(round(360.0 / self.azimuth_resolution_deg))

    def rays(self):
        """Unit directions ``(num_columns * num_rings, 3)`` in the sensor frame and their ``ring (R,)`` int.

        Rays are ordered column by column (all rings of azimuth 0, then the next column), as a spinning
        sensor fires them. Computed once per pattern.
        """
        if self._rays is None:
            elevation = np.radians(np.asarray(self.elevations_deg))
            azimuth = np.arange(self.num_columns) * (2 * np.pi / self.num_columns)
            az, el = np.meshgrid(azimuth, elevation, indexing="ij")  # (columns, rings)
            directions = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
            ring = np.broadcast_to(np.arange(self.num_rings), az.shape)
            object.__setattr__(self, "_rays", (directions.reshape(-1, 3), ring.reshape(-1).copy()))
        return self._rays


def hdl64(**overrides) -> BeamPattern:
    """Velodyne HDL-64E (KITTI): 64 rings, +2.0 to -24.8 deg; upper block ~1/3 deg, lower ~1/2 deg apart."""
    elevations = np.concatenate([np.linspace(-24.8, -8.83, 32), np.linspace(-8.33, 2.0, 32)])
    return BeamPattern(**{"name": "hdl64", "elevations_deg": tuple(elevations), "max_range": 100.0,
                          "sensor_height": 1.73, **overrides})


def hdl32(**overrides) -> BeamPattern:
    """Velodyne HDL-32E (nuScenes): 32 rings evenly from -30.67 to +10.67 deg (1.33 deg apart)."""
    return BeamPattern(**{"name": "hdl32", "elevations_deg": tuple(np.linspace(-30.67, 10.67, 32)),
                          "max_range": 70.0, "sensor_height": 1.84, **overrides})


BEAM_PATTERNS = {"hdl64": hdl64, "hdl32": hdl32}


def beam_pattern(beams, **overrides) -> BeamPattern:
    """A BeamPattern from a name in BEAM_PATTERNS (with field overrides) or an existing pattern."""
    if isinstance(beams, BeamPattern):
        return replace(beams, **overrides) if overrides else beams
    if beams not in BEAM_PATTERNS:
        raise ValueError(f"unknown beam pattern {beams!r}; choose from {', '.join(BEAM_PATTERNS)}")
    return BEAM_PATTERNS[beams](**overrides)


# ----------------------------------------------------------------------------------------------- scene
@dataclass
class SceneObject:
    """One primitive. ``center``: (3,) world, mid-height; ``size``: (3,) length (local x), width, height;
    ``shape``: "box" (yawed by ``yaw`` about z) or "cylinder" (vertical, diameter = size[0]; ``yaw`` only
    orients its label box); ``velocity``: (2,) m/s in world x, y (zeros: static). A moving object keeps its
    height above the (planar) ground, so its centre moves by ``(vx, vy, slope . (vx, vy)) * time``."""

    kind: str
    shape: str
    center: np.ndarray
    size: np.ndarray
    yaw: float
    reflectivity: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))

    @property
    def moving(self) -> bool:
        return bool(np.any(self.velocity != 0))

    def box7(self) -> np.ndarray:
        """(7,) x, y, z, dx, dy, dz, yaw: the label box (a cylinder's bounding box)."""
        return np.concatenate([self.center, self.size, [self.yaw]])

    def footprint(self) -> tuple:
        """(cx, cy, length, width, yaw): the ground rectangle it covers (a cylinder's bounding square)."""
        return (float(self.center[0]), float(self.center[1]), float(self.size[0]), float(self.size[1]),
                float(self.yaw))


@dataclass
class Scene:
    """Ground plane ``z = ground_height + slope[0] * x + slope[1] * y`` plus ``objects`` (their places at
    time 0; moving ones drive with their ``velocity``, see ``at``)."""

    objects: List[SceneObject]
    ground_height: float = 0.0
    slope: tuple = (0.0, 0.0)
    ground_reflectivity: float = 0.3
    seed: Optional[int] = None

    def ground_z(self, x, y):
        return self.ground_height + self.slope[0] * np.asarray(x) + self.slope[1] * np.asarray(y)

    def at(self, time: float) -> "Scene":
        """The scene at ``time`` seconds: moving objects shifted by velocity * time along the ground (new
        SceneObjects), static ones shared. Object ids (list positions) are kept."""
        time = float(time)
        if time == 0.0 or not any(o.moving for o in self.objects):
            return self
        objects = []
        for obj in self.objects:
            if obj.moving:
                dx, dy = obj.velocity * time
                shift = np.array([dx, dy, self.slope[0] * dx + self.slope[1] * dy])
                obj = replace(obj, center=obj.center + shift)
            objects.append(obj)
        return replace(self, objects=objects)

    def boxes(self, time: float = 0.0) -> np.ndarray:
        """(K, 7) float64 label boxes of all objects (world frame) at ``time`` seconds."""
        objects = self.at(time).objects
        return np.stack([o.box7() for o in objects]) if objects else np.zeros((0, 7))

    def velocities(self) -> np.ndarray:
        """(K, 2) float64 world x, y velocity (m/s) of every object (zeros for static ones)."""
        return np.stack([o.velocity for o in self.objects]).astype(np.float64) if self.objects else np.zeros((0, 2))

    @property
    def kinds(self) -> List[str]:
        return [o.kind for o in self.objects]


# kind: shape, (length, width, height) ranges in metres (cylinders: (diameter, -, height)), reflectivity
OBJECT_KINDS = {
    "car": ("box", ((3.8, 5.0), (1.6, 2.0), (1.4, 1.9)), 0.6),
    "building": ("box", ((8.0, 25.0), (8.0, 20.0), (5.0, 18.0)), 0.4),
    "wall": ("box", ((5.0, 20.0), (0.2, 0.4), (1.0, 3.0)), 0.45),
    "pole": ("cylinder", ((0.15, 0.35), (0.0, 0.0), (4.0, 8.0)), 0.5),
    "trunk": ("cylinder", ((0.3, 0.8), (0.0, 0.0), (2.0, 5.0)), 0.25),
    "pedestrian": ("cylinder", ((0.4, 0.6), (0.0, 0.0), (1.5, 1.9)), 0.35),
}
STATIC_COUNTS = {"car": 12, "building": 10, "wall": 6, "pole": 10, "trunk": 10}
# moving traffic (moving=True): pedestrians on the sidewalks; cars in the two lanes beside the ego lane y = 0
MOVING_COUNTS = {"pedestrian": 8, "oncoming_car": 3, "same_way_car": 2}
LANE_Y = 2.4  # |y| of the lane centres: a car (width <= 2 m) keeps |y| >= 1.4 m, clear of the ego lane
LANE_SPEED = (5.0, 12.0)  # m/s, one speed per lane: cars of a lane never close in on each other
WALK_SPEED = (1.0, 1.8)  # m/s along the sidewalk, +x or -x
SIDEWALK_WIDTH = 3.0  # pedestrians walk at road_half_width < |y| < road_half_width + SIDEWALK_WIDTH


def make_scene(seed: int, length: float = 120.0, half_width: float = 60.0, road_half_width: float = 6.0,
               counts: Optional[dict] = None, max_slope: float = 0.02, moving: bool = False,
               duration: float = 10.0) -> Scene:
    """A procedural street along the world x axis, a pure function of ``seed`` (and the arguments).

    The road (|y| < road_half_width, x in [-length/2, length]) stays clear except for cars parked at its edges,
    so a sensor driving along y = 0 never enters an object. Buildings, walls, poles and trees stand beside it;
    objects do not overlap (bounding circles). ``counts`` overrides the number of each kind
    (default cars 12, buildings 10, walls 6, poles 10, trunks 10 = 48 primitives).

    ``moving=True`` adds traffic on top of exactly that static street: cars driving along the lanes
    y = +LANE_Y (``oncoming_car``, -x) and y = -LANE_Y (``same_way_car``, +x), one speed per lane in
    LANE_SPEED, spaced along x; and pedestrians walking along the sidewalks (WALK_SPEED, +x or -x). Static objects
    that reach into a lane's swept corridor (parked cars) are removed; nothing else of the static street changes. For
    ``0 <= time <= duration`` no mover enters |y| < 1.4 m or touches another object (checked footprint
    rectangles). Movers come after the static objects in ``scene.objects``; default counts MOVING_COUNTS.
    """
    counts = dict(counts or {})
    unknown = [k for k in counts if k not in STATIC_COUNTS and k not in MOVING_COUNTS]
    if unknown:
        raise ValueError(f"make_scene: unknown object kinds {unknown}; known: "
                         f"{', '.join([*STATIC_COUNTS, *MOVING_COUNTS])}")
    given = {k: counts.pop(k) for k in list(counts) if k in MOVING_COUNTS}
    if not moving and any(int(n) for n in given.values()):
        raise ValueError(f"make_scene: counts for moving kinds {sorted(given)} need moving=True")
    moving_counts = {**MOVING_COUNTS, **given}
    if moving and (duration < 0 or road_half_width < LANE_Y + 1.5):
        raise ValueError(f"make_scene: moving traffic needs duration >= 0 and road_half_width >= {LANE_Y + 1.5} "
                         f"(two lanes beside the ego lane); got {duration}, {road_half_width}")
    rng = np.random.default_rng([int(seed), 7])
    counts = {**STATIC_COUNTS, **counts}
    scene = Scene([], ground_height=float(rng.uniform(-0.5, 0.5)),
                  slope=tuple(float(s) for s in rng.uniform(-max_slope, max_slope, 2)), seed=int(seed))
    placed = []  # (x, y, radius)
    x_lo, x_hi = -length / 2, length
    for kind in ("building", "wall", "car", "pole", "trunk"):  # large first: rejection sampling fills gaps
        shape, ranges, reflectivity = OBJECT_KINDS[kind]
        for _ in range(int(counts[kind])):
            for _attempt in range(100):
                size = np.array([rng.uniform(*r) for r in ranges])
                if shape == "cylinder":
                    size[1] = size[0]
                x, y, yaw = _propose(kind, size, rng, x_lo, x_hi, half_width, road_half_width)
                radius = 0.5 * float(np.hypot(size[0], size[1]))
                if all(np.hypot(x - px, y - py) > radius + pr + 0.3 for px, py, pr in placed):
                    break
            else:
                continue  # the street is full: fewer objects of this kind
            placed.append((x, y, radius))
            bottom = _lowest_ground(scene, x, y, radius)
            center = np.array([x, y, bottom + size[2] / 2])
            scene.objects.append(SceneObject(kind, shape, center, size, float(yaw) if shape == "box" else 0.0,
                                             reflectivity * float(rng.uniform(0.8, 1.2))))
    if moving:
        _add_traffic(scene, np.random.default_rng([int(seed), 8]), moving_counts, x_lo, x_hi, road_half_width,
                     float(duration))
    return scene


def _add_traffic(scene: Scene, rng, counts, x_lo, x_hi, road_half_width, duration):
    """Lane cars, then pedestrians, placed by rejection so that no swept footprint meets another object."""
    movers = []
    for kind, lane_y, direction in (("oncoming_car", LANE_Y, -1.0), ("same_way_car", -LANE_Y, 1.0)):
        speed = float(rng.uniform(*LANE_SPEED))  # one speed per lane: spacing along x never shrinks
        for _ in range(int(counts[kind])):
            for _attempt in range(100):
                obj = _propose_mover("car", rng, x_lo, x_hi, lane_y, direction * speed, scene)
                if all(not _meet(obj, other, duration, 2.0) for other in movers):
                    movers.append(obj)
                    break
    corridors = [_swept(obj, duration) for obj in movers]
    scene.objects[:] = [o for o in scene.objects if not any(_rects_overlap(o.footprint(), c, 0.3) for c in corridors)]
    static = list(scene.objects)
    for _ in range(int(counts["pedestrian"])):
        for _attempt in range(100):
            side = float(rng.choice([-1.0, 1.0]))
            diameter = float(rng.uniform(*OBJECT_KINDS["pedestrian"][1][0]))
            y = side * (road_half_width + rng.uniform(diameter / 2 + 0.2, SIDEWALK_WIDTH - diameter / 2))
            velocity = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(*WALK_SPEED))
            obj = _propose_mover("pedestrian", rng, x_lo, x_hi, y, velocity, scene, diameter)
            if (not any(_rects_overlap(o.footprint(), _swept(obj, duration), 0.2) for o in static)
                    and all(not _meet(obj, other, duration, 0.2) for other in movers)):
                movers.append(obj)
                break
    scene.objects.extend(movers)


def _propose_mover(kind, rng, x_lo, x_hi, y, vx, scene, diameter=None) -> SceneObject:
    """A ``kind`` object at a random x in [x_lo, x_hi] on the line ``y``, moving with velocity (vx, 0),
    yawed along its motion, standing on the ground."""
    shape, ranges, reflectivity = OBJECT_KINDS[kind]
    size = np.array([rng.uniform(*r) for r in ranges])
    if shape == "cylinder":
        size[0] = size[1] = size[0] if diameter is None else diameter
    x = float(rng.uniform(x_lo, x_hi))
    radius = 0.5 * float(np.hypot(size[0], size[1]))
    center = np.array([x, y, _lowest_ground(scene, x, y, radius) + size[2] / 2])
    return SceneObject(kind, shape, center, size, 0.0 if vx > 0 else float(np.pi),
                       reflectivity * float(rng.uniform(0.8, 1.2)), np.array([vx, 0.0]))


def _swept(obj: SceneObject, duration: float) -> tuple:
    """The footprint rectangle an object moving along its yaw covers during [0, duration]."""
    cx, cy, length, width, yaw = obj.footprint()
    vx, vy = obj.velocity * duration
    return cx + vx / 2, cy + vy / 2, length + float(np.hypot(vx, vy)), width, yaw


def _meet(a: SceneObject, b: SceneObject, duration: float, margin: float) -> bool:
    """Whether two movers come within ``margin`` during [0, duration]: equal velocities keep their offset,
    otherwise (conservatively) their swept rectangles must stay apart."""
    if np.array_equal(a.velocity, b.velocity):
        return _rects_overlap(a.footprint(), b.footprint(), margin)
    return _rects_overlap(_swept(a, duration), _swept(b, duration), margin)


def _rects_overlap(a: tuple, b: tuple, margin: float = 0.0) -> bool:
    """Whether two ground rectangles (cx, cy, length, width, yaw) come within ``margin`` (separating axes)."""
    corners = []
    for cx, cy, length, width, yaw in (a, b):
        c, s = np.cos(yaw), np.sin(yaw)
        local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * [length / 2, width / 2]
        corners.append(local @ np.array([[c, s], [-s, c]]) + [cx, cy])
    for yaw in (a[4], b[4]):
        for axis in (np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])):
            pa, pb = corners[0] @ axis, corners[1] @ axis
            if pa.max() + margin < pb.min() or pb.max() + margin < pa.min():
                return False
    return True


def _propose(kind, size, rng, x_lo, x_hi, half_width, road_half_width):
    side = rng.choice([-1.0, 1.0])
    x = rng.uniform(x_lo, x_hi)
    if kind == "car":  # parked along the kerb, roughly aligned with the road
        y = side * (road_half_width - size[1] / 2 - rng.uniform(0.2, 0.8))
        yaw = rng.choice([0.0, np.pi]) + rng.normal(0, 0.05)
    elif kind == "pole":
        y, yaw = side * (road_half_width + rng.uniform(0.5, 2.0)), 0.0
    elif kind == "wall":
        y = side * (road_half_width + rng.uniform(2.5, 6.0))
        yaw = rng.normal(0, 0.1)
    elif kind == "trunk":
        y, yaw = side * rng.uniform(road_half_width + 2.0, half_width / 2), 0.0
    else:  # building
        clearance = road_half_width + 0.5 * np.hypot(size[0], size[1]) + 2.0
        y = side * rng.uniform(clearance, max(clearance, half_width))
        yaw = rng.uniform(-0.3, 0.3)
    return float(x), float(y), float(yaw)


def _lowest_ground(scene: Scene, x, y, radius) -> float:
    """Lowest ground height under a footprint, so objects never float on a slope."""
    return float(scene.ground_z(x, y) - radius * np.hypot(*scene.slope))


# ----------------------------------------------------------------------------------------------- ray casting
@dataclass
class RayHits:
    """Nearest hit per ray: ``distance (R,)`` (inf on a miss), ``object_id (R,)`` (index into scene.objects,
    GROUND = -1, -2 on a miss) and the unit surface ``normal (R, 3)`` facing the ray."""

    distance: np.ndarray
    object_id: np.ndarray
    normal: np.ndarray


def cast_rays(scene: Scene, origin: np.ndarray, directions: np.ndarray, cull: bool = True) -> RayHits:
    """Cast rays from one ``origin (3,)`` along unit ``directions (R, 3)`` (world frame) into ``scene``.

    ``cull=False`` tests every ray against every object: the slow reference that the culled path must match.
    """
    origin = np.asarray(origin, np.float64)
    directions = np.asarray(directions, np.float64)
    distance = np.full(len(directions), np.inf)
    object_id = np.full(len(directions), -2, np.int64)
    normal = np.zeros((len(directions), 3))
    _update(distance, object_id, normal, np.arange(len(directions)), *_hit_ground(scene, origin, directions),
            GROUND)
    culler = _RayCuller(origin, directions) if cull else None
    for k, obj in enumerate(scene.objects):
        index = culler.candidates(obj) if cull else np.arange(len(directions))
        if len(index) == 0:
            continue
        hit = _hit_box if obj.shape == "box" else _hit_cylinder
        _update(distance, object_id, normal, index, *hit(obj, origin, directions[index]), k)
    return RayHits(distance, object_id, normal)


def _update(distance, object_id, normal, index, t, n, k):
    closer = t < distance[index]
    index = index[closer]
    distance[index], object_id[index], normal[index] = t[closer], k, n[closer]


class _RayCuller:
    """Rays sorted by azimuth, so the rays that can reach an object's bounding cylinder are a slice."""

    def __init__(self, origin, directions):
        self.origin = origin
        azimuth = np.arctan2(directions[:, 1], directions[:, 0])
        self.order = np.argsort(azimuth, kind="stable")
        self.azimuth = azimuth[self.order]
        horizontal = np.hypot(directions[:, 0], directions[:, 1])
        with np.errstate(divide="ignore"):
            self.tan_elevation = (directions[:, 2] / horizontal)[self.order]

    def candidates(self, obj: SceneObject) -> np.ndarray:
        dx, dy = obj.center[0] - self.origin[0], obj.center[1] - self.origin[1]
        d = np.hypot(dx, dy)
        radius = 0.5 * np.hypot(obj.size[0], obj.size[1]) + 1e-3
        if d <= radius:
            return self.order  # the sensor stands inside the footprint circle: test every ray
        centre, half = np.arctan2(dy, dx), np.arcsin(radius / d)
        lo, hi = centre - half, centre + half
        pieces = [(max(lo, -np.pi), min(hi, np.pi))]
        if lo < -np.pi:
            pieces.append((lo + 2 * np.pi, np.pi))
        if hi > np.pi:
            pieces.append((-np.pi, hi - 2 * np.pi))
        slices = [np.arange(np.searchsorted(self.azimuth, a, "left"), np.searchsorted(self.azimuth, b, "right"))
                  for a, b in pieces]
        sorted_index = np.concatenate(slices)
        # elevation: the object spans heights [z_lo, z_hi] at horizontal distances [d - r, d + r]
        z_lo = obj.center[2] - obj.size[2] / 2 - self.origin[2]
        z_hi = obj.center[2] + obj.size[2] / 2 - self.origin[2]
        near, far = d - radius, d + radius
        tan_lo = min(z_lo / near, z_lo / far)
        tan_hi = max(z_hi / near, z_hi / far)
        tan = self.tan_elevation[sorted_index]
        sorted_index = sorted_index[(tan >= tan_lo - 1e-9) & (tan <= tan_hi + 1e-9)]
        return self.order[sorted_index]


def _hit_ground(scene: Scene, origin, directions):
    normal = np.array([-scene.slope[0], -scene.slope[1], 1.0])
    normal /= np.linalg.norm(normal)
    height = origin[2] - scene.ground_z(origin[0], origin[1])  # > 0 above the ground
    denom = directions @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -height * normal[2] / denom  # signed distance of the origin to the plane is height * normal_z
    t = np.where(t > EPS, t, np.inf)
    facing = np.where(denom[:, None] < 0, normal, -normal)
    return t, np.broadcast_to(facing, directions.shape)


def _hit_box(obj: SceneObject, origin, directions):
    """Slab test in the box frame (rotated by -yaw about the centre)."""
    c, s = np.cos(obj.yaw), np.sin(obj.yaw)
    world_to_box = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    o = world_to_box @ (origin - obj.center)
    d = directions @ world_to_box.T
    half = obj.size / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    t_min, t_max = np.fmin(t1, t2), np.fmax(t1, t2)  # fmin/fmax ignore the NaN of 0/0 (ray in a face plane)
    axis = np.argmax(t_min, axis=1)
    rows = np.arange(len(d))
    t_near, t_far = t_min[rows, axis], t_max.min(axis=1)
    t = np.where((t_near <= t_far) & (t_near > EPS), t_near, np.inf)
    local = np.zeros_like(d)
    local[rows, axis] = -np.sign(d[rows, axis])
    return t, local @ world_to_box  # box -> world is the transpose


def _hit_cylinder(obj: SceneObject, origin, directions):
    """Vertical cylinder of radius size[0] / 2 between its bottom and top caps."""
    radius = obj.size[0] / 2
    z_lo, z_hi = obj.center[2] - obj.size[2] / 2, obj.center[2] + obj.size[2] / 2
    ox, oy, oz = origin - obj.center
    dx, dy, dz = directions.T
    a = dx * dx + dy * dy
    b = 2 * (ox * dx + oy * dy)
    c = ox * ox + oy * oy - radius * radius
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)  # entry point; NaN when the ray misses
        z = origin[2] + t_side * dz
        t_side = np.where((t_side > EPS) & (z >= z_lo) & (z <= z_hi), t_side, np.inf)
        caps = []
        for z_cap in (z_lo, z_hi):
            t_cap = (z_cap - origin[2]) / dz
            px, py = ox + t_cap * dx, oy + t_cap * dy
            caps.append(np.where((t_cap > EPS) & (px * px + py * py <= radius * radius), t_cap, np.inf))
        side_normal = np.stack([ox + t_side * dx, oy + t_side * dy, np.zeros_like(dx)], 1) / radius
    t = np.fmin(t_side, np.fmin(*caps))
    cap_normal = np.zeros_like(directions)
    cap_normal[:, 2] = -np.sign(dz)
    normal = np.where((t == t_side)[:, None], side_normal, cap_normal)
    return t, np.nan_to_num(normal)


# ----------------------------------------------------------------------------------------------- sweeps
@dataclass
class SimulatedSweep:
    """``points (N, 5)`` float32 x, y, z (sensor frame), intensity 0..1, ring; ``object_id (N,)`` int64
    (index into scene.objects, GROUND = -1); ``pose (4, 4)`` float64 sensor -> world; ``timestamp`` seconds."""

    points: np.ndarray
    object_id: np.ndarray
    pose: np.ndarray
    timestamp: float = 0.0


def simulate_sweep(scene: Scene, pose: np.ndarray, beams="hdl64", rng: Optional[np.random.Generator] = None,
                   timestamp: float = 0.0) -> SimulatedSweep:
    """One sweep from a sensor at ``pose (4, 4)`` (sensor -> world). ``rng`` draws noise and dropout
    (default: a fixed seed, so a call is deterministic). Rays meet ``scene.at(timestamp)``: moving objects
    where they are at that time (the whole sweep is one instant)."""
    beams = beam_pattern(beams)
    rng = np.random.default_rng(0) if rng is None else rng
    pose = np.asarray(pose, np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"simulate_sweep: pose must be (4, 4) sensor -> world, got {pose.shape}")
    local_dirs, ring = beams.rays()
    scene = scene.at(timestamp)
    hits = cast_rays(scene, pose[:3, 3], local_dirs @ pose[:3, :3].T)
    distance = hits.distance
    keep = (distance >= beams.min_range) & (distance <= beams.max_range)
    if beams.dropout:
        keep &= rng.random(len(distance)) >= beams.dropout
    index = np.flatnonzero(keep)
    measured = distance[index] + (rng.normal(0.0, beams.range_noise, len(index)) if beams.range_noise else 0.0)
    world_dirs = local_dirs[index] @ pose[:3, :3].T
    object_id = hits.object_id[index]
    # object_id GROUND = -1 picks the last entry: the ground's reflectivity
    reflectivity = np.array([o.reflectivity for o in scene.objects] + [scene.ground_reflectivity])[object_id]
    cos_incidence = np.abs(np.einsum("ij,ij->i", hits.normal[index], world_dirs))
    intensity = np.clip(reflectivity * (0.3 + 0.7 * cos_incidence) + rng.normal(0.0, 0.02, len(index)), 0, 1)
    points = np.concatenate([local_dirs[index] * measured[:, None], intensity[:, None], ring[index, None]], 1)
    return SimulatedSweep(points.astype(np.float32), object_id, pose.copy(), float(timestamp))


def sensor_pose(scene: Scene, time: float, speed: float = 10.0, yaw_rate: float = 0.0, start=(0.0, 0.0),
                heading: float = 0.0, sensor_height: float = 1.73) -> np.ndarray:
    """(4, 4) sensor -> world after ``time`` seconds driving at ``speed`` m/s with constant ``yaw_rate`` rad/s
    from ``start`` (x, y) facing ``heading``; the sensor stays upright ``sensor_height`` above the ground."""
    yaw = heading + yaw_rate * time
    if abs(yaw_rate) < 1e-9:
        x, y = start[0] + speed * time * np.cos(heading), start[1] + speed * time * np.sin(heading)
    else:
        x = start[0] + speed / yaw_rate * (np.sin(yaw) - np.sin(heading))
        y = start[1] - speed / yaw_rate * (np.cos(yaw) - np.cos(heading))
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]]
    pose[:3, 3] = [x, y, float(scene.ground_z(x, y)) + sensor_height]
    return pose


@dataclass
class SimulatedSequence:
    """``sweeps``: one SimulatedSweep per frame (points in the sensor frame); ``poses (T, 4, 4)`` sensor ->
    world; ``timestamps (T,)`` seconds."""

    sweeps: List[SimulatedSweep]
    poses: np.ndarray
    timestamps: np.ndarray

    @property
    def points(self) -> List[np.ndarray]:
        return [s.points for s in self.sweeps]


def simulate_sequence(scene: Scene, num_frames: int, speed: float = 10.0, beams="hdl64", frame_rate: float = 10.0,
                      yaw_rate: float = 0.0, start: Sequence[float] = (0.0, 0.0), heading: float = 0.0,
                      seed: int = 0, first_frame: int = 0) -> SimulatedSequence:
    """Frames ``first_frame .. first_frame + num_frames - 1`` of a sensor driving through ``scene``.

    Frame i is taken at ``i / frame_rate`` seconds at ``sensor_pose(...)``; its noise is drawn from
    ``default_rng([seed, i])``, so any frame can be simulated alone and comes out identical.
    """
    beams = beam_pattern(beams)
    if num_frames < 1 or frame_rate <= 0:
        raise ValueError(f"simulate_sequence: need num_frames >= 1 and frame_rate > 0, got {num_frames}, {frame_rate}")
    sweeps = []
    for i in range(first_frame, first_frame + int(num_frames)):
        time = i / frame_rate
        pose = sensor_pose(scene, time, speed, yaw_rate, start, heading, beams.sensor_height)
        sweeps.append(simulate_sweep(scene, pose, beams, np.random.default_rng([int(seed), i]), time))
    return SimulatedSequence(sweeps, np.stack([s.pose for s in sweeps]), np.array([s.timestamp for s in sweeps]))


def boxes_in_sensor_frame(boxes: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World boxes ``(K, 7)`` x, y, z, dx, dy, dz, yaw -> the frame of a sensor at ``pose`` (sensor -> world).
    The yaw shift assumes an upright sensor (rotation about z only), as ``sensor_pose`` makes."""
    world_to_sensor = np.linalg.inv(pose)
    out = np.array(boxes, np.float64, copy=True).reshape(-1, 7)
    out[:, :3] = out[:, :3] @ world_to_sensor[:3, :3].T + world_to_sensor[:3, 3]
    out[:, 6] = _wrap(out[:, 6] + np.arctan2(world_to_sensor[1, 0], world_to_sensor[0, 0]))
    return out


def _wrap(angle):
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi
