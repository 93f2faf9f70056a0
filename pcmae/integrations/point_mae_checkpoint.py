"""Load the checkpoints released by Point-MAE's authors (``pretrain.pth``, fine-tuned classifiers).

The file is a dict whose weights sit under ``base_model`` (keys may carry DDP's ``module.``).
Every key is renamed to pcmae's layout; a key that has no place, or a pcmae weight that the file
does not fill, is an error, never a warning.

What the file does and does not say about the architecture:

* stored in the shapes (inferred, and checked against a config that states them): ``embed_dim``, ``depth``;
  pre-training files also ``decoder_depth`` and ``group_size`` (the decoder head predicts 3 x group_size
  numbers per masked group); classifier files ``num_classes`` (the last head layer).
* NOT stored anywhere: ``num_groups`` (64 for ``pretrain.pth`` and the ModelNet40 1k files, 128 for
  ScanObjectNN, 512 for ModelNet40 8k), the number of input points, ``num_heads`` (6 in every release) and,
  for classifier files, ``group_size`` (``cls_token`` / ``cls_pos`` are one token whatever the grouping).
  These come from the config the checkpoint is used with, or from explicit arguments; nothing defaults to 64,
  so a 128-group file can never be silently run with 64 groups. A wrong value for them cannot be detected
  from the file (the weights load either way): only the accuracy would show it.

The other entries of the file (``optimizer``, ``epoch``, ``metrics``, ``best_metrics``) are read weights-only
too; numpy scalars in the metrics (e.g. ``numpy.core.multiarray.scalar`` from numpy 1.x) are allowed by name,
any other Python object is an error naming it.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from pcmae.downstream.point_classifier import PointClassifier
from pcmae.engine.checkpoint import state_dict_differences
from pcmae.pretrainers.point_mae import PointMAE

# (Point-MAE prefix, pcmae prefix), first match wins.
PRETRAIN_RENAMES = [
    ("MAE_encoder.encoder.", "encoder.patch_embed."),
    ("MAE_encoder.pos_embed.", "encoder.pos_embed."),
    ("MAE_encoder.blocks.blocks.", "encoder.blocks."),
    ("MAE_encoder.norm.", "encoder.norm."),
    ("MAE_decoder.blocks.", "decoder.blocks."),
    ("MAE_decoder.norm.", "decoder.norm."),
    ("decoder_pos_embed.", "decoder.pos_embed."),
    ("increase_dim.0.", "decoder.head."),
    ("mask_token", "decoder.mask_token"),
]
CLASSIFIER_RENAMES = [
    ("encoder.", "encoder.patch_embed."),
    ("pos_embed.", "encoder.pos_embed."),
    ("blocks.blocks.", "encoder.blocks."),
    ("norm.", "encoder.norm."),
    ("cls_head_finetune.", "head.mlp."),
    ("cls_token", "head.cls_token"),
    ("cls_pos", "head.cls_pos"),
]


class CheckpointMismatchError(ValueError):
    """The checkpoint is not of the architecture it is being loaded into."""


class NotPointMAEError(CheckpointMismatchError):
    """The file cannot be read as a torch checkpoint, or holds no Point-MAE state dict at all."""


def detect_kind(state_dict: dict) -> str:
    """'pretrain' or 'classifier' from the keys; anything else is an error naming a few keys."""
    if any(k.startswith("MAE_encoder.") for k in state_dict):
        return "pretrain"
    if "cls_token" in state_dict and any(k.startswith("blocks.blocks.") for k in state_dict):
        return "classifier"
    raise NotPointMAEError(
        "not a Point-MAE checkpoint: expected 'MAE_encoder.*' (pre-training) or 'cls_token' + "
        f"'blocks.blocks.*' (classifier) keys, found e.g. {sorted(state_dict)[:5]}"
    )


def convert_state_dict(state_dict: dict) -> tuple[dict, str]:
    """Point-MAE state dict -> (pcmae state dict, kind). Unknown keys raise CheckpointMismatchError."""
    state_dict = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
    kind = detect_kind(state_dict)
    renames = PRETRAIN_RENAMES if kind == "pretrain" else CLASSIFIER_RENAMES
    out, unknown = {}, []
    for key, value in state_dict.items():
        new = next((dst + key[len(src):] for src, dst in renames if key.startswith(src)), None)
        if new is None:
            unknown.append(key)
            continue
        if new.startswith("decoder.head.") and new.endswith("weight"):
            value = value.squeeze(-1)  # Conv1d(C, 3K, 1) -> Linear(C, 3K)
        out[new] = value
    if unknown:
        raise CheckpointMismatchError(f"Point-MAE {kind} checkpoint has keys with no place in pcmae: {unknown[:10]}")
    return out, kind


def infer_config(state_dict: dict, kind: str) -> dict:
    """Model keyword arguments that the converted weights' shapes reveal (see the module docstring)."""
    required = ["encoder.norm.weight"] + (["decoder.head.weight"] if kind == "pretrain" else [])
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise CheckpointMismatchError(f"Point-MAE {kind} checkpoint is missing keys: {missing}")
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.blocks\.(\d+)\.", k))}
    embed_dim = state_dict["encoder.norm.weight"].shape[0]
    cfg = {"embed_dim": embed_dim, "depth": len(blocks)}
    if kind == "pretrain":
        dec = {int(m.group(1)) for k in state_dict if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))}
        cfg["decoder_depth"] = len(dec)
        rows = state_dict["decoder.head.weight"].shape[0]
        if rows % 3:
            raise CheckpointMismatchError(f"decoder head predicts {rows} numbers per group, not 3 per point")
        cfg["group_size"] = rows // 3
    else:
        layers = [int(m.group(1)) for k in state_dict if (m := re.match(r"head\.mlp\.(\d+)\.weight", k))]
        if not layers:
            raise CheckpointMismatchError("Point-MAE classifier checkpoint has no 'cls_head_finetune.*' weights")
        last = max(layers)
        cfg["num_classes"] = state_dict[f"head.mlp.{last}.weight"].shape[0]
    return cfg


