"""Availability masks applied to stacks of per-modality features ``(B, M, C, *spatial)``."""
from __future__ import annotations

import torch


def spatial_view(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(B, M)`` -> ``(B, M, 1, ..., 1)`` broadcastable to a ``(B, M, C, *spatial)`` stack of ``ndim`` dims."""
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def masked_mean(features: torch.Tensor, availability: torch.Tensor) -> torch.Tensor:
    """Mean over the available modalities of a ``(B, M, C, *spatial)`` stack -> ``(B, C, *spatial)``."""
    weights = spatial_view(availability, features.ndim).to(features.dtype)
    count = availability.sum(1).clamp_min(1).to(features.dtype)
    return (features * weights).sum(1) / spatial_view(count, features.ndim - 1)

