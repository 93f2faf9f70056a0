"""Seeded fuzz of the point-cloud readers on real samples of every format.

Each sample from ../shared/data (or derived from one: the .npy, .off, ascii .ply and text clouds are the
first rows / the mesh of real files) is corrupted into variants: empty file, truncations, byte flips in the
header and in the body, absurd header counts (LAS 50 M points, VLR count 0xFFFFFFFF, a 4 GB PCD
binary_compressed expansion, PLY/OFF/NPY/PTS counts), NaN/inf coordinates, and the bytes under another
format's extension. Every outcome must be clean:

* a float32 (N, C >= 3) array with finite x, y, z, or
* ``PointCloudFormatError`` whose message names the file,

within ``CASE_SECONDS`` and with a traced peak allocation under ``allocation_bound(file size)``. Variants that
can only be wrong (a declared count larger than the data, NaN coordinates, a truncated file with a
count) must raise. ``python tests/test_io_fuzz.py`` prints the outcome table (used for the README).
"""
from __future__ import annotations

import contextlib
import re
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

if __name__ == "__main__":  # run as a script: make ``tests`` and ``pcmae`` importable
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from pcmae.io import PointCloudFormatError, load_points, read_pcd, read_ply  # noqa: E402
from tests.fixtures_layouts import write_pcd  # noqa: E402
from tests.shared_data import shared_data_root  # noqa: E402

SEED = 8
CASE_SECONDS = 5.0  # a case that runs longer is a hang (the slowest clean case takes ~0.1 s)
HUGE = 50_000_000


def allocation_bound(file_size: int) -> int:
    """Largest traced peak allowed while reading a file of ``file_size`` bytes (LZF expands <= 88x)."""
    return 16 * 2**20 + 100 * file_size


@dataclass
class Sample:
    name: str
    suffix: str
    data: bytes
    kwargs: dict  # load_points options


@dataclass
class Variant:
    sample: str
    label: str
    suffix: str
    data: bytes
    kwargs: dict
    must_raise: bool = False  # the corruption leaves no valid reading


@dataclass
class Outcome:
    variant: Variant
    kind: str  # ok | error | unclean
    detail: str = ""
    seconds: float = 0.0
    peak: int = 0


# --- samples ------------------------------------------------------------------------------------------------

REAL = {  # name: (path under the shared root, load_points options)
    "las": ("laspy/tests/data/simple.las", {"origin": (635000.0, 848000.0, 0.0)}),
    "laz": ("laspy/tests/data/simple.laz", {"origin": (635000.0, 848000.0, 0.0)}),
    "las14": ("laspy/tests/data/1_4_w_evlr.las", {"origin": "header"}),
    "copc": ("laspy/tests/data/simple.copc.laz", {"origin": "header"}),  # LAZ 1.4, layered point format 7
    "pcd_ascii": ("pcl/test/bunny.pcd", {}),
    "pcd_binary": ("open3d/examples/test_data/Feature/cloud_bin_0.pcd", {}),
    "ply_binary": ("open3d/examples/test_data/bathtub_0154.ply", {}),
    "bin_kitti": ("openpcdet/data/kitti/gt_database/000004_Car_0.bin", {"layout": "kitti"}),
    "bin_nuscenes": ("mmdet3d/tests/data/nuscenes/samples/LIDAR_TOP/"
                     "n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470948018.pcd.bin", {"layout": "nuscenes"}),
}
DERIVED_FROM = {"pcd_compressed": "pcl/test/milk.pcd",  # (the pure-Python LZF decoder is slow under tracemalloc)
                "npy": "openpcdet/pcdet/datasets/waymo/0004.npy",
                "pts": "open3d/docs/test_data/open3d_downloads/tests/bunnyData.pts",
                "mesh": "open3d/examples/test_data/bathtub_0154.ply"}


