"""pcmae.io: every reader on the real sample files (counts and ranges from shared/data/README.md) and on
small files written here, plus the error paths (wrong size, NaN, empty, truncated, unknown extension)."""
from __future__ import annotations

import re
import struct
import sys
import time
import tracemalloc

import numpy as np
import pytest

from pcmae.io import (EmptyPointCloudError, NonFinitePointsError, PointCloudFormatError, las_header_offset,
                      load_points, lzf_decompress, read_las, read_ply, sample_surface)
from tests.fixtures_layouts import (UNIT_CUBE_QUADS, UNIT_CUBE_VERTICES, lzf_compress, write_off, write_pcd,
                                    write_ply)
from tests.shared_data import shared_data_path


def assert_ranges(points, ranges, tol=2e-3):
    """ranges: [(lo, hi)] per column as printed in the README (4 significant digits)."""
    for column, (lo, hi) in enumerate(ranges):
        scale = max(abs(lo), abs(hi), 1e-3)
        assert points[:, column].min() == pytest.approx(lo, abs=tol * scale), f"column {column} min"
        assert points[:, column].max() == pytest.approx(hi, abs=tol * scale), f"column {column} max"


# --- real files ---------------------------------------------------------------------------------------------

BUNNY_RANGES = [(-0.09394, 0.05956), (0.03742, 0.1845), (-0.05503, 0.0578)]


def test_ascii_pcd_bunny():
    points = load_points(shared_data_path("pcl", "test", "bunny.pcd"))
    assert points.shape == (397, 3) and points.dtype == np.float32
    assert_ranges(points, BUNNY_RANGES)
    np.testing.assert_allclose(points[0], [0.0054216, 0.11349, 0.040749], rtol=1e-6)  # first data line


def test_ascii_pcd_extra_fields_in_requested_order():
    bun0 = load_points(shared_data_path("pcl", "test", "bun0.pcd"), fields=["curvature", "normal_x"])
    bunny = load_points(shared_data_path("pcl", "test", "bunny.pcd"))
    assert bun0.shape == (397, 5)
    np.testing.assert_allclose(bun0[:, :3], bunny, atol=1e-6)  # the same scan, written with more digits
    assert (bun0[:, 3] >= 0).all() and np.abs(bun0[:, 4]).max() <= 1.0  # curvature, then a normal component
    with pytest.raises(PointCloudFormatError, match=r"bun0\.pcd.*no field 'intensity'.*curvature"):
        load_points(shared_data_path("pcl", "test", "bun0.pcd"), fields=["intensity"])


def test_binary_pcd_open3d_fragment_with_normals_and_rgb():
    path = shared_data_path("open3d", "examples", "test_data", "Feature", "cloud_bin_0.pcd")
    points = load_points(path, fields=["normal_x", "normal_y", "normal_z", "rgb"])
    assert points.shape == (3903, 9)
    assert_ranges(points, [(1.232, 2.949), (-0.004852, 2.086), (-2.29, -0.809)])
    np.testing.assert_allclose(np.linalg.norm(points[:, 3:6], axis=1), 1.0, atol=1e-3)  # unit normals
    rgb = points[:, 6:]
    assert rgb.min() >= 0 and rgb.max() <= 255 and np.array_equal(rgb, np.round(rgb)) and rgb.std() > 1


def test_binary_compressed_pcd_milk_matches_readme_and_colour_version():
    milk = load_points(shared_data_path("pcl", "test", "milk.pcd"))
    assert milk.shape == (13704, 3)
    assert_ranges(milk, [(-0.1401, 0.01381), (-0.2638, -0.01173), (0.714, 0.891)])
    colour = load_points(shared_data_path("pcl", "test", "milk_color.pcd"), fields=["rgba"])
    np.testing.assert_array_equal(colour[:, :3], milk)  # same cloud, second file with packed colour
    assert colour.shape == (13704, 6) and 0 <= colour[:, 3:].min() and colour[:, 3:].max() <= 255


def test_binary_compressed_pcd_chef_normals_are_unit():
    path = shared_data_path("pcl", "doc", "tutorials", "content", "sources", "alignment_prerejective", "chef.pcd")
    points = load_points(path, fields=["normal_x", "normal_y", "normal_z"])
    assert points.shape == (5092, 6)
    assert_ranges(points, [(-0.1111, 0.1621), (-0.09443, 0.02853), (-0.6956, -0.5885)])
    np.testing.assert_allclose(np.linalg.norm(points[:, 3:], axis=1), 1.0, atol=1e-3)


