"""Writers of tiny test fixtures: point-cloud files (PCD, PLY, OFF) and the published dataset layouts
(ShapeNet-55, ModelNet40, ScanObjectNN), all into a pytest ``tmp_path``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# --- file formats -------------------------------------------------------------------------------------------


def lzf_compress(data: bytes) -> bytes:
    """A small greedy LZF compressor (literal runs + back-references, overlapping ones included)."""
    out, literal, table, i, n = bytearray(), bytearray(), {}, 0, len(data)

    def flush():
        while literal:
            chunk = literal[:32]
            out.append(len(chunk) - 1)
            out.extend(chunk)
            del literal[:32]

    while i < n:
        if i + 2 < n:
            key = data[i:i + 3]
            ref = table.get(key)
            table[key] = i
            if ref is not None and i - ref - 1 < 8192:
                length, limit = 3, min(264, n - i)
                while length < limit and data[ref + length] == data[i + length]:
                    length += 1
                flush()
                offset, code = i - ref - 1, length - 2
                if code < 7:
                    out.append((code << 5) | (offset >> 8))
                else:
                    out += bytes([(7 << 5) | (offset >> 8), code - 7])
                out.append(offset & 0xFF)
                i += length
                continue
        literal.append(data[i])
        i += 1
    flush()
    return bytes(out)


def write_pcd(path: Path, cloud: np.ndarray, data: str = "ascii", width: Optional[int] = None,
              height: int = 1, points: Optional[int] = None) -> Path:
    """Write a structured array (fields of type f4 / u4 / ...) as PCD v0.7 with DATA ``data``."""
    kinds = {"f": "F", "i": "I", "u": "U"}
    names = cloud.dtype.names
    header = ["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS " + " ".join(names),
              "SIZE " + " ".join(str(cloud.dtype[n].base.itemsize) for n in names),
              "TYPE " + " ".join(kinds[cloud.dtype[n].base.kind] for n in names),
              "COUNT " + " ".join(str(int(np.prod(cloud.dtype[n].shape))) for n in names),
              f"WIDTH {width or len(cloud)}", f"HEIGHT {height}", "VIEWPOINT 0 0 0 1 0 0 0",
              f"POINTS {len(cloud) if points is None else points}", f"DATA {data}"]
    body = ("\n".join(header) + "\n").encode()
    if data == "ascii":
        rows = [" ".join(repr(float(v)) if cloud.dtype[n].base.kind == "f" else str(int(v))
                         for n in names for v in np.atleast_1d(row[n])) for row in cloud]
        body += ("\n".join(rows) + "\n").encode()
    elif data == "binary":
        body += cloud.astype(cloud.dtype.newbyteorder("<")).tobytes()
    else:
        raw = b"".join(np.ascontiguousarray(cloud[n]).tobytes() for n in names)  # field-major
        packed = lzf_compress(raw)
        body += np.array([len(packed), len(raw)], "<u4").tobytes() + packed
    path.write_bytes(body)
    return path


def write_ply(path: Path, vertices: np.ndarray, faces: Optional[Sequence[Sequence[int]]] = None,
              fmt: str = "ascii", extra: Optional[dict] = None) -> Path:
    """PLY with float x y z (+ ``extra`` {name: (N,) float32} vertex properties) and optional polygon faces."""
    extra = extra or {}
    names = ["x", "y", "z"] + list(extra)
    columns = np.column_stack([vertices[:, 0], vertices[:, 1], vertices[:, 2]] + list(extra.values()))
    header = ["ply", f"format {fmt} 1.0", "comment pcmae test", f"element vertex {len(vertices)}"]
    header += [f"property float {name}" for name in names]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    body = ("\n".join(header + ["end_header"]) + "\n").encode()
    if fmt == "ascii":
        lines = [" ".join(repr(float(v)) for v in row) for row in columns]
        lines += [" ".join(map(str, [len(face), *face])) for face in faces or []]
        body += ("\n".join(lines) + "\n").encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        body += columns.astype(order + "f4").tobytes()
        for face in faces or []:
            body += np.uint8(len(face)).tobytes() + np.asarray(face, order + "i4").tobytes()
    path.write_bytes(body)
    return path


def write_off(path: Path, vertices: np.ndarray, faces: Sequence[Sequence[int]], counts_on_first_line=False) -> Path:
    counts = f"{len(vertices)} {len(faces)} 0"
    lines = [f"OFF{counts}"] if counts_on_first_line else ["OFF", "# a comment", counts]
    lines += [" ".join(repr(float(v)) for v in row) for row in vertices]
    lines += [" ".join(map(str, [len(face), *face])) for face in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


UNIT_CUBE_VERTICES = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float64)
UNIT_CUBE_QUADS = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]

# --- dataset layouts ---------------------------------------------------------------------------------------

SHAPENET_NAMES = {  # split -> file names (synset-model.npy); 3 synsets, one only in train
    "train": ["02691156-aaa1.npy", "02691156-aaa2.npy", "03001627-bbb1.npy", "04379243-ccc1.npy"],
    "test": ["03001627-bbb2.npy", "02691156-aaa3.npy"],
}


def write_shapenet55(tmp_path: Path, num_points: int = 8192, seed: int = 0) -> Path:
    """``tmp/ShapeNet55-34`` with ShapeNet-55/{train,test}.txt and shapenet_pc/*.npy (num_points x 3 each)."""
    root = tmp_path / "ShapeNet55-34"
    (root / "ShapeNet-55").mkdir(parents=True)
    (root / "shapenet_pc").mkdir()
    rng = np.random.default_rng(seed)
    for split, names in SHAPENET_NAMES.items():
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            np.save(root / "shapenet_pc" / name, (rng.normal(size=(num_points, 3)) * 5 + 3).astype(np.float32))
    return root


MODELNET_CLASSES = ["airplane", "night_stand", "flower_pot"]


def write_modelnet40(tmp_path: Path, per_class: int = 2, rows: int = 64, seed: int = 0) -> Path:
    """``tmp/modelnet40_normal_resampled``: shape names, train/test lists and <class>/<id>.txt (rows x 6)."""
    root = tmp_path / "modelnet40_normal_resampled"
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET_CLASSES) + "\n")
    rng = np.random.default_rng(seed)
    ids = {"train": [], "test": []}
    for name in MODELNET_CLASSES:
        (root / name).mkdir()
        for k in range(1, 2 * per_class + 1):
            shape_id = f"{name}_{k:04d}"
            ids["train" if k <= per_class else "test"].append(shape_id)
            xyz = rng.normal(size=(rows, 3)) * 2 + 1
            normals = rng.normal(size=(rows, 3))
            normals /= np.linalg.norm(normals, axis=1, keepdims=True)
            np.savetxt(root / name / f"{shape_id}.txt", np.hstack([xyz, normals]), fmt="%.6f", delimiter=",")
    for split, shape_ids in ids.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(shape_ids) + "\n")
    return root


def write_scanobjectnn(tmp_path: Path, count: int = 6, points: int = 2048, seed: int = 0) -> Path:
    """``tmp/ScanObjectNN/h5_files`` with main_split (OBJ_BG, PB_T50_RS) and main_split_nobg (OBJ_ONLY).

    Each file carries a marker in 'data' (first point's x: OBJ_BG 1, OBJ_ONLY 10,
    PB_T50_RS 20; negated in the test split), so a test can tell which file was read.
    """
    import h5py

    root = tmp_path / "ScanObjectNN" / "h5_files"
    files = {("main_split", "training_objectdataset.h5"): 1.0, ("main_split", "test_objectdataset.h5"): -1.0,
             ("main_split_nobg", "training_objectdataset.h5"): 10.0,
             ("main_split_nobg", "test_objectdataset.h5"): -10.0,
             ("main_split", "training_objectdataset_augmentedrot_scale75.h5"): 20.0,
             ("main_split", "test_objectdataset_augmentedrot_scale75.h5"): -20.0}
    rng = np.random.default_rng(seed)
    for (folder, name), shift in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        data = rng.uniform(-0.5, 0.5, size=(count, points, 3)).astype(np.float32)
        data[:, 0, 0] = shift  # marker: the first point's x tells the file
        with h5py.File(root / folder / name, "w") as h5:
            h5["data"] = data
            h5["label"] = (np.arange(count) % 15).astype(np.int64).reshape(-1, 1)
    return root
