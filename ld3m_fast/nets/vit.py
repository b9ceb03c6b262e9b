"""Vision transformer as used by GLaD/LD3M (the lucidrains ViT layout).

From 64 px on (the ImageNet setting, docs/design.md §8): patch 16, dim 512, depth 10, 8 heads of 64, MLP 512,
dropout 0.1, no LayerNorm (GLaD's ImageNet ViT has its LayerNorms removed). At 28/32 px GLaD uses its CIFAR
ViT: patch 4 (7x7 or 8x8 patches), depth 6, pre-norm LayerNorms and a LayerNorm in the head; we do the same.
Every setting can be overridden; ``width`` scales dim, MLP and head size by ``width / 128``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from .common import as_hw, scaled


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.dim_head ** -0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class _Block(nn.Module):
    def __init__(self, dim, heads, dim_head, mlp_dim, dropout, layer_norm):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.attn = _Attention(dim, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """``embed`` gives the class-token feature before the head."""

    def __init__(self, channels: int, num_classes: int, image_size, *, width: int | None = None,
                 patch_size: int | None = None, dim: int | None = None, depth: int | None = None,
                 heads: int = 8, dim_head: int | None = None, mlp_dim: int | None = None, dropout: float = 0.1,
                 emb_dropout: float = 0.1, layer_norm: bool | None = None):
        super().__init__()
        hw = as_hw(image_size)
        small = max(hw) <= 32
        patch_size = (4 if small else 16) if patch_size is None else patch_size
        depth = (6 if small else 10) if depth is None else depth
        layer_norm = small if layer_norm is None else layer_norm
        dim = scaled(512, width) if dim is None else dim
        mlp_dim = scaled(512, width) if mlp_dim is None else mlp_dim
        dim_head = scaled(64, width) if dim_head is None else dim_head
        if hw[0] % patch_size or hw[1] % patch_size:
            raise InvalidArgumentError(f"ViT: image size {hw} is not divisible by patch_size={patch_size}; "
                                       f"pass a patch_size that divides it")
        if not isinstance(depth, int) or depth < 1:
            raise InvalidArgumentError(f"ViT depth must be a positive int, got {depth!r}")
        self.patch_size = patch_size
        num_patches = (hw[0] // patch_size) * (hw[1] // patch_size)
        self.patch_embed = nn.Linear(channels * patch_size * patch_size, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.blocks = nn.Sequential(*[_Block(dim, heads, dim_head, mlp_dim, dropout, layer_norm) for _ in range(depth)])
        self.head_norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.feature_dim = dim
        self.head = nn.Linear(dim, num_classes)
        self.config = dict(patch_size=patch_size, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
                           mlp_dim=mlp_dim, dropout=dropout, emb_dropout=emb_dropout, layer_norm=layer_norm)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_patches, p*p*C), patches in row-major order, pixels (row, col, channel)."""
        b, c, h, w = x.shape
        p = self.patch_size
        return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(self.patches(x))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embedding
        tokens = self.blocks(self.dropout(tokens))
        return self.head_norm(tokens[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