def _numpy_safe_globals() -> list:
    """The numpy objects that Point-MAE's bookkeeping entries hold (numpy scalars in ``metrics``), for
    ``torch.serialization.safe_globals``: the scalar constructor under its numpy 2 and numpy 1 names, ``numpy.dtype``
    and the numeric dtype classes (bool, ints, floats, complex; not ``object``)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    scalar = core.multiarray.scalar
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtype_classes]


def _disallowed_global(err: Exception) -> str | None:
    """The name of the global that made a weights-only load fail, from torch's message (None if it is not that)."""
    text = str(err)
    found = (re.search(r"GLOBAL (\S+) was not an allowed global", text)
             or re.search(r"Can only build .*? but got (<class '[^']+'>)", text))
    return found.group(1) if found else None


def read_point_mae_file(path) -> dict:
    """The weights dict of a Point-MAE ``.pth`` (``base_model`` entry, or the dict itself), read weights-only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, not a torch file
        name = _disallowed_global(err)
        if name is not None:
            raise CheckpointMismatchError(
                f"{path}: cannot be read as a torch checkpoint weights-only: it holds the Python object {name}, "
                "which is not allowed (only tensors, containers and numpy scalars; pcmae never runs code from a file)"
            ) from None
        reason = (str(err).strip().splitlines() or [""])[0]
        raise NotPointMAEError(f"{path}: cannot be read as a torch checkpoint "
                               f"({type(err).__name__}: {reason})") from None
    if not isinstance(ckpt, dict):
        raise NotPointMAEError(f"{path}: not a Point-MAE checkpoint: expected a dict, got {type(ckpt).__name__}")
    weights = ckpt.get("base_model", ckpt.get("model", ckpt))
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise NotPointMAEError(f"{path}: not a Point-MAE checkpoint: no state dict under 'base_model' "
                               f"(top-level keys: {sorted(map(str, ckpt))[:6]})")
    return weights


# config keys that the shapes reveal, by kind of file (checked against a given config)
CHECKED_KEYS = {"pretrain": ("embed_dim", "depth", "decoder_depth", "group_size"),
                "classifier": ("embed_dim", "depth", "num_classes")}
MODEL_TYPES = {"pretrain": PointMAE, "classifier": PointClassifier}


def model_config(path, state: dict, kind: str, config: dict) -> dict:
    """pcmae model config (with ``type``) for a converted file: ``config`` completed by the shapes.

    ``config`` must give ``num_groups`` (and ``group_size`` for classifier files); every value it gives that the
    shapes reveal must agree with them. Raises CheckpointMismatchError naming the file and both values."""
    try:
        inferred = infer_config(state, kind)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{path}: {err}") from None
    model_type = MODEL_TYPES[kind].__name__
    if kind == "pretrain" and config.get("num_classes") is not None:
        raise CheckpointMismatchError(f"{path}: holds a Point-MAE pre-training model (no classification head), "
                                      f"but num_classes {config['num_classes']} was asked for")
    if config.get("type", model_type) != model_type:
        raise CheckpointMismatchError(f"{path}: holds a Point-MAE {kind} model ({model_type}), "
                                      f"but the config builds a {config['type']}")
    for key in CHECKED_KEYS[kind]:
        if key in config and config[key] != inferred[key]:
            raise CheckpointMismatchError(f"{path}: {key} is {inferred[key]} in the file's weights, "
                                          f"but {config[key]} in the config")
    needed = ["num_groups"] + (["group_size"] if kind == "classifier" else [])
    missing = [key for key in needed if config.get(key) is None]
    if missing:
        raise ValueError(f"{path}: Point-MAE files do not store {' / '.join(missing)}: give them (e.g. "
                         "num_groups 64 for pretrain.pth and ModelNet40 1k, 128 for ScanObjectNN, 512 for "
                         "ModelNet40 8k; group_size 32) or the config the checkpoint belongs to")
    cfg = {"type": model_type, "num_heads": 6, **config, **inferred}
    if kind == "pretrain":
        cfg.setdefault("decoder_num_heads", cfg["num_heads"])
    return cfg


def convert_point_mae_file(path, num_groups: int | None = None, num_heads: int | None = None, *,
                           group_size: int | None = None, num_classes: int | None = None,
                           config: dict | None = None) -> tuple[dict, dict]:
    """(pcmae model config with ``type``, pcmae state dict) for a Point-MAE ``.pth``.

    Give either ``config`` (a pcmae model config, e.g. ``cfg["model"]`` of the config the checkpoint is used
    with: its ``num_groups`` / ``group_size`` / ``num_heads`` are used, its other keys kept, and the ones the
    shapes reveal checked) or the keyword values (``num_heads`` defaults to 6, as in every release)."""
    given = {k: v for k, v in {"num_groups": num_groups, "num_heads": num_heads, "group_size": group_size,
                               "num_classes": num_classes}.items() if v is not None}
    if config is not None and given:
        raise ValueError(f"give either config or {sorted(given)}, not both")
    weights = read_point_mae_file(path)
    try:
        state, kind = convert_state_dict(weights)
    except CheckpointMismatchError as err:
        raise type(err)(f"{path}: {err}") from None
    return model_config(path, state, kind, dict(config) if config is not None else given), state


def load_point_mae_checkpoint(path, num_groups: int | None = None, num_heads: int | None = None, *,
                              group_size: int | None = None, num_classes: int | None = None,
                              config: dict | None = None):
    """The pcmae model (PointMAE or PointClassifier) that a Point-MAE ``.pth`` holds, weights loaded strictly,
    in EVAL mode (no random augmentation, dropout or drop-path: the same input gives the same output; call
    ``.train()`` to fine-tune). Arguments as :func:`convert_point_mae_file`; ``num_groups`` has no default."""
    cfg, state = convert_point_mae_file(path, num_groups, num_heads, group_size=group_size,
                                        num_classes=num_classes, config=config)
    model = MODEL_TYPES["pretrain" if cfg["type"] == "PointMAE" else "classifier"](
        **{k: v for k, v in cfg.items() if k != "type"})
    load_strict(model, state, str(path))
    return model.eval()


def load_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict that fails on any missing / unexpected key or shape, naming them."""
    missing, unexpected, resized = state_dict_differences(model.state_dict(), state)
    missing, unexpected = sorted(missing), sorted(unexpected)
    shapes = [f"{k}: {saved} vs {own}" for k, saved, own in resized]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__}: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"shape mismatches {shapes[:8]}"
        )
    model.load_state_dict(state, strict=True)
