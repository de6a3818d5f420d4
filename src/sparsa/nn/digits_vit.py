"""A tiny ViT for 8x8 digit images: the model of the digits merge suite (:mod:`sparsa.nn.digits_suite`)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparsa.errors import SparsaError


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention, then a GELU MLP, each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        if dim % heads:
            raise SparsaError(f"DigitsViT: dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_ratio * dim), nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32 [B, T, dim] -> [B, T, dim]."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)  # [B, H, T, T]
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DigitsViT(nn.Module):
    """Tiny ViT for 8x8 digits: 2x2 patches (16 tokens of 4 pixels), a CLS token, ``depth`` blocks.

    About 69k parameters at ``dim=64, depth=2``.
    """

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 17, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32 [B, 8, 8] -> the 16 patch embeddings before any block, float32 [B, 16, dim]."""
        b = x.shape[0]
        patches = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)  # [B, 16 patches, 2x2]
        return self.embed(patches)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32 [B, 8, 8] -> the final-LayerNorm CLS feature, float32 [B, dim]."""
        b = x.shape[0]
        tokens = torch.cat([self.cls.expand(b, -1, -1), self.patch_features(x)], dim=1) + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32 [B, 8, 8] -> logits float32 [B, 10]."""
        return self.head(self.features(x))