def test_organised_pcd_with_nan_slots():
    path = shared_data_path("pcl", "test", "table_scene_mug_stereo_textured.pcd")
    with pytest.raises(NonFinitePointsError, match=r"table_scene_mug.*97920 of 307200.*drop_nonfinite=True"):
        load_points(path)
    points = load_points(path, fields=["rgba"], drop_nonfinite=True)
    assert points.shape == (209280, 6)
    assert_ranges(points, [(-0.4564, 0.7152), (-0.5107, 0.1792), (0.69, 2.593)])


def test_las_and_laz_hold_the_same_points():
    origin = (635000.0, 848000.0, 0.0)
    las = load_points(shared_data_path("laspy", "tests", "data", "simple.las"), fields=["intensity"], origin=origin)
    laz = load_points(shared_data_path("laspy", "tests", "data", "simple.laz"), fields=["intensity"], origin=origin)
    assert las.shape == (1065, 4)
    np.testing.assert_array_equal(las, laz)
    exact = read_las(shared_data_path("laspy", "tests", "data", "simple.las"))  # float64, scaled
    assert_ranges(exact, [(635619.85, 638982.55), (848899.70, 853535.43), (406.59, 586.38)], tol=1e-7)
    np.testing.assert_allclose(las[:, :3], exact - origin, atol=5e-4)  # millimetres kept around the origin
    assert las[:, 3].max() > 0 and np.array_equal(las[:, 3], np.round(las[:, 3]))
    with pytest.raises(PointCloudFormatError, match=r"simple\.las.*no LAS dimension 'ring'.*intensity"):
        load_points(shared_data_path("laspy", "tests", "data", "simple.las"), fields=["ring"], origin=origin)


def test_las_lossy_float32_cast_is_refused_with_the_origin_to_pass():
    """x ~ 6.4e5 m sits on a 6.25 cm float32 grid: the cast moved points by up to 3 cm silently before."""
    path = shared_data_path("laspy", "tests", "data", "simple.las")
    # the header offset is (0, 0, 0) here, so the message names a corner of the data instead
    with pytest.raises(PointCloudFormatError, match=r"simple\.las: coordinates up to 853535 m lose 0\.03 m in "
                       r"float32.*pass origin=\(635619\.0, 848899\.0, 406\.0\)"):
        load_points(path)
    corner = (635619.0, 848899.0, 406.0)
    local = load_points(path, origin=corner)
    np.testing.assert_allclose(local.astype(np.float64), read_las(path) - corner, atol=1e-4)


def test_las_header_origin_and_las_header_offset():
    path = shared_data_path("laspy", "tests", "data", "1_4_w_evlr.las")  # LAS 1.4, offset near the data
    offset = las_header_offset(path)
    assert offset == pytest.approx((1692500.352, 1817499.596, 7350.194653))
    with pytest.raises(PointCloudFormatError, match=r"1_4_w_evlr\.las: .*lose 0\.06.*pass origin='header'"):
        load_points(path)
    local = load_points(path, origin="header")
    exact = read_las(path)
    assert local.dtype == np.float32 and local.shape == (1000, 3)
    np.testing.assert_allclose(local.astype(np.float64), exact - offset, atol=1e-4)
    np.testing.assert_array_equal(read_las(path, origin="header"), exact - offset)  # float64 subtraction
    with pytest.raises(ValueError, match="origin must be"):
        load_points(path, origin="centre")
    with pytest.raises(ValueError, match=r"origin applies to \.las/\.laz"):
        load_points(shared_data_path("pcl", "test", "bunny.pcd"), origin="header")


def test_laz_autzen_trim():
    points = read_las(shared_data_path("laspy", "tests", "data", "autzen_trim.laz"), fields=["classification"])
    assert points.shape == (110000, 4)
    assert_ranges(points, [(636001.76, 637179.22), (848935.20, 849497.90), (406.26, 520.51)], tol=1e-7)
    assert set(np.unique(points[:, 3])) == {1.0, 2.0}


def test_missing_laspy_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "laspy", None)  # makes `import laspy` fail
    with pytest.raises(ImportError, match=r"pip install pcmae\[formats\]"):
        load_points(shared_data_path("laspy", "tests", "data", "simple.las"))


def test_kitti_bin_by_layout_or_columns():
    path = shared_data_path("openpcdet", "data", "kitti", "training", "velodyne", "000000.bin")
    default = load_points(path, layout="kitti")
    assert default.shape == (115384, 4)
    np.testing.assert_array_equal(load_points(path, columns=4), default)
    assert_ranges(default, [(-71.04, 73.04), (-21.1, 53.8), (-5.16, 2.672), (0.0, 0.99)])
    np.testing.assert_array_equal(load_points(path, layout="kitti", fields=["intensity"]), default)
    np.testing.assert_array_equal(load_points(path, layout="kitti", fields=[]), default)


