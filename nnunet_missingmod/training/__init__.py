"""nnUNetTrainer subclasses. nnU-Net finds them through ``nnUNet_extTrainer`` (see ``nnunet_missingmod.env``)."""
