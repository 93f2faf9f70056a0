"""Encoders over tokens: a ViT-style transformer (Point-MAE), a patch-attention transformer over serialized voxel
tokens (linear in the token count) and mmdet3d's sparse-conv ``SparseEncoder`` (needs the optional spconv)."""
from pcmae.backbones.serialized_transformer import SerializedPatchTransformer
from pcmae.backbones.sparse_encoder import SparseEncoder
from pcmae.backbones.transformer import (Block, PointTransformerEncoder, TransformerStack, init_vit_weights,
                                         position_mlp)

__all__ = ["Block", "PointTransformerEncoder", "SerializedPatchTransformer", "SparseEncoder", "TransformerStack",
           "init_vit_weights", "position_mlp"]
