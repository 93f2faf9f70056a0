"""Write a file so that a crash never leaves half of it: temp name in the same folder, fsync, rename.

No torch import here, so command lines that only move files (data_converters) start fast.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable


def atomic_write(path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, then rename it over ``path``.

    On any error the temp file is removed and ``path`` keeps its old content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
