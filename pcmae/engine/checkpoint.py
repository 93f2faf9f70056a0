"""pcmae checkpoints (written atomically with ``pcmae.io.atomic.atomic_write``).

A checkpoint is a dict saved with ``torch.save`` that carries ``FORMAT_KEY``; the trainer's holds
``model``, ``optimizer``, ``epoch`` (completed epochs), ``batch_in_epoch``, ``step`` (optimizer steps),
``rng`` (one entry per rank, see ``pcmae.engine.rng``), ``data_order`` and ``config``. Tools may save
less (e.g. only ``model`` + ``config``). Everything in it loads with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pcmae.io.atomic import atomic_write  # noqa: F401  (re-exported: the engine's writes go through it)

FORMAT_KEY = "pcmae_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file exists but is not a readable pcmae checkpoint."""


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
