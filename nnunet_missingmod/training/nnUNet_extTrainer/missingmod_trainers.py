"""Re-exports every trainer of nnunet_missingmod for nnU-Net's ``nnUNet_extTrainer`` search, found by
:func:`~nnunet_missingmod.training.nnUNet_extTrainer.discover_trainers` (no list kept by hand).

nnU-Net imports the modules of this folder as top-level modules and looks up the trainer by name; the classes
themselves live in ``nnunet_missingmod.training`` and ``nnunet_missingmod.methods`` so that they keep importable, picklable module paths.
"""
from nnunet_missingmod.training.nnUNet_extTrainer import discover_trainers

globals().update(discover_trainers())
__all__ = list(discover_trainers())
