from pcmae.tokenizers.point_groups import MiniPointNet, PointGrouper, TooFewPointsError
from pcmae.tokenizers.voxel_tokenizer import MeanVoxelTokenizer, PointNetVoxelTokenizer, VoxelTokenizer, VoxelTokens

__all__ = ["MeanVoxelTokenizer", "MiniPointNet", "PointGrouper", "PointNetVoxelTokenizer", "TooFewPointsError",
           "VoxelTokenizer", "VoxelTokens"]
