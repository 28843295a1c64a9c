"""Re-exports the CIML trainers
(those defined in ``nnunet_missingmod.training.ciml_trainer``, found by discovery) for nnU-Net's
``nnUNet_extTrainer`` search; ``missingmod_trainers.py`` re-exports every trainer."""
from nnunet_missingmod.training.nnUNet_extTrainer import discover_trainers

globals().update(discover_trainers('nnunet_missingmod.training.ciml_trainer'))
__all__ = list(discover_trainers('nnunet_missingmod.training.ciml_trainer'))
