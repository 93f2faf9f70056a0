"""ModelNet40-C in its released layout: data_<corruption>_<severity>.npy + label.npy, streamed by tools/tta.py."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from pcmae.data import ModelNet40C
from pcmae.io.errors import PointCloudFormatError


def write_release(root, clouds=5, points=32, corruptions=("gaussian", "shear"), severity=5):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "label.npy", np.arange(clouds, dtype=np.int64).reshape(-1, 1) * 7 % 40)
    arrays = {}
    for name in ("original",) + tuple(f"{c}_{severity}" for c in corruptions):
        arrays[name] = rng.normal(size=(clouds, points, 3)).astype(np.float32)
        np.save(root / f"data_{name}.npy", arrays[name])
    return arrays


def test_reads_each_corruption_file_with_its_labels(tmp_path):
    arrays = write_release(tmp_path / "mn40c")
    data = ModelNet40C(str(tmp_path / "mn40c"), corruption="shear", severity=5, num_points=16)
    assert len(data) == 5 and data.num_classes == 40
    item = data[3]
    assert item["points"].shape == (16, 3) and int(item["label"]) == 21
    np.testing.assert_array_equal(item["points"].numpy(), arrays["shear_5"][3, :16])
    clean = ModelNet40C(str(tmp_path / "mn40c"), corruption=None, num_points=32)
    np.testing.assert_array_equal(clean[0]["points"].numpy(), arrays["original"][0])


def test_bad_releases_are_one_line_naming_the_file(tmp_path):
    root = tmp_path / "mn40c"
    write_release(root)
    with pytest.raises(FileNotFoundError, match="data_gaussian_3.npy not found"):
        ModelNet40C(str(root), corruption="gaussian", severity=3)
    with pytest.raises(ValueError, match="unknown corruption 'gausian'.*gaussian"):
        ModelNet40C(str(root), corruption="gausian")
    np.save(root / "label.npy", np.zeros((4, 1)))
    with pytest.raises(PointCloudFormatError, match="label.npy: 4 labels for 5 clouds"):
        ModelNet40C(str(root), corruption="gaussian")
    (root / "data_shear_5.npy").write_bytes((root / "data_shear_5.npy").read_bytes()[:200])  # truncated
    with pytest.raises(PointCloudFormatError, match="data_shear_5.npy: not a readable .npy array"):
        ModelNet40C(str(root), corruption="shear")


def test_tta_streams_the_released_files_instead_of_corrupting_on_the_fly(tmp_path):
    from tools.tta import shifting_stream

    arrays = write_release(tmp_path / "mn40c")
    args = argparse.Namespace(severity=5, seed=0, limit=2)
    val = {"type": "ModelNet40C", "root": str(tmp_path / "mn40c"), "num_points": 32}
    samples = list(shifting_stream(args, val, ["gaussian", "shear"]))
    assert [s.name for s in samples] == ["gaussian[0]", "gaussian[1]", "shear[2]", "shear[3]"]
    np.testing.assert_array_equal(np.asarray(samples[2].points), arrays["shear_5"][2])
    assert [s.label for s in samples] == [0, 7, 14, 21]
