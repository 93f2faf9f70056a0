from pcmae.backbones.transformer import (Block, PointTransformerEncoder, TransformerStack, init_vit_weights,
                                         position_mlp)

__all__ = ["Block", "PointTransformerEncoder", "TransformerStack", "init_vit_weights", "position_mlp"]
