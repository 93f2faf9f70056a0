"""Load the checkpoints released by Point-MAE's authors (``pretrain.pth``, fine-tuned classifiers).

The file is a dict whose weights sit under ``base_model`` (keys may carry DDP's ``module.``).
Every key is renamed to pcmae's layout; a key that has no place, or a pcmae weight that the file
does not fill, is an error, never a warning.
"""
from __future__ import annotations

import re
from pathlib import Path

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


def detect_kind(state_dict: dict) -> str:
    """'pretrain' or 'classifier' from the keys; anything else is an error naming a few keys."""
    if any(k.startswith("MAE_encoder.") for k in state_dict):
        return "pretrain"
    if "cls_token" in state_dict and any(k.startswith("blocks.blocks.") for k in state_dict):
        return "classifier"
    raise CheckpointMismatchError(
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
    """Model keyword arguments implied by the converted weights' shapes (num_groups is not stored: 64)."""
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
        cfg["group_size"] = state_dict["decoder.head.weight"].shape[0] // 3
    else:
        last = max(int(m.group(1)) for k in state_dict if (m := re.match(r"head\.mlp\.(\d+)\.weight", k)))
        cfg["num_classes"] = state_dict[f"head.mlp.{last}.weight"].shape[0]
    return cfg


def read_point_mae_file(path) -> dict:
    """The weights dict of a Point-MAE ``.pth`` (``base_model`` entry, or the dict itself)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, not a torch file
        raise CheckpointMismatchError(f"{path}: cannot be read as a torch checkpoint ({err})") from err
    if not isinstance(ckpt, dict):
        raise CheckpointMismatchError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    weights = ckpt.get("base_model", ckpt.get("model", ckpt))
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointMismatchError(f"{path}: not a Point-MAE checkpoint: no state dict under 'base_model' "
                                     f"(top-level keys: {sorted(ckpt)[:6]})")
    return weights


def convert_point_mae_file(path, num_groups: int = 64, num_heads: int = 6) -> tuple[dict, dict]:
    """(pcmae model config with ``type``, pcmae state dict) for a Point-MAE ``.pth``."""
    state, kind = convert_state_dict(read_point_mae_file(path))
    model_type = PointMAE if kind == "pretrain" else PointClassifier
    cfg = {"type": model_type.__name__, **infer_config(state, kind), "num_groups": num_groups,
           "num_heads": num_heads}
    if kind == "pretrain":
        cfg["decoder_num_heads"] = num_heads
    return cfg, state


def load_point_mae_checkpoint(path, num_groups: int = 64, num_heads: int = 6):
    """The pcmae model (PointMAE or PointClassifier) that a Point-MAE ``.pth`` holds, weights loaded strictly."""
    cfg, state = convert_point_mae_file(path, num_groups, num_heads)
    model_type = PointMAE if cfg["type"] == "PointMAE" else PointClassifier
    model = model_type(**{k: v for k, v in cfg.items() if k != "type"})
    load_strict(model, state, str(path))
    return model


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
