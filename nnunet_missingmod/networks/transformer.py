"""The modality transformer shared by attention fusion and SMSN's specific-feature module."""
from __future__ import annotations

from typing import Type

import torch
from torch import nn


def _num_heads(channels: int, requested: int, min_head_dim: int = 16) -> int:
    """The largest head count ``<= requested`` that divides ``channels`` with heads at least ``min_head_dim`` wide
    (narrow bottlenecks of small configurations get fewer heads rather than 1-channel heads)."""
    floor = min(min_head_dim, channels)
    return max(h for h in range(1, min(requested, channels) + 1) if channels % h == 0 and channels // h >= floor)


class ModalityTransformer(nn.Module):
    """Pre-norm transformer over the voxels of ``T`` feature maps, with padded maps masked out of attention.

    Input ``(B, T, C, *spatial)``; every voxel of every map is one token of width ``C``. A depth-wise convolution
    (shared by all maps) adds a position encoding that does not depend on the patch size, a learned embedding per
    map tells the maps (modalities) apart. ``pad`` ``(B, T)`` bool marks maps that must not be attended to.
    """

    def __init__(self, num_maps: int, channels: int, conv_op: Type[nn.Module], num_heads: int = 8, depth: int = 1,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.position = conv_op(channels, channels, 3, padding=1, groups=channels)
        self.embedding = nn.Parameter(torch.zeros(num_maps, channels))
        nn.init.trunc_normal_(self.embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(channels, _num_heads(channels, num_heads), int(mlp_ratio * channels),
                                           dropout=0.0, activation='gelu', batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, maps: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, t, c = maps.shape[:3]
        spatial = maps.shape[3:]
        flat = maps.reshape(b * t, c, *spatial)
        flat = flat + self.position(flat)
        tokens = flat.reshape(b, t, c, -1).transpose(2, 3) + self.embedding[None, :, None, :].to(flat.dtype)
        n = tokens.shape[2]
        key_padding_mask = pad[:, :, None].expand(b, t, n).reshape(b, t * n)
        out = self.transformer(tokens.reshape(b, t * n, c), src_key_padding_mask=key_padding_mask)
        return out.reshape(b, t, n, c).transpose(2, 3).reshape(b, t, c, *spatial)
