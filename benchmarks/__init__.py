"""Micro-benchmarks of pcmae kernels (``python -m benchmarks.<name>``); not part of the installed package."""
from __future__ import annotations

import os
from pathlib import Path


def shared_data_root() -> Path:
    """The real sample data: ``$PCMAE_SHARED_DATA``, else ``../shared/data`` beside the clone (as the tests)."""
    return Path(os.environ.get("PCMAE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
