"""Pre-trained weights for a detector slot: read, check against the module, load with a key report.

Sources: a pcmae pre-training checkpoint (``tools/pretrain.py``; the part is picked by the model's
``detector_parts()``, so no prefix is needed) or an mmengine checkpoint such as ``tools/export_mmdet3d.py`` writes
(the prefix comes from its ``meta['pcmae_parts']`` or is given). spconv's layout travels as the state dict's
``_metadata``: mmdet3d permutes sparse-conv kernels whose metadata is not version 2 (spconv 1.x), and mmengine's
``prefix`` / ``revise_keys`` loading drops or mis-keys it, leaving every conv weight random with only a warning.
Here the metadata is re-keyed with the tensors, and anything left random is an error unless allowed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pcmae.engine.checkpoint import FORMAT_KEY
from pcmae.ops import grid_size_of

SLOTS = ("voxel_encoder", "middle_encoder")


class PretrainedWeightsError(ValueError):
    """The weights cannot initialise the module as asked (wrong file, part, grid or channels; keys left random)."""


@dataclass
class KeyReport:
    """What loading a part did to one module's state dict."""

    module: str
    source: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # left random
    unexpected: list = field(default_factory=list)  # in the source, not in the module
    mismatched: list = field(default_factory=list)  # (key, module shape, source shape)

    @property
    def complete(self) -> bool:
        """True when no weight of the module stays random."""
        return not self.missing and not self.mismatched

    def lines(self, max_keys: int = 8) -> list:
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        out = [f"{self.module} <- {self.source}: loaded {len(self.loaded)}/{total}, left random {len(self.missing)}, "
               f"shape mismatch {len(self.mismatched)}, unexpected {len(self.unexpected)}"]
        for label, keys in (("left random", self.missing), ("unexpected", self.unexpected)):
            if keys:
                more = f" (+{len(keys) - max_keys} more)" if len(keys) > max_keys else ""
                out.append(f"  {label}: {', '.join(keys[:max_keys])}{more}")
        for key, ours, theirs in self.mismatched[:max_keys]:
            out.append(f"  shape mismatch: {key} is {list(ours)} in the module, {list(theirs)} in the file")
        return out

    def to_dict(self) -> dict:
        return {"module": self.module, "source": self.source, "loaded": len(self.loaded), "missing": self.missing,
                "unexpected": self.unexpected, "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched]}


@dataclass
class Part:
    """One slot's weights: ``state`` (with ``_metadata``), the pre-training model config if from pcmae, a label."""

    state: OrderedDict
    pretrain_model: dict | None
    source: str


def _load_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pre-trained weights not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign pickle, not a torch file
        raise PretrainedWeightsError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}: {err})")


def _sub_state(state: dict, prefix: str) -> OrderedDict:
    """Keys under ``prefix`` with it stripped, spconv ``_metadata`` re-keyed the same way (kept when present)."""
    sub = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        root = prefix[:-1]
        sub._metadata = OrderedDict((("" if k == root else k[len(prefix):]), v) for k, v in metadata.items()
                                    if k == root or k.startswith(prefix))
    return sub


def _pcmae_part(ckpt: dict, path, slot: str) -> Part:
    from pcmae.engine.build import build_model  # fills pcmae's registries

    model_cfg = (ckpt.get("config") or {}).get("model")
    if not isinstance(model_cfg, dict) or "model" not in ckpt:
        raise PretrainedWeightsError(f"{path}: pcmae checkpoint without 'model' weights and 'config.model'")
    model = build_model(dict(model_cfg))
    if not hasattr(model, "detector_parts"):
        raise PretrainedWeightsError(f"{path}: model.type {model_cfg.get('type')} has no detector encoder "
                                     f"(LiDAR pre-training models: VoxelMAE, RadialMAE, TemporalMAE)")
    weights = OrderedDict(ckpt["model"])
    weights._metadata = model.state_dict()._metadata  # pcmae writes spconv 2.x layout, whatever was imported since
    model.load_state_dict(weights)
    parts = model.detector_parts()
    if slot not in parts:
        raise PretrainedWeightsError(
            f"{path}: the {model_cfg['type']} checkpoint has no {slot} part (its parts: {', '.join(parts)}); with "
            f"model.tokenizer 'mean' the voxel features are point means: use mmdet3d's HardSimpleVFE")
    return Part(parts[slot].state_dict(), model_cfg, f"{path} [{model_cfg['type']}.{slot}]")