def test_bin_without_layout_or_columns_is_refused():
    """A nuScenes sweep (5 columns) read with the old 4-column default came back as (43440, 4) garbage."""
    path = shared_data_path("mmdet3d", "demo", "data", "nuscenes",
                            "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin")
    with pytest.raises(PointCloudFormatError, match=r"LIDAR_TOP.*\.bin: a raw \.bin sweep .*pass layout=.*kitti"):
        load_points(path)
    assert load_points(path, layout="nuscenes").shape == (34688, 5)


def test_nuscenes_bin_five_columns_and_wrong_column_count():
    path = shared_data_path("mmdet3d", "demo", "data", "nuscenes",
                            "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin")
    points = load_points(path, layout="nuscenes")
    assert points.shape == (34688, 5)
    assert_ranges(points, [(-58.0, 96.85), (-96.29, 98.59), (-3.417, 19.03), (0, 255), (0, 31)])
    assert np.array_equal(points[:, 4], np.round(points[:, 4]))  # ring index
    ring_only = load_points(path, layout="nuscenes", fields=["ring"])
    np.testing.assert_array_equal(ring_only, points[:, [0, 1, 2, 4]])
    with pytest.raises(PointCloudFormatError, match=r"LIDAR_TOP.*693760 bytes.*6 float32 columns"):
        load_points(path, columns=6)


def test_waymo_npy_and_open3d_pts():
    waymo = load_points(shared_data_path("openpcdet", "pcdet", "datasets", "waymo", "0004.npy"))
    assert waymo.shape == (172359, 6)
    assert_ranges(waymo, [(-71.77, 59.33), (-11.49, 37.22), (-0.2729, 5.531)])
    assert waymo[:, 3].max() == pytest.approx(900.0)
    pts = load_points(shared_data_path("open3d", "docs", "test_data", "open3d_downloads", "tests", "bunnyData.pts"))
    assert pts.shape == (30571, 3)
    assert_ranges(pts, [(-0.09469, 0.06101), (0.04001, 0.1873), (-0.06187, 0.0588)])


def test_ply_mesh_vertices_and_surface_samples():
    path = shared_data_path("open3d", "examples", "test_data", "bathtub_0154.ply")
    vertices = load_points(path)
    assert vertices.shape == (1494, 3)
    mesh = read_ply(path, faces=True)
    assert mesh.faces.shape == (1194, 3) and mesh.faces.min() >= 0 and mesh.faces.max() < 1494
    samples = load_points(path, sample_surface=2048, seed=1)
    assert samples.shape == (2048, 3)
    assert (samples >= vertices.min(0) - 1e-2).all() and (samples <= vertices.max(0) + 1e-2).all()
    np.testing.assert_array_equal(load_points(path, sample_surface=2048, seed=1), samples)
    assert not np.array_equal(load_points(path, sample_surface=2048, seed=2), samples)


# --- LZF ----------------------------------------------------------------------------------------------------

def test_lzf_handcrafted_stream_with_overlapping_reference():
    # literal "abc", then a back-reference of 9 bytes at distance 3 (overlaps its own output), then literal "Z"
    stream = bytes([2]) + b"abc" + bytes([(7 << 5) | 0, 9 - 9, 2]) + bytes([0]) + b"Z"
    assert lzf_decompress(stream, 13) == b"abcabcabcabcZ"


def test_lzf_round_trip_and_corrupt_streams():
    rng = np.random.default_rng(0)
    data = (bytes(rng.integers(0, 4, 3000, dtype=np.uint8)) + b"\x00" * 700 + bytes(range(256)) * 3)
    packed = lzf_compress(data)
    assert len(packed) < len(data)
    assert lzf_decompress(packed, len(data)) == data
    with pytest.raises(ValueError, match="back-reference"):
        lzf_decompress(bytes([0]) + b"a" + bytes([0x20, 5]), 4)  # reference 6 bytes back after 1 byte
    with pytest.raises(ValueError):
        lzf_decompress(packed[:-5], len(data))
    with pytest.raises(ValueError, match="header says"):
        lzf_decompress(packed, len(data) + 1)


# --- small files written here -------------------------------------------------------------------------------

