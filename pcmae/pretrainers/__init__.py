from pcmae.pretrainers.point_mae import PointMAE

__all__ = ["PointMAE"]
