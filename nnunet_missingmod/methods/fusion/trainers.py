"""Parallel-fusion baselines of SMSN's Table 2: per-modality encoders fused at the bottleneck by masked
concatenation or attention.

Both train :class:`~nnunet_missingmod.networks.multi_encoder.MultiEncoderFusionUNet` (one encoder per modality,
built from the plans, one shared decoder) with modality dropout; they differ in the bottleneck fusion module.
Hyper-parameters are class attributes; ``build_network_architecture`` is a classmethod so that nnU-Net's predictor,
which calls it on the trainer *class*, builds the same network as training did. SMSN
(:mod:`nnunet_missingmod.methods.smsn.trainers`) subclasses :class:`nnUNetTrainerConcatFusion` with its own fusion.

| trainer | fusion | paper |
|---|---|---|
| ``nnUNetTrainerConcatFusion`` | masked concatenation + conv | SMSN Table 2 parallel baseline (mmFormer-style) |
| ``nnUNetTrainerAttentionFusion`` | transformer over modality tokens | SMSN Table 2 parallel baseline (mmFormer) |
"""
from __future__ import annotations

from functools import partial

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_missingmod.methods.fusion.modules import AttentionFusion, ConcatFusion
from nnunet_missingmod.networks.multi_encoder import MultiEncoderFusionUNet
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality


class nnUNetTrainerConcatFusion(nnUNetTrainerMissingModality):
    """Parallel fusion baseline: per-modality encoders, masked concatenation + conv at the bottleneck.

    Also the common machinery of the multi-encoder trainers: subclasses change :meth:`fusion_factory` and the
    class attributes.
    """

    #: per-branch width factor applied to the plans' features_per_stage (keeps M encoders within the budget)
    width_factor: float = 0.5

    @classmethod
    def fusion_factory(cls):
        """Callable ``(num_modalities, channels, block_kwargs, kernel_size) -> fusion module``."""
        return ConcatFusion

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return MultiEncoderFusionUNet.from_plans(configuration_manager, num_input_channels, num_output_channels,
                                                 width_factor=cls.width_factor,
                                                 deep_supervision=enable_deep_supervision,
                                                 fusion=cls.fusion_factory())


class nnUNetTrainerAttentionFusion(nnUNetTrainerConcatFusion):
    """Parallel fusion baseline: mmFormer-style transformer over all modality tokens at the bottleneck."""

    attention_num_heads: int = 8
    attention_depth: int = 1

    @classmethod
    def fusion_factory(cls):
        return partial(AttentionFusion, num_heads=cls.attention_num_heads, depth=cls.attention_depth)