def _pcd_cloud(n=50, seed=0):
    rng = np.random.default_rng(seed)
    cloud = np.zeros(n, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("uv", "<f4", (2,)),
                         ("rgba", "<u4"), ("ring", "<u2")])
    for axis in "xyz":
        cloud[axis] = rng.normal(size=n)
    cloud["intensity"] = rng.uniform(0, 100, n)
    cloud["uv"] = rng.uniform(size=(n, 2))
    cloud["rgba"] = (255 << 24) | (10 << 16) | (20 << 8) | rng.integers(0, 256, n)
    cloud["ring"] = np.arange(n) % 32
    return cloud


@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_pcd_data_kinds_read_back_the_same_values(tmp_path, data):
    cloud = _pcd_cloud()
    path = write_pcd(tmp_path / f"c_{data}.pcd", cloud, data)
    points = load_points(path, fields=["ring", "uv", "intensity", "rgba"])
    assert points.shape == (50, 10)
    np.testing.assert_allclose(points[:, 0], cloud["x"], rtol=1e-6)
    np.testing.assert_array_equal(points[:, 3], cloud["ring"])
    np.testing.assert_allclose(points[:, 4:6], cloud["uv"], rtol=1e-6)
    np.testing.assert_allclose(points[:, 6], cloud["intensity"], rtol=1e-6)
    np.testing.assert_array_equal(points[:, 7:], np.column_stack([np.full(50, 10), np.full(50, 20),
                                                                   cloud["rgba"] & 0xFF]))


@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_truncated_pcd_is_named(tmp_path, data):
    path = write_pcd(tmp_path / "t.pcd", _pcd_cloud(), data)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - 40])
    with pytest.raises(PointCloudFormatError, match=r"t\.pcd.*(truncated|corrupt)"):
        load_points(path)


def test_pcd_header_problems(tmp_path):
    path = tmp_path / "noxyz.pcd"
    cloud = np.zeros(3, [("a", "<f4"), ("b", "<f4"), ("c", "<f4")])
    write_pcd(path, cloud, "ascii")
    with pytest.raises(PointCloudFormatError, match=r"noxyz\.pcd.*no field 'x'"):
        load_points(path)
    path.write_bytes(path.read_bytes().split(b"DATA")[0])
    with pytest.raises(PointCloudFormatError, match="no DATA line"):
        load_points(path)


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_formats_vertices_fields_and_faces(tmp_path, fmt):
    intensity = np.arange(8, dtype=np.float32) * 1.5
    path = write_ply(tmp_path / "cube.ply", UNIT_CUBE_VERTICES, UNIT_CUBE_QUADS, fmt, {"intensity": intensity})
    points = load_points(path, fields="intensity")
    np.testing.assert_array_equal(points, np.column_stack([UNIT_CUBE_VERTICES, intensity]))
    mesh = read_ply(path, faces=True)
    assert mesh.faces.shape == (12, 3)  # 6 quads fan-triangulated
    samples = load_points(path, sample_surface=600, seed=0)
    on_face = np.isclose(samples, 0, atol=1e-6) | np.isclose(samples, 1, atol=1e-6)
    assert on_face.any(axis=1).all() and (samples >= -1e-6).all() and (samples <= 1 + 1e-6).all()
    with pytest.raises(PointCloudFormatError, match="no vertex property 'red'"):
        load_points(path, fields=["red"])


def test_binary_ply_with_mixed_polygon_sizes(tmp_path):
    faces = UNIT_CUBE_QUADS[:5] + [(1, 5, 7), (1, 7, 3)]  # last quad given as two triangles
    path = write_ply(tmp_path / "mixed.ply", UNIT_CUBE_VERTICES, faces, "binary_big_endian")
    mesh = read_ply(path, faces=True)
    assert mesh.faces.shape == (12, 3)
    assert {tuple(sorted(t)) for t in mesh.faces[-2:].tolist()} == {(1, 5, 7), (1, 3, 7)}
    samples = load_points(path, sample_surface=1200, seed=0)
    assert np.isclose(samples[:, 2], 1.0, atol=1e-6).mean() == pytest.approx(1 / 6, abs=0.04)


def test_ply_without_faces_cannot_be_sampled_and_truncated_ply(tmp_path):
    path = write_ply(tmp_path / "pts.ply", UNIT_CUBE_VERTICES, None, "binary_little_endian")
    with pytest.raises(PointCloudFormatError, match=r"pts\.ply.*needs faces"):
        load_points(path, sample_surface=10)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(PointCloudFormatError, match=r"pts\.ply.*truncated"):
        load_points(path)


