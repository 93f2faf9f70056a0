"""The README and the package metadata describe only what exists."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = {"Point-MAE": "PointMAE", "Voxel-MAE": "VoxelMAE", "R-MAE": "RadialMAE", "T-MAE": "TemporalMAE",
              "MATE": "MATE"}  # name in prose -> the registered model that would implement it


def test_the_package_description_names_only_registered_objectives():
    from pcmae.engine.build import MODELS

    description = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["description"]
    named = [name for name in OBJECTIVES if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", description)]
    assert named, description
    assert [n for n in named if OBJECTIVES[n] not in MODELS] == []


@pytest.mark.parametrize("path", sorted(set(re.findall(r"(?<![\w/.])((?:configs|tools|benchmarks|data_converters|"
                                                         r"pcmae|tests)/[\w/.-]+\.(?:py|yaml|sh))",
                                                         (REPO / "README.md").read_text()))))
def test_every_file_the_readme_names_exists(path):
    assert (REPO / path).is_file(), f"README.md names {path}, which is not in the repository"
