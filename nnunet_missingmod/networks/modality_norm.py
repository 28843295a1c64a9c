"""Modality-specific normalisation for a backbone that is shared by all modalities.

The Hölder-MI authors' parallel U-Net (``Lboy11/Brain-Tumor-Segmentation``, ``modeling/ensemble/modules.py``,
``GroupNormPara``) shares every convolution between the modalities but keeps one normalisation layer per modality.
For normalisations whose statistics are computed per sample (instance, group and layer norm: nnU-Net's 3D plans use
``InstanceNorm3d``) one norm per modality differs from a shared one only in its affine scale and shift, so the
shared layer is kept without its affine parameters and followed by :class:`ModalityAffine`, which holds one
(scale, shift) pair per modality and picks the pair of each batch row's modality. All modalities then run as one
batch. (With ``BatchNorm`` the running statistics stay shared.)
"""
from __future__ import annotations

from typing import List, Optional, Type

import torch
from torch import nn


class ModalityAffine(nn.Module):
    """``x * weight[m] + bias[m]`` with ``m`` the modality of each batch row (set in :attr:`rows` before forward)."""

    def __init__(self, num_channels: int, num_modalities: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_modalities, num_channels))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_channels))
        self.rows: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows is None or self.rows.shape[0] != x.shape[0]:
            raise RuntimeError("ModalityAffine needs the modality of each batch row (rows) before the forward pass")
        shape = x.shape[:2] + (1,) * (x.ndim - 2)
        return x * self.weight[self.rows].reshape(shape).to(x.dtype) + self.bias[self.rows].reshape(shape).to(x.dtype)


def make_norms_modality_specific(module: nn.Module, norm_op: Type[nn.Module], num_modalities: int
                                 ) -> List[ModalityAffine]:
    """Replace every ``norm_op`` layer inside ``module`` by (the layer without affine parameters, a
    :class:`ModalityAffine`) in place; returns the new affine layers, whose ``rows`` the caller sets per pass.

    Each layer gets one wrapper, also when it is a child of two parents (dynamic_network_architectures' conv blocks
    hold the norm as ``norm`` and inside ``all_modules``; its decoder keeps a reference to the encoder)."""
    found = [(parent, name, child) for parent in module.modules()        # modules() visits each module once
             for name, child in parent.named_children() if isinstance(child, norm_op)]
    wrappers = {}
    for parent, name, child in found:
        if id(child) not in wrappers:
            channels = getattr(child, 'num_features', None) or getattr(child, 'num_channels')
            child.register_parameter('weight', None)
            child.register_parameter('bias', None)
            child.affine = False
            wrappers[id(child)] = nn.Sequential(child, ModalityAffine(channels, num_modalities))
        setattr(parent, name, wrappers[id(child)])
    return [wrapper[1] for wrapper in wrappers.values()]
