"""Re-exports the multi-encoder fusion trainers for nnU-Net's ``nnUNet_extTrainer`` search (see missingmod_trainers)."""
from nnunet_missingmod.training.fusion_trainers import (  # noqa: F401
    nnUNetTrainerAttentionFusion, nnUNetTrainerConcatFusion, nnUNetTrainerSMSN, nnUNetTrainerSMSN_bottleneck64_64,
    nnUNetTrainerSMSN_bottleneck64_128, nnUNetTrainerSMSN_bottleneck256_512, nnUNetTrainerSMSN_bottleneck512_512,
    nnUNetTrainerSMSN_fixed1, nnUNetTrainerSMSN_fixed2, nnUNetTrainerSMSN_noLo, nnUNetTrainerSMSN_noLr,
    nnUNetTrainerSMSN_noReorder, nnUNetTrainerSMSN_noSpecific, nnUNetTrainerSMSN_randomOnly)
