"""pcmae checkpoints (written atomically with ``pcmae.io.atomic.atomic_write``).

A checkpoint is a dict saved with ``torch.save`` that carries ``FORMAT_KEY``; the trainer's holds
``model``, ``optimizer``, ``epoch`` (completed epochs), ``batch_in_epoch``, ``step`` (optimizer steps),
``rng`` (one entry per rank, see ``pcmae.engine.rng``), ``data_order`` and ``config``. Tools may save
less (e.g. only ``model`` + ``config``). Everything in it loads with ``weights_only=True``.

Reading verifies the CRC-32 of every record of torch's zip container first: torch itself does not, so a flipped
byte inside a tensor would otherwise load as a silently wrong weight or optimizer moment.
"""
from __future__ import annotations

import pickle
import zipfile
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
    check_integrity(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, not a torch file at all
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err):
            reason = "it holds Python objects beyond tensors and containers, which pcmae never unpickles"
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint "
                              f"({type(err).__name__}: {reason})") from None
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


def check_integrity(path) -> None:
    """Raise CheckpointError when a record of the zip container fails its CRC-32 (a flipped or truncated byte)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zipfile.LargeZipFile) as err:
        raise CheckpointError(f"{path}: damaged or not a torch zip checkpoint ({type(err).__name__}: {err})") from None
    except Exception as err:  # zlib / struct errors inside a damaged archive
        raise CheckpointError(f"{path}: damaged checkpoint ({type(err).__name__}: {err})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint, record {bad!r} fails its CRC-32 check")


def model_type_of(state: dict) -> str | None:
    """The ``model.type`` a checkpoint was saved from (its stored config), or None if it does not say."""
    config = state.get("config") or {}
    model = config.get("model") if isinstance(config, dict) else None
    return model.get("type") if isinstance(model, dict) else None


def state_dict_differences(own: dict, state: dict) -> tuple[list, list, list]:
    """What stops ``state`` from loading strictly into a module whose state dict is ``own``: (missing keys,
    unexpected keys, ``(key, saved shape, own shape)`` for each key of another shape), in dict order."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
               if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, resized


def load_model_weights(model: torch.nn.Module, path, expected_type: str | None = None) -> dict:
    """Load ``state["model"]`` of the pcmae checkpoint at ``path`` into ``model`` (strictly); return the whole state.

    One CheckpointError line instead of a wall of missing keys when the checkpoint holds another model type
    (``expected_type``, default ``type(model).__name__``) or a model of other sizes."""
    state = load_checkpoint(path)
    expected = expected_type or type(model).__name__
    saved = model_type_of(state)
    if saved is not None and saved != expected:
        raise CheckpointError(f"{path}: holds a {saved} checkpoint, but this config builds a {expected}")
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: has no 'model' weights (keys: {', '.join(sorted(map(str, state))[:6])})")
    if hasattr(model, "upgrade_state_dict"):  # keys renamed since the checkpoint was written (the model's pre-hook)
        weights = model.upgrade_state_dict(weights)
    missing, unexpected, resized = state_dict_differences(model.state_dict(), weights)
    if missing or unexpected or resized:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(resized)} of other shape (e.g. {'{} {} vs {}'.format(*resized[0])})" if resized else ""]
        raise CheckpointError(f"{path}: {saved or 'checkpoint'} weights do not fit this {expected} "
                              f"({'; '.join(p for p in parts if p)}); was it trained with another config?")
    model.load_state_dict(weights)
    return state