@pytest.mark.parametrize("counts_on_first_line", [False, True])
def test_off_mesh_sampling_is_uniform_over_area(tmp_path, counts_on_first_line):
    vertices = UNIT_CUBE_VERTICES * [1.0, 1.0, 3.0]  # faces of area 1 (x2) and 3 (x4): total 14
    path = write_off(tmp_path / "box.off", vertices, UNIT_CUBE_QUADS, counts_on_first_line)
    np.testing.assert_array_equal(load_points(path), vertices.astype(np.float32))
    samples = load_points(path, sample_surface=14000, seed=0)
    bottom_or_top = np.isclose(samples[:, 2], 0, atol=1e-5) | np.isclose(samples[:, 2], 3, atol=1e-5)
    assert bottom_or_top.mean() == pytest.approx(2 / 14, abs=0.02)  # area-weighted, not per face
    assert (samples[:, 2] > 1.5).mean() == pytest.approx(0.5, abs=0.03)  # uniform along the long sides


def test_off_truncated(tmp_path):
    path = write_off(tmp_path / "cut.off", UNIT_CUBE_VERTICES, UNIT_CUBE_QUADS)
    path.write_text("\n".join(path.read_text().splitlines()[:-2]))
    with pytest.raises(PointCloudFormatError, match=r"cut\.off.*truncated"):
        load_points(path)


def test_sample_surface_rejects_zero_area_and_bad_indices():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="area"):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 5, rng)
    with pytest.raises(ValueError, match="indices"):
        sample_surface(np.eye(3), np.array([[0, 1, 3]]), 5, rng)


