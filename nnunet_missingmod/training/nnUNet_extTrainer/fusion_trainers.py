"""Re-exports the multi-encoder fusion trainers
(those defined in ``nnunet_missingmod.training.fusion_trainers``, found by discovery) for nnU-Net's
``nnUNet_extTrainer`` search; ``missingmod_trainers.py`` re-exports every trainer."""
from nnunet_missingmod.training.nnUNet_extTrainer import discover_trainers

globals().update(discover_trainers('nnunet_missingmod.training.fusion_trainers'))
__all__ = list(discover_trainers('nnunet_missingmod.training.fusion_trainers'))
