"""Export a pcmae pre-training checkpoint as an mmdet3d checkpoint with the detector's own keys.

The detector is built from its config; every encoder slot that pcmae can fill (``voxel_encoder`` /
``middle_encoder``, ``pts_``-prefixed too; pcmae's modules or mmdet3d's own ``SparseEncoder``) is loaded through the
checked loader, and its state dict is written under the detector's prefix with spconv's ``_metadata`` under the same
prefixes, plus mmengine ``meta``. ``load_from=OUT`` or ``init_cfg=dict(type='Pretrained', checkpoint=OUT)`` then
load it as is.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import torch

from pcmae.engine.checkpoint import atomic_write
from pcmae.integrations.mmdet3d.encoders import PcmaePretrainedInit
from pcmae.integrations.mmdet3d.weights import PretrainedWeightsError, check_compatible, load_part, read_part


def _slot_of(name: str) -> str | None:
    for slot in ("voxel_encoder", "middle_encoder"):
        if name in (slot, f"pts_{slot}"):
            return slot
    return None


def encoder_slots(detector) -> dict:
    """{attribute name: slot} for the detector's encoders that take pre-trained weights (mmdet3d's own voxel
    encoders, e.g. HardSimpleVFE's point means, have none)."""
    from mmdet3d.models.middle_encoders import SparseEncoder as MMDet3DSparseEncoder

    slots = {}
    for name, module in detector.named_children():
        slot = _slot_of(name)
        if slot and isinstance(module, (PcmaePretrainedInit, MMDet3DSparseEncoder)):
            slots[name] = slot
    return slots


def build_detector(config):
    """(mmengine Config, detector on CPU) from a config path or Config; the plugin's init_cfg is not applied."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet3d.registry import MODELS

    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    init_default_scope(cfg.get("default_scope", "mmdet3d"))
    return cfg, MODELS.build(cfg.model)


def check_voxel_layer(cfg, pretrain: dict | None) -> None:
    """The detector's voxelization must be the pre-training grid (named by its config key when it is not)."""
    layer = (cfg.model.get("data_preprocessor") or {}).get("voxel_layer")
    if not pretrain or not layer:
        return
    for key in ("voxel_size", "point_cloud_range"):
        ours, theirs = layer.get(key), pretrain.get(key)
        if ours is not None and theirs is not None and [float(v) for v in ours] != [float(v) for v in theirs]:
            raise PretrainedWeightsError(f"model.data_preprocessor.voxel_layer.{key} = {list(ours)} but the encoder "
                                         f"was pre-trained with model.{key} = {list(theirs)}")


def export_checkpoint(checkpoint, out, config, allow_partial: bool = False):
    """Write ``out`` for the detector of ``config`` from the pcmae ``checkpoint``; returns the KeyReports.

    Raises PretrainedWeightsError (nothing written) when an encoder weight would stay random, unless
    ``allow_partial``."""
    cfg, detector = build_detector(config)
    slots = encoder_slots(detector)
    if not slots:
        raise PretrainedWeightsError(f"{config}: the detector has no encoder slot pcmae can fill (voxel_encoder / "
                                     f"middle_encoder of type PcmaeSparseEncoder, PcmaeVoxelEncoder, "
                                     f"PcmaeTransformerBEV or mmdet3d's SparseEncoder)")
    reports, state, metadata, parts, pretrain = [], OrderedDict(), OrderedDict(), {}, None
    for name, slot in slots.items():
        module = getattr(detector, name)
        part = read_part(checkpoint, slot)
        pretrain = part.pretrain_model or pretrain
        check_compatible(module, part.pretrain_model, slot, f"model.{name}")
        target = module.pretrained_target() if isinstance(module, PcmaePretrainedInit) else module
        reports.append(load_part(target, part, f"{name} ({type(module).__name__})"))
        sub = module.state_dict(prefix=f"{name}.")
        state.update(sub)
        metadata.update(sub._metadata)
        parts[slot] = f"{name}."
    check_voxel_layer(cfg, pretrain)
    if not allow_partial and not all(r.complete for r in reports):
        raise PretrainedWeightsError("\n".join(line for r in reports for line in r.lines())
                                     + "\nencoder weights would stay random (--allow-partial writes anyway)")
    state._metadata = metadata
    import mmengine

    meta = {"pcmae_source": str(checkpoint), "pcmae_parts": parts, "pcmae_pretrain_model": pretrain,
            "detector_config": str(getattr(cfg, "filename", config)), "mmengine_version": mmengine.__version__,
            "time": time.strftime("%Y%m%d_%H%M%S")}
    atomic_write(Path(out), lambda f: torch.save({"meta": meta, "state_dict": state}, f))
    return reports
