"""R-MAE (radial masked autoencoding, Lin et al.): hide whole angular sectors around the sensor and
predict the occupancy of the hidden sectors.

Same pipeline as Voxel-MAE (voxel tokens, encoder on visible voxels, decoder on query voxels); what
differs is the masking rule — every voxel whose azimuth falls in a hidden sector is hidden, ratio 0.8-0.9
of the sectors per sample — and the target: occupancy only, queries = hidden voxels (occupied) plus
free space on the rays into the hidden sectors and next to hidden voxels (empty).
"""
from __future__ import annotations

from pcmae.pretrainers.voxel_mae import VoxelMAE
from pcmae.registry import MODELS


@MODELS.register
class RadialMAE(VoxelMAE):
    """VoxelMAE with R-MAE's defaults: masking {type: radial, ratio: 0.8, sector_deg: 1.0} and occupancy as the
    only target (no point-count or point heads unless ``loss_weights`` asks for them)."""

    default_masking = {"type": "radial", "ratio": 0.8, "sector_deg": 1.0}
    default_loss_weights = {"occupancy": 1.0, "num_points": 0.0, "chamfer": 0.0}
