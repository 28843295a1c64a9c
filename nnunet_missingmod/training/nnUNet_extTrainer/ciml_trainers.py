"""Re-exports the CIML trainers for nnU-Net's ``nnUNet_extTrainer`` search (see ``missingmod_trainers.py``)."""
from nnunet_missingmod.training.ciml_trainer import (  # noqa: F401
    nnUNetTrainerCIML, nnUNetTrainerCIML_Message, nnUNetTrainerCIML_MessageAttention, nnUNetTrainerCIML_MessageVI,
    nnUNetTrainerCIML_NoMessage, nnUNetTrainerCIML_TaskMap1, nnUNetTrainerCIML_TaskMap2, nnUNetTrainerCIML_TaskMap3,
    nnUNetTrainerCIML_TaskMap4, nnUNetTrainerCIML_budget)