def _derived(name: str, source: Path) -> List[Sample]:
    """Small samples cut from real files: the first rows (re-encoded), or the first faces of a mesh."""
    if name == "pcd_compressed":
        with tempfile.TemporaryDirectory() as folder:
            path = write_pcd(Path(folder) / "milk.pcd", read_pcd(source)[1][:2000], "binary_compressed")
            return [Sample("pcd_compressed", ".pcd", path.read_bytes(), {})]
    if name == "npy":
        import io
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(np.load(source, mmap_mode="r")[:300]))
        return [Sample("npy", ".npy", buffer.getvalue(), {})]
    if name == "pts":
        lines = source.read_text().splitlines()[1:301]
        return [Sample("pts", ".pts", ("300\n" + "\n".join(lines) + "\n").encode(), {}),
                Sample("xyz", ".xyz", ("\n".join(lines) + "\n").encode(), {})]
    mesh = read_ply(source, faces=True)
    used, faces = np.unique(mesh.faces[:300], return_inverse=True)  # the first 300 triangles
    vertices = np.stack([mesh.vertices[a][used].astype(np.float64) for a in "xyz"], axis=1)
    rows = [" ".join(f"{v:.6g}" for v in row) for row in vertices]
    faces = [f"3 {a} {b} {c}" for a, b, c in faces.reshape(-1, 3)]
    ply = ["ply", "format ascii 1.0", f"element vertex {len(rows)}", "property float x", "property float y",
           "property float z", f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    off = ["OFF", f"{len(rows)} {len(faces)} 0"]
    return [Sample("ply_ascii", ".ply", ("\n".join(ply + rows + faces) + "\n").encode(), {}),
            Sample("off", ".off", ("\n".join(off + rows + faces) + "\n").encode(), {})]


def load_samples(root: Path) -> tuple[List[Sample], List[str]]:
    """The samples found under ``root`` and, for each one missing, the path it looked for."""
    samples, missing = [], []
    for name, (relative, kwargs) in REAL.items():
        path = root / relative
        if path.is_file():
            suffix = ".bin" if path.name.endswith(".bin") else path.suffix.lower()
            samples.append(Sample(name, suffix, path.read_bytes(), kwargs))
        else:
            missing.append(str(path))
    for name, relative in DERIVED_FROM.items():
        path = root / relative
        if path.is_file():
            samples += _derived(name, path)
        else:
            missing.append(str(path))
    return samples, missing


# --- corruptions --------------------------------------------------------------------------------------------

def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _header_line(data: bytes, key: bytes, new_line: bytes) -> Optional[bytes]:
    """``data`` with its first header line starting with ``key`` replaced (None when there is none)."""
    match = re.search(rb"(?m)^" + re.escape(key) + rb"[^\n]*", data)
    return None if match is None else data[:match.start()] + new_line + data[match.end():]


def _las_variants(s: Sample) -> List[tuple]:
    minor = s.data[25]
    out = [("point count 50M", _patch(s.data, 107, "<I", HUGE), True),
           ("VLR count 0xFFFFFFFF", _patch(s.data, 100, "<I", 0xFFFFFFFF), True),
           ("version byte 1.9", _patch(s.data, 25, "B", 9), True),
           ("version byte 2.2", _patch(s.data, 24, "B", 2), True),
           ("header size 0", _patch(s.data, 94, "<H", 0), True),
           ("header size 65535", _patch(s.data, 94, "<H", 65535), True),
           ("point data offset 0xFFFFFFFF", _patch(s.data, 96, "<I", 0xFFFFFFFF), True),
           ("point format 99", _patch(s.data, 104, "B", (s.data[104] & 0xC0) | 63), True),
           ("record length 0", _patch(s.data, 105, "<H", 0), True),
           ("record length 65535", _patch(s.data, 105, "<H", 65535), True),
           ("x scale NaN", _patch(s.data, 131, "<d", float("nan")), True),
           ("z scale inf", _patch(s.data, 147, "<d", float("inf")), True),
           ("point count +1", _patch(s.data, 107, "<I", struct.unpack_from("<I", s.data, 107)[0] + 1), True)]
    if minor >= 4:
        out += [("LAS 1.4 point count 50M", _patch(s.data, 247, "<Q", HUGE), True),
                ("LAS 1.4 point count 2**63", _patch(s.data, 247, "<Q", 2**63), True),
                ("EVLR count 0xFFFFFFFF", _patch(s.data, 243, "<I", 0xFFFFFFFF), False),
                ("EVLR start past the end", _patch(s.data, 235, "<Q", 2**40), False)]
    data_offset = struct.unpack_from("<I", s.data, 96)[0]
    out += [(f"truncated at point data {delta:+d}", s.data[:data_offset + delta], True) for delta in (-1, 1, 100)]
    return out


def _pcd_variants(s: Sample) -> List[tuple]:
    out = []
    for key, line, must in [(b"POINTS", b"POINTS 50000000", True), (b"WIDTH", b"WIDTH 50000000", True),
                            (b"POINTS", b"POINTS -5", True), (b"POINTS", b"POINTS 0", False),
                            (b"WIDTH", b"WIDTH -1", True), (b"HEIGHT", b"HEIGHT 4000000000", True),
                            (b"COUNT", b"COUNT 0 1 1", True), (b"COUNT", b"COUNT 1000000000 1 1", True),
                            (b"COUNT", b"COUNT -1 1 1", True), (b"SIZE", b"SIZE 3 4 4", True),
                            (b"TYPE", b"TYPE X F F", True), (b"FIELDS", b"FIELDS a y z", True),
                            (b"DATA", b"DATA binary_zipped", True), (b"FIELDS", b"FIELDS x y z extra", True)]:
        patched = _header_line(s.data, key, line)
        if patched is not None:
            out.append((f"header {line.decode()}", patched, must))
    start = s.data.find(b"\nDATA ")
    start = s.data.find(b"\n", start + 1) + 1
    if b"DATA binary_compressed" in s.data:
        out += [("compressed size 0xFFFFFFFF", _patch(s.data, start, "<I", 0xFFFFFFFF), True),
                ("uncompressed size 0xFFFFFFFF", _patch(s.data, start + 4, "<I", 0xFFFFFFFF), True),
                ("uncompressed size 0", _patch(s.data, start + 4, "<I", 0), True)]
        # the 193-byte file that reached 4.2 GB: the header, POINTS/WIDTH scaled to a consistent 4.29e9-byte
        # expansion, and only the first compressed bytes
        width = int(re.search(rb"(?m)^WIDTH (\d+)", s.data).group(1))
        itemsize = 4 * len(re.search(rb"(?m)^FIELDS ([^\n]*)", s.data).group(1).split())
        points = (2**32 - 1) // itemsize
        head = _header_line(_header_line(s.data[:start], b"WIDTH", f"WIDTH {points}".encode()),
                            b"POINTS", f"POINTS {points}".encode())
        body = s.data[start + 8:start + 8 + 64]
        out.append(("193-byte PCD expanding to 4.29 GB", head + struct.pack("<II", len(body), points * itemsize)
                    + body, True))
        del width
    elif b"DATA binary" in s.data:
        itemsize = 4 * len(re.search(rb"(?m)^FIELDS ([^\n]*)", s.data).group(1).split())
        nan = s.data[:start] + struct.pack("<f", float("nan")) + s.data[start + 4:]
        inf = s.data[:start + itemsize + 8] + struct.pack("<f", float("inf")) + s.data[start + itemsize + 12:]
        out += [("x NaN", nan, True), ("z inf", inf, True)]
    else:
        lines = s.data[start:].split(b"\n")
        lines[0] = b"nan " + b" ".join(lines[0].split()[1:])
        lines[5] = b" ".join(lines[5].split()[:2]) + b" inf"
        out += [("x nan (ascii)", s.data[:start] + b"\n".join(lines), True),
                ("garbage token", s.data[:start] + b"\n".join([b"1 2 zz"] + lines[1:]), True)]
    return out


def _ply_variants(s: Sample) -> List[tuple]:
    out = []
    for line, must in [(b"element vertex 50000000", True), (b"element vertex -1", True),
                       (b"element vertex 4294967295", True), (b"element vertex 0", True)]:
        out.append((line.decode(), _header_line(s.data, b"element vertex", line), must))
    for line, must in [(b"element face 4294967295", False), (b"element face -7", False)]:
        out.append((line.decode(), _header_line(s.data, b"element face", line), must))
    out += [("property type float128", _header_line(s.data, b"property float x", b"property float128 x"), True),
            ("format swapped", _header_line(s.data, b"format", b"format binary_big_endian 1.0"
                                            if b"format ascii" in s.data else b"format ascii 1.0"), False),
            ("format unknown", _header_line(s.data, b"format", b"format binary_middle_endian 1.0"), True),
            ("list count type float", _header_line(s.data, b"property list", b"property list float int "
                                                   b"vertex_indices"), False),
            ("no end_header", s.data.replace(b"end_header", b"end_headxr"), True)]
    body = s.data.find(b"end_header\n") + len(b"end_header\n")
    if b"format ascii" in s.data:
        out.append(("x nan (ascii)", s.data[:body] + b"nan" + s.data[s.data.find(b" ", body):], True))
    else:
        out.append(("x NaN", s.data[:body] + struct.pack("<f", float("nan")) + s.data[body + 4:], True))
        # faces: first list count 255 (a corrupt polygon size) and a huge first index
        faces_at = body + 12 * int(re.search(rb"element vertex (\d+)", s.data).group(1))
        out += [("face list count 255", _patch(s.data, faces_at, "B", 255), False),
                ("face index 2**31-1", _patch(s.data, faces_at + 1, "<i", 2**31 - 1), False)]
    return out


def _text_variants(s: Sample) -> List[tuple]:
    lines = s.data.decode().splitlines()
    out = []
    if s.suffix == ".off":
        out += [("counts 50M", "\n".join([lines[0], f"{HUGE} 300 0"] + lines[2:]).encode(), True),
                ("counts -1", "\n".join([lines[0], "-1 300 0"] + lines[2:]).encode(), True),
                ("face size -3", "\n".join(lines[:-1] + ["-3 0 1 2"]).encode(), True),
                ("face size 9999", "\n".join(lines[:-1] + ["9999 0 1 2"]).encode(), True),
                ("x nan", "\n".join(lines[:2] + ["nan 0 0"] + lines[3:]).encode(), True)]
    else:
        first = 1 if s.suffix == ".pts" else 0
        if s.suffix == ".pts":
            out += [("count line 50M", "\n".join([str(HUGE)] + lines[1:]).encode(), True),
                    ("count line -1", "\n".join(["-1"] + lines[1:]).encode(), False)]
        bad = list(lines)
        bad[first + 3] = "nan " + " ".join(bad[first + 3].split()[1:])
        out.append(("x nan", "\n".join(bad).encode(), True))
        bad = list(lines)
        bad[first + 4] = " ".join(bad[first + 4].split()[:2]) + " -inf"
        out.append(("z -inf", "\n".join(bad).encode(), True))
        out.append(("binary garbage line", "\n".join(lines[:9]).encode() + b"\n\xff\xfe\x00\x81 3\n", True))
    return out


def _npy_variants(s: Sample) -> List[tuple]:
    header_end = s.data.find(b"\n") + 1
    header = s.data[10:header_end].decode("latin1")

    def with_header(text: str) -> bytes:
        text = text.ljust(header_end - 10 - 1) + "\n"
        return s.data[:10] + text.encode("latin1")[:header_end - 10] + s.data[header_end:]

    shape = re.search(r"'shape': \((\d+), (\d+)\)", header)
    rows, cols = int(shape.group(1)), int(shape.group(2))
    nan = np.frombuffer(s.data[header_end:], "<f4").copy()
    nan[0], nan[cols + 2] = np.nan, np.inf
    return [("shape 50M rows", with_header(header.replace(f"({rows}, {cols})", f"({HUGE}, {cols})")), True),
            ("shape 2**40 rows", with_header(header.replace(f"({rows}, {cols})", f"({2**40}, {cols})")), True),
            ("shape -1 rows", with_header(header.replace(f"({rows}, {cols})", f"(-1, {cols})")), True),
            ("dtype object", with_header(header.replace("'<f4'", "'|O'")), True),
            ("dtype <f8", with_header(header.replace("'<f4'", "'<f8'")), True),
            ("fortran order", with_header(header.replace("False", "True ")), False),
            ("bad magic", b"\x93NUMPX" + s.data[6:], True),
            ("x NaN, z inf", s.data[:header_end] + nan.tobytes(), True)]


def _bin_variants(s: Sample) -> List[tuple]:
    values = np.frombuffer(s.data, "<f4").copy()
    nan, inf = values.copy(), values.copy()
    nan[0] = np.nan
    inf[2] = np.inf
    return [("x NaN", nan.tobytes(), True), ("z inf", inf.tobytes(), True),
            ("no layout", s.data, True), ("one byte extra", s.data + b"\0", True)]


def make_variants(sample: Sample, samples: List[Sample], seed: int = SEED) -> List[Variant]:
    """Every corrupted variant of ``sample`` (deterministic for a given seed)."""
    rng = np.random.default_rng([seed, sum(sample.name.encode())])
    data, size = sample.data, len(sample.data)
    counted = sample.suffix not in (".bin", ".xyz")  # the format declares its point count
    cases = [("empty file", b"", True)]
    for fraction in (0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.999):
        cut = max(1, int(size * fraction))
        cases.append((f"truncated to {cut}/{size} bytes", data[:cut], counted and fraction < 0.95))
    # PCL pads binary_compressed files after the LZF data, so their last byte may be spare
    cases.append(("last byte dropped", data[:-1], sample.suffix in (".las", ".laz", ".npy", ".bin")
                  or (sample.suffix in (".pcd", ".ply") and b"binary" in data[:2000]
                      and b"binary_compressed" not in data[:2000])))
    header_span = min(size, 400)
    for region, low, high, count in (("header", 0, header_span, 10), ("body", header_span, size, 8)):
        for _ in range(count if high > low else 0):
            position = int(rng.integers(low, high))
            flipped = bytearray(data)
            flipped[position] ^= int(rng.integers(1, 256))
            cases.append((f"byte {position} flipped ({region})", bytes(flipped), False))
    specific = {".las": _las_variants, ".laz": _las_variants, ".pcd": _pcd_variants, ".ply": _ply_variants,
                ".off": _text_variants, ".pts": _text_variants, ".xyz": _text_variants, ".npy": _npy_variants,
                ".bin": _bin_variants}[sample.suffix]
    cases += specific(sample)
    variants = [Variant(sample.name, label, sample.suffix, blob, dict(sample.kwargs), must)
                for label, blob, must in cases if blob is not None]
    for variant in variants:
        if variant.label == "no layout":
            variant.kwargs = {}
    for suffix in sorted({other.suffix for other in samples} - {sample.suffix}):  # under another extension
        kwargs = {"layout": "kitti"} if suffix == ".bin" else {}
        variants.append(Variant(sample.name, f"named {suffix}", suffix, data, kwargs, False))
    return variants


# --- running ------------------------------------------------------------------------------------------------

class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CaseTimeout in the main thread after ``seconds`` (interrupts Python-level loops)."""
    def handler(signum, frame):
        raise CaseTimeout(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_variant(variant: Variant, folder: Path, loader: Callable = load_points) -> Outcome:
    path = folder / f"{variant.sample}_case{variant.suffix}"
    path.write_bytes(variant.data)
    kwargs = dict(variant.kwargs)
    if variant.suffix not in (".las", ".laz"):
        kwargs.pop("origin", None)
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    try:
        with time_limit(CASE_SECONDS):
            points = loader(path, **kwargs)
    except PointCloudFormatError as err:
        kind = "error" if path.name in str(err) and "\n" not in str(err).strip() else "unclean"
        outcome = Outcome(variant, kind, f"{type(err).__name__}: {err}")
    except CaseTimeout as err:
        outcome = Outcome(variant, "unclean", f"hang: {err}")
    except MemoryError as err:
        outcome = Outcome(variant, "unclean", f"memory blow-up: MemoryError {err}")
    except BaseException as err:  # noqa: BLE001 - a foreign exception (even a Rust panic) is the finding
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        outcome = Outcome(variant, "unclean", f"foreign {type(err).__module__}.{type(err).__name__}: {err}")
    else:
        ok = (isinstance(points, np.ndarray) and points.dtype == np.float32 and points.ndim == 2
              and points.shape[1] >= 3 and len(points) > 0 and bool(np.isfinite(points[:, :3]).all()))
        if not ok:
            outcome = Outcome(variant, "unclean", f"invalid result {getattr(points, 'shape', None)}")
        elif variant.must_raise:
            outcome = Outcome(variant, "unclean", f"silent garbage: returned {points.shape} instead of an error")
        else:
            outcome = Outcome(variant, "ok", str(points.shape))
    outcome.seconds = time.perf_counter() - start
    outcome.peak = tracemalloc.get_traced_memory()[1] - baseline
    if outcome.peak > allocation_bound(len(variant.data)):
        outcome.kind, outcome.detail = "unclean", f"allocated {outcome.peak / 2**20:.0f} MiB; " + outcome.detail
    path.unlink()
    return outcome


def fuzz(samples: List[Sample], folder: Path, loader: Callable = load_points) -> Dict[str, List[Outcome]]:
    """Outcomes of every variant of every sample, by sample name."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        return {s.name: [run_variant(v, folder, loader) for v in make_variants(s, samples)] for s in samples}
    finally:
        if not tracing:
            tracemalloc.stop()


# --- tests --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def samples():
    found, missing = load_samples(shared_data_root())
    if not found:
        pytest.skip(f"no real samples under {shared_data_root()} (missing: {', '.join(missing)})")
    return found


def test_fuzz_every_outcome_is_a_valid_cloud_or_a_named_format_error(samples, tmp_path):
    started = time.perf_counter()
    outcomes = fuzz(samples, tmp_path)
    unclean = [f"{o.variant.sample} / {o.variant.label}: {o.detail[:200]}"
               for rows in outcomes.values() for o in rows if o.kind == "unclean"]
    total = sum(len(rows) for rows in outcomes.values())
    assert not unclean, f"{len(unclean)} of {total} variants unclean:\n" + "\n".join(unclean)
    assert total > 300 and sum(o.kind == "error" for rows in outcomes.values() for o in rows) > 150
    slowest = max((o for rows in outcomes.values() for o in rows), key=lambda o: o.seconds)
    assert slowest.seconds < 2.0, f"{slowest.variant.sample} / {slowest.variant.label} took {slowest.seconds:.2f} s"
    assert time.perf_counter() - started < 60


def test_fuzz_is_deterministic(samples):
    first = make_variants(samples[0], samples)
    second = make_variants(samples[0], samples)
    assert [(v.label, v.data) for v in first] == [(v.label, v.data) for v in second]


def test_harness_catches_a_foreign_exception_a_hang_and_silent_garbage(samples, tmp_path):
    """The harness itself: a reader that misbehaves in each way is reported unclean."""
    variant = Variant("probe", "probe", ".pcd", b"x", {}, must_raise=True)

    def foreign(path, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    def hang(path, **kwargs):
        while True:
            pass

    def garbage(path, **kwargs):
        return np.zeros((3, 3), np.float32)

    def unnamed(path, **kwargs):
        raise PointCloudFormatError("bad header")

    global CASE_SECONDS
    saved, CASE_SECONDS = CASE_SECONDS, 0.2
    try:
        tracemalloc.start()
        outcomes = [run_variant(variant, tmp_path, loader) for loader in (foreign, hang, garbage, unnamed)]
    finally:
        CASE_SECONDS = saved
        tracemalloc.stop()
    assert [o.kind for o in outcomes] == ["unclean"] * 4
    assert outcomes[0].detail.startswith("foreign struct.error") and outcomes[1].detail.startswith("hang")
    assert outcomes[2].detail.startswith("silent garbage")


# --- script: the outcome table ------------------------------------------------------------------------------

def main() -> int:
    found, missing = load_samples(shared_data_root())
    for path in missing:
        print(f"missing sample: {path}")
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        outcomes = fuzz(found, Path(folder))
        seconds = time.perf_counter() - started
    print(f"{'sample':16s} {'variants':>8s} {'ok':>4s} {'error':>6s} {'unclean':>8s}")
    totals = np.zeros(4, int)
    for name, rows in outcomes.items():
        counts = np.array([len(rows)] + [sum(o.kind == k for o in rows) for k in ("ok", "error", "unclean")])
        totals += counts
        print(f"{name:16s} {counts[0]:8d} {counts[1]:4d} {counts[2]:6d} {counts[3]:8d}")
    print(f"{'total':16s} {totals[0]:8d} {totals[1]:4d} {totals[2]:6d} {totals[3]:8d}   ({seconds:.1f} s)")
    classes: Dict[str, int] = {}
    for rows in outcomes.values():
        for o in rows:
            if o.kind == "unclean":
                key = next((name for name, marker in (("hang", "hang:"), ("memory blow-up", "allocated "),
                                                      ("memory blow-up", "MemoryError"),
                                                      ("foreign exception", "foreign "),
                                                      ("silent garbage", "silent garbage")) if marker in o.detail),
                           "unnamed error or invalid result")
                classes[key] = classes.get(key, 0) + 1
                print(f"  UNCLEAN {o.variant.sample} / {o.variant.label}: {o.detail[:160]}")
    print("unclean by class:", classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