def test_text_formats(tmp_path):
    rows = np.array([[1.5, -2.0, 3.25, 0.1, 0.2, 0.3], [4.0, 5.0, 6.0, 0.0, 1.0, 0.0]])
    modelnet = tmp_path / "airplane_0001.txt"
    modelnet.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")
    np.testing.assert_allclose(load_points(modelnet), rows, rtol=1e-6)
    xyz = tmp_path / "cloud.xyz"
    xyz.write_text("# x y z\n1 2 3\n4 5 6\n")
    np.testing.assert_array_equal(load_points(xyz, columns=3), [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(PointCloudFormatError, match=r"cloud\.xyz.*3 columns in the file, 4 expected"):
        load_points(xyz, columns=4)
    pts = tmp_path / "short.pts"
    pts.write_text("3\n1 2 3\n4 5 6\n")
    with pytest.raises(PointCloudFormatError, match=r"short\.pts.*declares 3 points but 2 follow"):
        load_points(pts)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("1 2 3\n4 5\n")
    with pytest.raises(PointCloudFormatError, match=r"ragged\.txt"):
        load_points(ragged)


def test_bin_errors_name_the_file(tmp_path):
    wrong = tmp_path / "odd.bin"
    np.arange(10, dtype="<f4").tofile(wrong)  # 40 bytes: not a multiple of 16
    with pytest.raises(PointCloudFormatError, match=r"odd\.bin: 40 bytes .* 16 .*4 float32 columns"):
        load_points(wrong, layout="kitti")
    np.testing.assert_array_equal(load_points(wrong, columns=5).shape, (2, 5))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(EmptyPointCloudError, match=r"empty\.bin"):
        load_points(empty, columns=3)
    with pytest.raises(ValueError, match="need named columns"):
        load_points(wrong, columns=5, fields=["intensity"])
    with pytest.raises(ValueError, match="unknown layout 'kiti'"):
        load_points(wrong, layout="kiti")


def test_nonfinite_coordinates_error_or_drop(tmp_path):
    points = np.arange(20, dtype="<f4").reshape(5, 4)
    points[1, 0], points[3, 2] = np.nan, np.inf
    points[4, 3] = np.nan  # intensity is not a coordinate
    path = tmp_path / "nan.bin"
    points.tofile(path)
    with pytest.raises(NonFinitePointsError, match=r"nan\.bin: 2 of 5 points"):
        load_points(path, layout="kitti")
    kept = load_points(path, layout="kitti", drop_nonfinite=True)
    np.testing.assert_array_equal(kept[:, :3], points[[0, 2, 4], :3])
    all_nan = tmp_path / "allnan.npy"
    np.save(all_nan, np.full((3, 3), np.nan, np.float32))
    with pytest.raises(EmptyPointCloudError, match=r"allnan\.npy: all 3 points"):
        load_points(all_nan, drop_nonfinite=True)


def test_npy_errors(tmp_path):
    cut = tmp_path / "cut.npy"
    np.save(cut, np.zeros((100, 3), np.float32))
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(PointCloudFormatError, match=r"cut\.npy"):
        load_points(cut)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(9, np.float32))
    with pytest.raises(PointCloudFormatError, match=r"flat\.npy.*2-D"):
        load_points(flat)


def test_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "scan.e57"
    path.write_bytes(b"x")
    with pytest.raises(PointCloudFormatError, match=r"scan\.e57.*unsupported extension.*\.pcd.*\.laz"):
        load_points(path)
    with pytest.raises(FileNotFoundError, match="nothere.pcd"):
        load_points(tmp_path / "nothere.pcd")
    with pytest.raises(ValueError, match="columns/layout apply to raw arrays"):
        load_points(tmp_path / "nothere.pcd", layout="kitti")


# --- header counts checked before allocating (issue 8, section 6) --------------------------------------------

def _patched_copy(source, target, offset, fmt, value):
    raw = bytearray(source.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    target.write_bytes(bytes(raw))
    return target


def _peak_bytes(call):
    """(result or exception, traced peak bytes) of ``call()``."""
    tracemalloc.start()
    try:
        try:
            result = call()
        except Exception as err:  # noqa: BLE001 - returned to the test
            result = err
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["simple.las", "simple.laz"])
def test_las_claiming_50m_points_raises_without_allocating(tmp_path, name):
    """Before: 1.7 GB allocated, then the 1,065 real points returned (.las) or a raw lazrs.LazrsError (.laz)."""
    path = _patched_copy(shared_data_path("laspy", "tests", "data", name), tmp_path / name, 107, "<I", 50_000_000)
    error, peak = _peak_bytes(lambda: read_las(path))
    assert isinstance(error, PointCloudFormatError), error
    assert name in str(error) and "declares 50000000 points" in str(error)
    assert peak < 16 * 2**20  # one 65536-point chunk at most


def test_las_vlr_count_0xffffffff_raises_at_once(tmp_path):
    """Before: laspy looped over 4 billion VLRs with growing memory."""
    path = _patched_copy(shared_data_path("laspy", "tests", "data", "simple.las"), tmp_path / "vlr.las",
                         100, "<I", 0xFFFFFFFF)
    started = time.perf_counter()
    with pytest.raises(PointCloudFormatError, match=r"vlr\.las: header declares 4294967295 VLRs"):
        read_las(path)
    assert time.perf_counter() - started < 1.0


def test_las14_counts_and_evlrs_are_checked(tmp_path):
    source = shared_data_path("laspy", "tests", "data", "1_4_w_evlr.las")
    legacy = _patched_copy(source, tmp_path / "legacy.las", 107, "<I", 50_000_000)
    with pytest.raises(PointCloudFormatError, match=r"legacy\.las: LAS 1\.4 header declares 1000 points.*50000000"):
        read_las(legacy)
    evlrs = _patched_copy(source, tmp_path / "evlr.las", 243, "<I", 0xFFFFFFFF)
    with pytest.raises(PointCloudFormatError, match=r"evlr\.las: header declares 4294967295 extended VLRs"):
        read_las(evlrs)
    cut = tmp_path / "cut.las"
    cut.write_bytes(source.read_bytes()[:-1])  # the last EVLR loses a byte
    with pytest.raises(PointCloudFormatError, match=r"cut\.las: truncated: an extended VLR"):
        read_las(cut)


@pytest.mark.parametrize("major, minor", [(1, 9), (2, 2), (0, 0)])
def test_bad_las_version_byte_is_a_format_error(tmp_path, major, minor):
    """Before: version 1.9 gave a bare struct.error, 2.2 was read as if it were 1.2."""
    path = tmp_path / "version.las"
    raw = bytearray(shared_data_path("laspy", "tests", "data", "simple.las").read_bytes())
    raw[24], raw[25] = major, minor
    path.write_bytes(bytes(raw))
    with pytest.raises(PointCloudFormatError,
                       match=rf"version\.las: unsupported LAS version byte\(s\) {major}\.{minor}"):
        read_las(path)


def test_damaged_laz_is_a_format_error_naming_the_file(tmp_path):
    """Before: 22 of 54 damaged .laz gave lazrs.LazrsError without a file name."""
    raw = shared_data_path("laspy", "tests", "data", "simple.laz").read_bytes()
    cut = tmp_path / "cut.laz"
    cut.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(PointCloudFormatError, match=r"cut\.laz: LAZ chunk table offset 18203 lies outside"):
        read_las(cut)
    flipped = bytearray(raw)
    flipped[6391] ^= 0x5A
    (tmp_path / "flip.laz").write_bytes(bytes(flipped))
    with pytest.raises(PointCloudFormatError, match=r"flip\.laz: corrupt or truncated LAZ point data: the header "
                                                    r"declares 1065 points, decoding failed after 0"):
        read_las(tmp_path / "flip.laz")


def test_tiny_binary_compressed_pcd_claiming_4gb_is_refused_before_allocating(tmp_path):
    """Before: a 193-byte file made the LZF decoder allocate its 4.2 GB output buffer from the header."""
    points = (2**32 - 1) // 12
    header = (f"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {points}\nHEIGHT 1\n"
              f"POINTS {points}\nDATA binary_compressed\n").encode()
    body = bytes([31]) + bytes(32) + bytes([0xE0, 0xFF, 0x00]) * 10  # a valid start, then repeats
    path = tmp_path / "tiny.pcd"
    path.write_bytes(header + struct.pack("<II", len(body), points * 12) + body)
    assert path.stat().st_size < 256
    error, peak = _peak_bytes(lambda: load_points(path))
    assert isinstance(error, PointCloudFormatError) and "tiny.pcd" in str(error) and "88x" in str(error), error
    assert peak < 2**20
    with pytest.raises(ValueError, match="cannot expand"):
        lzf_decompress(body, 10**9)


@pytest.mark.parametrize("line, message", [("POINTS -5", "bad PCD header: POINTS -5 must equal WIDTH 50"),
                                           ("WIDTH 50000000", "bad PCD header: POINTS 50 must equal WIDTH 50000000"),
                                           ("COUNT 0 1 1 2 1 1 1", "bad PCD header COUNT 0 1 1 2 1 1 1")])
def test_pcd_header_counts_must_agree(tmp_path, line, message):
    """Before: POINTS -5 read every point of a binary file, WIDTH disagreeing with POINTS was ignored."""
    path = write_pcd(tmp_path / "h.pcd", _pcd_cloud(), "binary")
    key = line.split()[0].encode()
    raw = path.read_bytes()
    start = raw.index(b"\n" + key) + 1
    path.write_bytes(raw[:start] + line.encode() + raw[raw.index(b"\n", start):])
    with pytest.raises(PointCloudFormatError, match=rf"h\.pcd: {message}"):
        load_points(path)


def test_ply_counts_and_faces_are_checked(tmp_path):
    path = write_ply(tmp_path / "cube.ply", UNIT_CUBE_VERTICES, UNIT_CUBE_QUADS, "binary_little_endian")
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"element vertex 8", b"element vertex -1"))
    with pytest.raises(PointCloudFormatError, match=r"cube\.ply: bad PLY header line 'element vertex -1'"):
        load_points(path)
    path.write_bytes(raw[:-3])  # the vertices are whole, the last face is cut
    with pytest.raises(PointCloudFormatError, match=r"cube\.ply: truncated or corrupt binary PLY body"):
        load_points(path)


