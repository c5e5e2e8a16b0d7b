"""A small vision transformer (ViT/DeiT style) for 64x64 inputs: 8x8 patches, a class token, pre-norm
encoder blocks of multi-head self-attention and an MLP.

Attention is written out (MatMul, Softmax) with the token count fixed at construction, so that it
exports to plain ONNX ops with constant shapes (no shape arithmetic for the LUT to key); each
block keeps its head count in `num_heads`, which head pruning updates.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, tokens: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.tokens = tokens
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * num_heads * self.head_dim)
        self.proj = nn.Linear(num_heads * self.head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).reshape(-1, self.tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, self.tokens, self.num_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, tokens: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, tokens)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 64,
        patch: int = 8,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, tokens + 1) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = x[:, :1] * 0 + self.cls_token  # the class token per sample, without shape arithmetic in the graph
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
