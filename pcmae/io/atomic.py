"""Write a file so that a crash never leaves half of it: temp name in the same folder, fsync, rename.

No torch import here, so command lines that only move files (data_converters) start fast.
"""
from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import IO, Any, Callable, List

TEMP_NAME = re.compile(r"^\.(.+)\.tmp-(\d+)$")  # .<name>.tmp-<pid>, as atomic_write names its temp files


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


def remove_stale_temp_files(folder, name_pattern: str = "*") -> List[Path]:
    """Delete the temp files of ``atomic_write`` calls killed before their rename: ``.<name>.tmp-<pid>`` in
    ``folder`` whose ``<name>`` matches ``name_pattern`` (fnmatch) and whose process is gone. Returns them."""
    removed = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else ():
        match = TEMP_NAME.match(path.name)
        if match and fnmatch.fnmatchcase(match.group(1), name_pattern) and not process_alive(int(match.group(2))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether ``pid`` may still write its temp files: not this process (none are open between calls), and not
    a zombie (a killed worker nobody reaped writes nothing)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
