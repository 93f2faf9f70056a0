"""Atomic file writes and pcmae checkpoints.

A checkpoint is a dict saved with ``torch.save`` that carries ``FORMAT_KEY``; the trainer's holds
``model``, ``optimizer``, ``epoch`` (completed epochs), ``batch_in_epoch``, ``step`` (optimizer steps),
``rng`` (one entry per rank, see ``pcmae.engine.rng``), ``data_order`` and ``config``. Tools may save
less (e.g. only ``model`` + ``config``). Everything in it loads with ``weights_only=True``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable

import torch

FORMAT_KEY = "pcmae_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file exists but is not a readable pcmae checkpoint."""


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


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` (tensors, numbers, strings, containers) to ``path`` atomically."""
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    payload = {FORMAT_KEY: FORMAT_VERSION, **state}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint``; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, not a torch file at all
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or FORMAT_KEY not in state:
        found = sorted(map(str, state))[:6] if isinstance(state, dict) else type(state).__name__
        hint = " (a Point-MAE release? convert it with tools/convert_checkpoint.py)" if (
            isinstance(state, dict) and "base_model" in state) else ""
        raise CheckpointError(f"{path}: not a pcmae checkpoint, no '{FORMAT_KEY}' entry (found {found}){hint}")
    if state[FORMAT_KEY] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state[FORMAT_KEY]} is newer than this pcmae "
                              f"({FORMAT_VERSION}); upgrade pcmae")
    state.pop(FORMAT_KEY)
    return state
