"""Encoders over tokens: a ViT-style transformer (Point-MAE), a patch-attention transformer over serialized voxel
tokens (linear in the token count), mmdet3d's sparse-conv ``SparseEncoder`` (needs the optional spconv), and the
encoder + decoder pairs of the LiDAR masked autoencoders (registry entries of ``model.backbone``)."""
from pcmae.backbones.positions import FourierPosition
from pcmae.backbones.serialized_transformer import SerializedPatchTransformer
from pcmae.backbones.sparse_encoder import SparseEncoder
from pcmae.backbones.transformer import (Block, PointTransformerEncoder, TransformerStack, init_vit_weights,
                                         position_mlp)
from pcmae.backbones.voxel_encoder_decoders import SparseConvVoxelEncoderDecoder, TransformerVoxelEncoderDecoder

__all__ = ["Block", "FourierPosition", "PointTransformerEncoder", "SerializedPatchTransformer", "SparseEncoder",
           "SparseConvVoxelEncoderDecoder", "TransformerStack", "TransformerVoxelEncoderDecoder", "init_vit_weights",
           "position_mlp"]
