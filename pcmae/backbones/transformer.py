"""Pre-norm ViT blocks (timm-compatible parameter names) and the Point-MAE token encoder.

Written here rather than imported from timm: timm pulls torchvision, which replaces a CPU torch.
Attention runs through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcmae.tokenizers.point_groups import MiniPointNet


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention; x: (B, T, C) -> (B, T, C). qkv has no bias (as Point-MAE)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """attn_mask: optional (B, 1, T, T) bool, True = may attend."""
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, T, D) each
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, t, c)))

    def forward_tail(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        """``forward(x)[:, -num_queries:]`` without the queries / projection of the other tokens: x (B, T, C)
        -> (B, num_queries, C); the last ``num_queries`` tokens attend to all T."""
        b, t, c = x.shape
        heads, n = self.num_heads, num_queries
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, t - n:], w[:c], None if bias is None else bias[:c]).reshape(b, n, heads, c // heads)
        kv = F.linear(x, w[c:], None if bias is None else bias[c:]).reshape(b, t, 2, heads, c // heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, D) each
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k, v,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_tail(self, x: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """``forward(x)[:, -num_tokens:]`` (same drop-path draws) without the attention queries and MLP of the
        other tokens: x (B, T, C) -> (B, num_tokens, C). Point-MAE's last decoder block keeps only the masked
        tokens."""
        x_tail = x[:, x.shape[1] - num_tokens:]
        x_tail = x_tail + self.drop_path(self.attn.forward_tail(self.norm1(x), num_tokens))
        return x_tail + self.drop_path(self.mlp(self.norm2(x_tail)))


class CrossAttention(nn.Module):
    """Multi-head attention from queries x (B, Tq, C) to a context (B, Tk, C) -> (B, Tq, C)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """attn_mask: optional (B, 1, 1 or Tq, Tk) bool, True = may attend."""
        b, t, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, t, heads, c // heads).transpose(1, 2)  # (B, H, Tq, D)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, t, c))


class CrossBlock(nn.Module):
    """x + DropPath(CrossAttn(LN(x), LN(context))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), self.norm_context(context), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerStack(nn.Module):
    """Blocks with the position embedding added to the input of EVERY block (Point-MAE), then LayerNorm."""

    def __init__(self, dim: int, depth: int, num_heads: int, drop_path_rate: float = 0.0, mlp_ratio: float = 4.0):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x, pos: (B, T, C) -> (B, T, C)."""
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x)

    def block_outputs(self, x: torch.Tensor, pos: torch.Tensor, indices) -> list:
        """x, pos: (B, T, C) -> [norm(output of block i) for i in indices], each (B, T, C); the blocks after
        the last index are not run (Point-MAE's part segmentation reads blocks 3, 7 and 11)."""
        outputs = {}
        for i, block in enumerate(self.blocks[:max(indices) + 1]):
            x = block(x + pos)
            if i in indices:
                outputs[i] = self.norm(x)
        return [outputs[i] for i in indices]


def position_mlp(dim: int) -> nn.Sequential:
    """Center xyz (…, 3) -> position embedding (…, dim)."""
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))


class PointTransformerEncoder(TransformerStack):
    """Point-MAE's encoder: mini-PointNet patch tokens + center position MLP + transformer blocks.

    ``embed(neighborhoods (B, G, K, 3), centers (B, G, 3))`` -> tokens, pos (B, G, C);
    ``forward(tokens, pos)`` -> (B, T, C) features (any subset of tokens, e.g. the visible ones).
    """

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, drop_path_rate: float = 0.1):
        super().__init__(embed_dim, depth, num_heads, drop_path_rate)
        self.embed_dim = embed_dim
        self.patch_embed = MiniPointNet(embed_dim)
        self.pos_embed = position_mlp(embed_dim)

    def embed(self, neighborhoods: torch.Tensor, centers: torch.Tensor):
        return self.patch_embed(neighborhoods), self.pos_embed(centers)


def init_vit_weights(module: nn.Module) -> None:
    """Point-MAE / timm init: truncated normal (std 0.02) for Linear and Conv1d, zero bias, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
