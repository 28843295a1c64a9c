"""Re-exports every trainer of nnunet_missingmod for nnU-Net's ``nnUNet_extTrainer`` search.

nnU-Net imports the modules of this folder as top-level modules and looks up the trainer by name; the classes
themselves live in ``nnunet_missingmod.training`` so that they keep importable, picklable module paths.
"""
from nnunet_missingmod.training.missing_modality_trainer import (  # noqa: F401
    nnUNetTrainerMissingModality, nnUNetTrainerModalityDropout)
