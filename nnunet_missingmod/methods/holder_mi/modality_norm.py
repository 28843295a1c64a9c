"""Modality-specific normalisation for a backbone that is shared by all modalities.

The Hölder-MI authors' parallel U-Net (``Lboy11/Brain-Tumor-Segmentation``, ``modeling/ensemble/modules.py``,
``GroupNormPara``) shares every convolution between the modalities but keeps one normalisation layer per modality.
For normalisations whose statistics are computed per sample (instance, group and layer norm: nnU-Net's 3D plans use
``InstanceNorm3d``) one norm per modality differs from a shared one only in its affine scale and shift, so the
shared layer is kept without its affine parameters and followed by :class:`ModalityAffine`, which holds one
(scale, shift) pair per modality and picks the pair of each batch row's modality. All modalities then run as one
batch. (With ``BatchNorm`` the running statistics stay shared.)

An instance norm and its per-modality affine run as one call (:class:`ModalityNorm`): a separate affine keeps the
normalised tensor for its weight gradient, one more copy of every activation of the backbone; the fused call keeps
only the norm's input (the bytes kept, before and after: docs/results/2026-11-26-compute-cpu.md).
"""
from __future__ import annotations

from typing import List, Optional, Type

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm


class ModalityAffine(nn.Module):
    """``x * weight[m] + bias[m]`` with ``m`` the modality of each batch row (set in :attr:`rows` before forward)."""

    def __init__(self, num_channels: int, num_modalities: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_modalities, num_channels))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_channels))
        self.rows: Optional[torch.Tensor] = None

    def per_row(self, x: torch.Tensor):
        """(scale, shift) of each batch row of ``x``: two (B, C) tensors."""
        if self.rows is None or self.rows.shape[0] != x.shape[0]:
            raise RuntimeError("ModalityAffine needs the modality of each batch row (rows) before the forward pass")
        return self.weight[self.rows], self.bias[self.rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:2] + (1,) * (x.ndim - 2)
        weight, bias = self.per_row(x)
        return x * weight.reshape(shape).to(x.dtype) + bias.reshape(shape).to(x.dtype)


class ModalityNorm(nn.Sequential):
    """A shared norm without affine parameters (``[0]``) followed by its :class:`ModalityAffine` (``[1]``).

    For an instance norm both run as one ``batch_norm`` over the (1, B * C, ...) view with per-row scale and shift,
    the arithmetic of ``torch.nn.functional.instance_norm`` (which repeats its (C,) affine for every sample) with a
    (B, C) affine: nothing but the norm's input is kept for backward. Other norms run one after the other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, affine = self
        if not isinstance(norm, _InstanceNorm) or norm.track_running_stats:
            return affine(norm(x))
        weight, bias = affine.per_row(x)
        out = F.batch_norm(x.reshape(1, -1, *x.shape[2:]), None, None, weight.reshape(-1), bias.reshape(-1),
                           True, 0.0, norm.eps)
        return out.reshape(x.shape)


def make_norms_modality_specific(module: nn.Module, norm_op: Type[nn.Module], num_modalities: int
                                 ) -> List[ModalityAffine]:
    """Replace every ``norm_op`` layer inside ``module`` by a :class:`ModalityNorm` (the layer without affine
    parameters, a :class:`ModalityAffine`) in place; returns the new affine layers, whose ``rows`` the caller sets
    per pass.

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
            wrappers[id(child)] = ModalityNorm(child, ModalityAffine(channels, num_modalities))
        setattr(parent, name, wrappers[id(child)])
    return [wrapper[1] for wrapper in wrappers.values()]
