from pcmae.pretrainers.point_mae import PointMAE
from pcmae.pretrainers.mate import MATE
from pcmae.pretrainers.radial_mae import RadialMAE
from pcmae.pretrainers.temporal_mae import TemporalMAE
from pcmae.pretrainers.voxel_mae import VoxelMAE

__all__ = ["MATE", "PointMAE", "RadialMAE", "TemporalMAE", "VoxelMAE"]
