"""An independent transcription of Point-MAE's original architecture, for equivalence tests only.

Written from the published description (../shared/formats/point_mae_checkpoint.md): module names
equal the released checkpoints' keys, attention is explicit softmax(QK^T)V, FPS and kNN are plain
loops / full distance matrices. It shares no code with pcmae, so agreement is evidence.
"""
from __future__ import annotations

import torch
from torch import nn


def ref_fps(xyz, m):
    """xyz (B, N, 3) -> (B, m) indices; first pick index 0."""
    b, n, _ = xyz.shape
    idx = torch.zeros(b, m, dtype=torch.long)
    dist = torch.full((b, n), float("inf"))
    last = torch.zeros(b, dtype=torch.long)
    for i in range(m):
        idx[:, i] = last
        d = ((xyz - xyz[torch.arange(b), last].unsqueeze(1)) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        last = dist.argmax(-1)
    return idx


class RefGroup(nn.Module):
    def __init__(self, num_group, group_size):
        super().__init__()
        self.num_group, self.group_size = num_group, group_size

    def forward(self, xyz):
        b = xyz.shape[0]
        center = torch.stack([xyz[i, ref_fps(xyz, self.num_group)[i]] for i in range(b)])
        d = torch.cdist(center.double(), xyz.double())
        idx = d.topk(self.group_size, dim=-1, largest=False).indices
        neighborhood = torch.stack([xyz[i][idx[i]] for i in range(b)]) - center.unsqueeze(2)
        return neighborhood, center


class RefEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(), nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(), nn.Conv1d(512, c, 1))

    def forward(self, groups):
        b, g, n, _ = groups.shape
        f = self.first_conv(groups.reshape(b * g, n, 3).transpose(2, 1))
        f = torch.cat([torch.max(f, dim=2, keepdim=True)[0].expand(-1, -1, n), f], dim=1)
        f = torch.max(self.second_conv(f), dim=2)[0]
        return f.reshape(b, g, self.c)


class RefMlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefAttention(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads, self.scale = heads, (c // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(c, 3 * c, bias=False), nn.Linear(c, c)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefBlock(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.mlp, self.attn = RefMlp(c), RefAttention(c, heads)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefTransformerEncoder(nn.Module):
    def __init__(self, c, depth, heads):
        super().__init__()
        self.blocks = nn.ModuleList([RefBlock(c, heads) for _ in range(depth)])

    def forward(self, x, pos):
        for blk in self.blocks:
            x = blk(x + pos)
        return x


class RefTransformerDecoder(RefTransformerEncoder):
    def __init__(self, c, depth, heads):
        super().__init__(c, depth, heads)
        self.norm, self.head = nn.LayerNorm(c), nn.Identity()

    def forward(self, x, pos, return_token_num):
        return self.head(self.norm(super().forward(x, pos)[:, -return_token_num:]))


def ref_pos_embed(c):
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, c))


class RefMaskTransformer(nn.Module):
    def __init__(self, c, depth, heads):
        super().__init__()
        self.encoder, self.pos_embed = RefEncoder(c), ref_pos_embed(c)
        self.blocks, self.norm = RefTransformerEncoder(c, depth, heads), nn.LayerNorm(c)

    def forward(self, neighborhood, center, bool_masked_pos):
        tokens = self.encoder(neighborhood)
        b, _, c = tokens.shape
        x_vis = tokens[~bool_masked_pos].reshape(b, -1, c)
        pos = self.pos_embed(center[~bool_masked_pos].reshape(b, -1, 3))
        return self.norm(self.blocks(x_vis, pos))


class RefPointMAE(nn.Module):
    def __init__(self, c=384, depth=12, heads=6, decoder_depth=4, num_group=64, group_size=32):
        super().__init__()
        self.group_size = group_size
        self.MAE_encoder = RefMaskTransformer(c, depth, heads)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c))
        self.decoder_pos_embed = ref_pos_embed(c)
        self.MAE_decoder = RefTransformerDecoder(c, decoder_depth, heads)
        self.group_divider = RefGroup(num_group, group_size)
        self.increase_dim = nn.Sequential(nn.Conv1d(c, 3 * group_size, 1))

    def forward(self, pts, bool_masked_pos):
        neighborhood, center = self.group_divider(pts)
        x_vis = self.MAE_encoder(neighborhood, center, bool_masked_pos)
        b, _, c = x_vis.shape
        pos_vis = self.decoder_pos_embed(center[~bool_masked_pos]).reshape(b, -1, c)
        pos_mask = self.decoder_pos_embed(center[bool_masked_pos]).reshape(b, -1, c)
        n = pos_mask.shape[1]
        x_full = torch.cat([x_vis, self.mask_token.expand(b, n, -1)], dim=1)
        x_rec = self.MAE_decoder(x_full, torch.cat([pos_vis, pos_mask], dim=1), n)
        rebuild = self.increase_dim(x_rec.transpose(1, 2)).transpose(1, 2).reshape(b * n, -1, 3)
        return x_vis, rebuild


class RefPointTransformer(nn.Module):
    def __init__(self, c=384, depth=12, heads=6, cls_dim=40, num_group=64, group_size=32):
        super().__init__()
        self.group_divider = RefGroup(num_group, group_size)
        self.encoder, self.pos_embed = RefEncoder(c), ref_pos_embed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, c))
        self.blocks, self.norm = RefTransformerEncoder(c, depth, heads), nn.LayerNorm(c)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(2 * c, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, cls_dim))

    def forward(self, pts):
        neighborhood, center = self.group_divider(pts)
        tokens = self.encoder(neighborhood)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        x = self.norm(self.blocks(x, pos))
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(1)[0]], dim=-1))


def randomize_(model: nn.Module, seed: int = 0) -> None:
    """Fill every parameter and BN buffer with random values, as trained weights would be."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                r = torch.randn(t.shape, generator=g) * 0.05
                t.copy_(r.abs() + 0.5 if name.endswith("running_var") else r)
