"""Multi-encoder fusion U-Net built from nnU-Net plans: one encoder per modality, fused skips, one decoder.

:class:`MultiEncoderFusionUNet` is the shared backbone of the fusion trainers
(:mod:`nnunet_missingmod.methods.fusion.trainers`, :mod:`nnunet_missingmod.methods.smsn.trainers`):

* **Encoders**: one ``PlainConvEncoder`` per modality with the plans' stages, strides, kernel sizes, convs per
  stage and conv/norm/dropout/nonlin ops (resolved from ``_kw_requires_import`` like nnU-Net's
  ``get_network_from_plans``); every stage width is the plans width times ``width_factor`` (a per-branch factor
  that keeps ``M`` encoders within the compute budget).
* **All encoders in one pass**: the ``M`` encoders run as one grouped network over the ``(B, M, *patch)`` input
  (:func:`~nnunet_missingmod.networks.grouped.grouped_forward`: one convolution with ``groups = M`` per layer, each
  encoder keeping its own parameters and state_dict keys), not as a Python loop over modalities and sub-batches.
  Missing modalities are zero-filled inputs whose features are then multiplied by the mask, so they contribute
  nothing to the fusion and their encoders get exactly zero gradient from such samples; every parameter is in every
  graph (DDP with ``find_unused_parameters=False``). The mask enters only as tensor multiplications: no host sync,
  no shape that depends on it. A missing modality's encoder is computed and discarded: in training with uniform
  modality dropout ``M / E[#present] = 15/8`` times the encoder FLOPs and activations of the former
  per-modality sub-batches. The trade is made for the GPU (no host sync, one kernel per layer); what it gains and
  costs on a CPU: docs/results/2026-11-26-compute-cpu.md.
* **Skips**: mean over the present modalities at every resolution except the bottleneck.
* **Bottleneck**: a fusion module (:mod:`nnunet_missingmod.methods.fusion.modules`,
  :mod:`nnunet_missingmod.methods.smsn.fusion`) gets the ``(B, M, C, *spatial)`` stack, the mask and the input
  image ``x`` (SMSN's reconstruction loss rebuilds the input modalities; the other fusions ignore it) and returns
  the fused map, its auxiliary losses (the network's ``NetworkOutput.losses``) and its logged figures (the
  network's ``extras['log']``). It is built with the plans' strides (SMSN's reconstruction decoders up-sample by them) and, if it defines ``after_weight_init()``, that is
  called after the He initialisation of the whole network (SMSN zeroes the last layer of its Gaussian heads).
* **Decoder**: one dynamic_network_architectures ``UNetDecoder`` (deep supervision as in ``PlainConvUNet``).
"""
from __future__ import annotations

from typing import Callable

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_missingmod.networks.base import MissingModalityNetwork
from nnunet_missingmod.networks.masking import masked_mean
from nnunet_missingmod.networks.grouped import grouped_forward
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.networks.plans import PlansArchitecture, scale_widths

#: arch_kwargs of the plans that the backbone uses; everything else of the plans' architecture is rejected
_BLOCK_KEYS = ('conv_op', 'conv_bias', 'norm_op', 'norm_op_kwargs', 'dropout_op', 'dropout_op_kwargs', 'nonlin',
               'nonlin_kwargs')


FusionFactory = Callable[..., nn.Module]


class MultiEncoderFusionUNet(MissingModalityNetwork):
    """``M`` modality encoders, masked-mean skips, bottleneck fusion, one shared ``UNetDecoder``.

    ``arch_kwargs`` are the plans' (resolved) PlainConvUNet keyword arguments; residual-encoder plans
    (``n_blocks_per_stage``) are accepted, each block becoming one plain conv block. ``fusion`` is a factory
    called as ``fusion(num_modalities=M, channels=C_bottleneck, block_kwargs=..., kernel_size=..., strides=...)``;
    the module it returns is called as ``fusion_module(bottleneck_stack, availability, x)``.
    """

    def __init__(self, num_modalities: int, num_classes: int, arch_kwargs: dict, fusion: FusionFactory,
                 width_factor: float, deep_supervision: bool = True):
        super().__init__()
        kw = dict(arch_kwargs)
        n_stages = kw['n_stages']
        n_conv = kw.get('n_conv_per_stage', kw.get('n_blocks_per_stage'))
        if n_conv is None:
            raise KeyError("plans arch_kwargs have neither 'n_conv_per_stage' nor 'n_blocks_per_stage'")
        widths = scale_widths(kw['features_per_stage'], width_factor, kw['n_stages'])
        block_kwargs = {k: kw.get(k) for k in _BLOCK_KEYS}
        block_kwargs['conv_bias'] = bool(block_kwargs['conv_bias'])
        nonlin_first = kw.get('nonlin_first', False)
        self.num_modalities = num_modalities
        self.encoders = nn.ModuleList([
            PlainConvEncoder(1, n_stages, widths, kw['conv_op'], kw['kernel_sizes'], kw['strides'], n_conv,
                             return_skips=True, nonlin_first=nonlin_first, **{k: v for k, v in block_kwargs.items()
                                                                               if k != 'conv_op'})
            for _ in range(num_modalities)])
        self.fusion = fusion(num_modalities=num_modalities, channels=widths[-1],
                             block_kwargs=dict(block_kwargs, nonlin_first=nonlin_first),
                             kernel_size=kw['kernel_sizes'][-1], strides=kw['strides'])
        self.decoder = UNetDecoder(self.encoders[0], num_classes, kw['n_conv_per_stage_decoder'], deep_supervision,
                                   nonlin_first=nonlin_first)
        self.apply(InitWeights_He(1e-2))
        if hasattr(self.fusion, 'after_weight_init'):
            self.fusion.after_weight_init()

    @classmethod
    def build_from_architecture(cls, architecture: PlansArchitecture, num_input_channels: int,
                                num_output_channels: int, *, width_factor: float, deep_supervision: bool,
                                fusion: FusionFactory) -> 'MultiEncoderFusionUNet':
        """``from_plans(configuration_manager, M, K, width_factor=..., deep_supervision=..., fusion=factory)``: one
        modality per input channel, ``fusion`` the bottleneck fusion factory (class docstring)."""
        return cls(num_input_channels, num_output_channels, architecture.resolved_kwargs(), fusion, width_factor,
                   deep_supervision)

    def encode(self, x: torch.Tensor, availability: torch.Tensor):
        """Skips fused by the mean over present modalities (all but the bottleneck) and the ``(B, M, C, *sp)``
        bottleneck stack with missing modalities zeroed; all encoders in one grouped pass."""
        m = self.num_modalities
        skips = [s.unflatten(1, (m, -1)) for s in grouped_forward(self.encoders, x)]
        present = availability.to(x.dtype).reshape(availability.shape + (1,) * (skips[-1].ndim - 2))
        return [masked_mean(s, availability) for s in skips[:-1]], skips[-1] * present

    def knockout_paths(self):
        """The paths of the fusion module (SMSN: ``'bottleneck'``, ``'specific'``; the parallel fusions: none)."""
        return tuple(getattr(self.fusion, 'KNOCKOUT_PATHS', ()))

    def forward_with_mask(self, x: torch.Tensor, availability: torch.Tensor):
        if x.shape[1] != self.num_modalities:
            raise ValueError(f"input has {x.shape[1]} channels, the network was built for {self.num_modalities} "
                             f"modalities")
        skips, stack = self.encode(x, availability)
        fused, losses, log = self.fusion(stack, availability, x)
        return NetworkOutput(self.decoder(skips + [fused]), losses, {'log': log} if log else {})