def test_npy_shape_is_checked_against_the_file_size_before_allocating(tmp_path):
    """Before: a 3.6 KB .npy whose header says 50 M rows allocated 1.1 GB."""
    path = tmp_path / "rows.npy"
    np.save(path, np.zeros((300, 3), np.float32))
    raw = path.read_bytes()
    header_end = raw.index(b"\n") + 1
    text = raw[10:header_end].decode().replace("(300, 3)", "(50000000, 3)")
    path.write_bytes(raw[:10] + text[:header_end - 11].ljust(header_end - 11).encode() + b"\n" + raw[header_end:])
    error, peak = _peak_bytes(lambda: load_points(path))
    assert isinstance(error, PointCloudFormatError) and "rows.npy" in str(error) and "50000000" in str(error), error
    assert peak < 2**20


def test_off_negative_counts_and_face_sizes(tmp_path):
    path = write_off(tmp_path / "neg.off", UNIT_CUBE_VERTICES, UNIT_CUBE_QUADS)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ["-1 6 0"] + lines[3:]))
    with pytest.raises(PointCloudFormatError, match=r"neg\.off: bad OFF counts line .*negative"):
        load_points(path)
    path.write_text("\n".join(lines[:-1] + ["-3 0 1 2"]))
    with pytest.raises(PointCloudFormatError, match=r"neg\.off: unreadable OFF body"):
        load_points(path)