def read_part(path, slot: str, prefix: str | None = None) -> Part:
    """The weights of detector slot ``slot`` ('voxel_encoder' | 'middle_encoder') in ``path``."""
    if slot not in SLOTS:
        raise ValueError(f"slot must be one of {SLOTS}, got {slot!r}")
    ckpt = _load_file(path)
    if isinstance(ckpt, dict) and FORMAT_KEY in ckpt and prefix is None:
        return _pcmae_part(ckpt, path, slot)
    state = ckpt.get("state_dict", ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: neither a pcmae checkpoint nor a checkpoint with a 'state_dict'")
    meta = ckpt.get("meta") or {}
    prefix = prefix if prefix is not None else (meta.get("pcmae_parts") or {}).get(slot)
    if prefix is None:
        raise PretrainedWeightsError(f"{path}: no pcmae export metadata for {slot}; give init_cfg prefix= "
                                     f"(e.g. 'pts_middle_encoder.' or 'middle_encoder.')")
    prefix = prefix if prefix == "" or prefix.endswith(".") else prefix + "."
    sub = _sub_state(state, prefix)
    if not sub:
        raise PretrainedWeightsError(f"{path}: no weight under prefix '{prefix}'")
    return Part(sub, meta.get("pcmae_pretrain_model"), f"{path} [{prefix}*]")


def load_part(module: nn.Module, part: Part, where: str) -> KeyReport:
    """Copy the part's tensors into ``module`` (shapes must agree), with its spconv metadata; report per key."""
    target = module.state_dict()
    report = KeyReport(where, part.source)
    for key, value in target.items():
        if key not in part.state:
            report.missing.append(key)
        elif tuple(part.state[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(part.state[key].shape)))
        else:
            report.loaded.append(key)
    report.unexpected = [k for k in part.state if k not in target]
    loadable = OrderedDict((k, part.state[k]) for k in report.loaded)
    loadable._metadata = getattr(part.state, "_metadata", None) or target._metadata
    module.load_state_dict(loadable, strict=False)  # missing / mismatched keys are in the report
    return report


# ------------------------------------------------------------------------------------------------ compatibility
def _expected_channels(pretrain: dict, slot: str) -> tuple[int, str]:
    """Channels the pre-trained part takes, and which pre-training key says so."""
    point_channels = int(pretrain.get("point_channels", 4))
    tokenizer = pretrain.get("tokenizer") or {"type": "pointnet"}
    if slot == "voxel_encoder" or tokenizer.get("type") == "mean":
        return point_channels, f"model.point_channels = {point_channels}"
    embed = int(tokenizer.get("embed_dim", 128))
    return embed, f"model.tokenizer.embed_dim = {embed} (PointNet tokenizer)"


def check_compatible(module: nn.Module, pretrain: dict | None, slot: str, where: str) -> None:
    """Refuse, naming the key, a module whose input channels or voxel grid differ from the pre-training model's."""
    if pretrain is None:
        return
    want, said = _expected_channels(pretrain, slot)
    have = getattr(module, "in_channels", None)
    if have is not None and int(have) != want:
        raise PretrainedWeightsError(f"{where}.in_channels = {have} but the pre-trained {slot} takes {want} "
                                     f"channels ({said})")
    for key in ("voxel_size", "point_cloud_range"):
        ours = getattr(module, key, None)
        if ours is not None and key in pretrain and [float(v) for v in ours] != [float(v) for v in pretrain[key]]:
            raise PretrainedWeightsError(f"{where}.{key} = {list(ours)} but the encoder was pre-trained with "
                                         f"model.{key} = {list(pretrain[key])}")
    shape = getattr(module, "sparse_shape", None)
    if shape is not None and "voxel_size" in pretrain:
        gx, gy, gz = grid_size_of(pretrain["voxel_size"], pretrain["point_cloud_range"])
        if [int(v) for v in shape] != [gz + 1, gy, gx]:
            raise PretrainedWeightsError(
                f"{where}.sparse_shape = {list(shape)} but the encoder was pre-trained on a grid of "
                f"[{gz + 1}, {gy}, {gx}] (model.voxel_size = {list(pretrain['voxel_size'])}, model.point_cloud_range"
                f" = {list(pretrain['point_cloud_range'])}); pre-train and fine-tune on the same voxel grid")
