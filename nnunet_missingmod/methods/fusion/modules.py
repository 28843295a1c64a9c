"""Bottleneck fusion modules of the multi-encoder networks (:mod:`nnunet_missingmod.networks.multi_encoder`).

Every fusion module is built as ``fusion(num_modalities, channels, block_kwargs, kernel_size, strides=...)``
(``strides``: the plans' per-stage strides, from the input patch down to the bottleneck) and called as
``fused, losses, log = fusion(features, availability, image)`` with

* ``features``: ``(B, M, C, *spatial)`` bottleneck features of the ``M`` modality encoders, in channel order;
  entries of missing modalities are zero (their encoder outputs are multiplied by the mask) and are excluded by
  every fusion;
* ``availability``: ``(B, M)`` bool, True = present, at least one modality per sample;
* ``image``: ``(B, M, *patch)`` the network input (missing modalities zero-filled), or ``None``. Only
  SMSN's fusion reads it (its reconstruction loss, Eq. 6, rebuilds the input modalities);
  the two modules here ignore it (and ``strides``); ``fusion(features, availability)`` works for fusions that do
  not need the image (SMSN without reconstruction, or any fusion in eval mode);
* ``fused``: ``(B, C, *spatial)`` for the shared decoder; ``losses``: unweighted auxiliary losses (scalars) in
  training mode, ``{}`` in eval mode; the network returns them as its ``NetworkOutput.losses``; ``log``: figures
  that are no loss (scalars, training mode), the network's ``extras['log']``, which the trainer logs per epoch.

Every parameter takes part in every forward pass whatever the mask (missing entries are removed with masks and
``torch.where``, not by skipping modules), so DDP with ``find_unused_parameters=False`` works.

* :class:`ConcatFusion` -- parallel fusion by masked concatenation + convolution (mmFormer-style baseline).
* :class:`AttentionFusion` -- parallel fusion by a transformer over all modality tokens, missing modalities
  removed from attention by ``key_padding_mask`` (mmFormer's inter-modal transformer,
  :class:`~nnunet_missingmod.networks.transformer.ModalityTransformer`, which SMSN's specific module shares).
* :class:`SMSNFusion` -- the sequential information-bottleneck fusion of SMSN (T. Liu, X. Yang, W. Wang,
  A. Nguyen, H. Jiang, K. Huang, "Sequential Information Bottleneck Fusion: Towards Robust and Generalizable
  Multi-Modal Brain Tumor Segmentation"; "the paper" below), see its docstring.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

from nnunet_missingmod.networks.masking import masked_mean, spatial_view
from nnunet_missingmod.networks.transformer import ModalityTransformer

#: unweighted auxiliary losses of a fusion module (the network's ``NetworkOutput.losses``), or its logged figures
Losses = Dict[str, torch.Tensor]


class ConcatFusion(nn.Module):
    """Parallel fusion: masked channel concatenation of all modalities, then conv-norm-nonlin back to ``C``.

    Missing modalities are zero slots of the concatenation; the present ones are rescaled by ``M / #present``
    (as inverted dropout does) so that the convolution sees inputs of the same magnitude for every subset.
    """

    def __init__(self, num_modalities: int, channels: int, block_kwargs: dict, kernel_size: Sequence[int],
                 strides: Sequence | None = None):
        super().__init__()
        self.num_modalities = num_modalities
        self.block = ConvDropoutNormReLU(input_channels=num_modalities * channels, output_channels=channels,
                                         kernel_size=kernel_size, stride=1, **block_kwargs)

    def forward(self, features: torch.Tensor, availability: torch.Tensor, image: torch.Tensor | None = None
                ) -> Tuple[torch.Tensor, Losses, Losses]:
        b, m = availability.shape
        scale = availability.to(features.dtype) * (m / availability.sum(1, keepdim=True).to(features.dtype))
        stacked = features * spatial_view(scale, features.ndim)
        return self.block(stacked.flatten(1, 2)), {}, {}


class AttentionFusion(nn.Module):
    """Parallel fusion by attention (mmFormer's inter-modal transformer): all voxels of all modalities are tokens.

    Tokens of missing modalities are excluded from attention with ``key_padding_mask``; the transformer outputs
    of the present modalities are averaged.
    """

    def __init__(self, num_modalities: int, channels: int, block_kwargs: dict, kernel_size: Sequence[int],
                 num_heads: int = 8, depth: int = 1, mlp_ratio: float = 2.0, strides: Sequence | None = None):
        super().__init__()
        self.transformer = ModalityTransformer(num_modalities, channels, block_kwargs['conv_op'], num_heads, depth,
                                               mlp_ratio)

    def forward(self, features: torch.Tensor, availability: torch.Tensor, image: torch.Tensor | None = None
                ) -> Tuple[torch.Tensor, Losses, Losses]:
        return masked_mean(self.transformer(features, ~availability), availability), {}, {}

