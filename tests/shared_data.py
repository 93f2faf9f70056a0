"""Locate the real sample clouds in ``../shared/data`` (or ``$PCMAE_SHARED_DATA``), read in place.

Tests call ``shared_data_path("openpcdet", "data", "kitti", ...)``; when the folder or file is absent the
test is skipped with the path it looked for, so a clone without ``../shared`` still passes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV_VAR = "PCMAE_SHARED_DATA"
DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_root() -> Path:
    return Path(os.environ.get(ENV_VAR, DEFAULT_ROOT))


def shared_data_path(*parts: str) -> Path:
    """Path of a file under the shared data root; skips the calling test when it is not there."""
    root = shared_data_root()
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (set ${ENV_VAR} to the shared data folder)")
    return path
