"""Re-exports the Hölder-MI trainers for nnU-Net's ``nnUNet_extTrainer`` search (see ``missingmod_trainers.py``)."""
from nnunet_missingmod.training.holder_mi_trainer import (  # noqa: F401
    nnUNetTrainerHolderMI, nnUNetTrainerHolderMI_budget, nnUNetTrainerHolderMI_DiceOnly, nnUNetTrainerHolderMI_Hellinger,
    nnUNetTrainerHolderMI_JS, nnUNetTrainerHolderMI_KL, nnUNetTrainerHolderMI_NeymanChi2, nnUNetTrainerHolderMI_TV,
    nnUNetTrainerHolderMI_alpha1_05, nnUNetTrainerHolderMI_alpha1_08, nnUNetTrainerHolderMI_alpha1_15,
    nnUNetTrainerHolderMI_alpha1_2, nnUNetTrainerHolderMI_noHD, nnUNetTrainerHolderMI_noMI)
