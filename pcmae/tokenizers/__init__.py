from pcmae.tokenizers.point_groups import MiniPointNet, PointGrouper, TooFewPointsError

__all__ = ["MiniPointNet", "PointGrouper", "TooFewPointsError"]