def test_object_datasets_check_nonfinite_points(tmp_path):
    """ShapeNet55 / ModelNet40 read .npy / .txt directly: a NaN point reached the model before."""
    from pcmae.data.object_datasets import ShapeNet55
    from tests.fixtures_layouts import write_shapenet55
    root = write_shapenet55(tmp_path, num_points=64)
    dataset = ShapeNet55(root, "train", num_points=32, seed=0)
    path = dataset.pc_dir / dataset.files[0]
    points = np.load(path)
    points[5, 1] = np.nan
    np.save(path, points)
    with pytest.raises(NonFinitePointsError, match=rf"{path.name}: 1 of 64 points have NaN/inf"):
        dataset[0]


def test_laz_item_sizes_must_match_the_record_length(tmp_path):
    """A flipped byte in the LASzip VLR made laspy allocate 64 KB per point (68 MB for an 18 KB file)."""
    raw = bytearray(shared_data_path("laspy", "tests", "data", "simple.laz").read_bytes())
    raw[318] = 250  # high byte of the first item's size (the VLR data starts at byte 281)
    path = tmp_path / "items.laz"
    path.write_bytes(bytes(raw))
    error, peak = _peak_bytes(lambda: read_las(path))
    assert isinstance(error, PointCloudFormatError), error
    assert ("items.laz: LASzip VLR items (type, size) [(6, 64020), (7, 8), (8, 6)] do not describe point "
            "format 3 records of 34 bytes") in str(error)
    assert peak < 4 * 2**20


def test_npy_header_length_and_syntax_are_checked(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((300, 3), np.float32))
    raw = bytearray(path.read_bytes())
    raw[6] = 2  # version 2.0 reads a 4-byte header length: ~660 MB here, read (and allocated) by numpy before
    path.write_bytes(bytes(raw))
    error, peak = _peak_bytes(lambda: load_points(path))
    assert isinstance(error, PointCloudFormatError) and "v.npy" in str(error) and "past the end" in str(error)
    assert peak < 2**20
    raw[6] = 1
    raw[raw.index(b"(300, 3)")] = ord("[")  # an unclosed bracket: numpy's tokenizer raised TokenError
    path.write_bytes(bytes(raw))
    with pytest.raises(PointCloudFormatError, match=r"v\.npy: not a readable \.npy array"):
        load_points(path)


@pytest.mark.parametrize("position, xor, message", [
    (334, 0x71, r"bad LAZ chunk table \(version \d+, \d+ chunks for 1065 points\)"),  # table offset moved
    (18210, 0xFF, r"bad LAZ chunk table \(version 0, 4278190081 chunks"),  # chunk count 0xFF000001
    (296, 0xDA, None),  # LASzip chunk size 0xDA00C350: the parallel decoder allocated 124 GB
])
def test_laz_chunk_table_and_chunk_size_cannot_drive_allocations(tmp_path, position, xor, message):
    """Before: lazrs allocated 38-124 GB from these single flipped bytes and aborted the process (uncatchable)."""
    raw = bytearray(shared_data_path("laspy", "tests", "data", "simple.laz").read_bytes())
    raw[position] ^= xor
    path = tmp_path / "chunks.laz"
    path.write_bytes(bytes(raw))
    result, peak = _peak_bytes(lambda: read_las(path))
    if message is None:  # one chunk holds every point: the sequential decoder does not need the chunk size
        np.testing.assert_array_equal(result, read_las(shared_data_path("laspy", "tests", "data", "simple.laz")))
    else:
        assert isinstance(result, PointCloudFormatError) and re.search(rf"chunks\.laz: {message}", str(result)), result
    assert peak < 8 * 2**20


def test_laz_items_must_match_the_point_format(tmp_path):
    """COPC (point format 7): item POINT14 turned into RGB14 kept the sizes right; lazrs then reserved 4.2 GB."""
    raw = bytearray(shared_data_path("laspy", "tests", "data", "simple.copc.laz").read_bytes())
    raw[677] ^= 1  # the first item's type, 10 (POINT14) -> 11 (RGB14)
    path = tmp_path / "copc.laz"
    path.write_bytes(bytes(raw))
    with pytest.raises(PointCloudFormatError, match=r"copc\.laz: LASzip VLR items \(type, size\) \[\(11, 30\), "
                       r"\(11, 6\)\] do not describe point format 7"):
        read_las(path)


def test_vlrs_must_fit_before_the_points(tmp_path):
    raw = bytearray(shared_data_path("laspy", "tests", "data", "simple.laz").read_bytes())
    struct.pack_into("<H", raw, 227 + 20, 60000)  # the LASzip VLR's record length
    path = tmp_path / "vlr.laz"
    path.write_bytes(bytes(raw))
    with pytest.raises(PointCloudFormatError, match=r"vlr\.laz: VLR 0 \(60000 bytes\) runs past the point data"):
        read_las(path)
