"""Folder that ``nnUNet_extTrainer`` points at: only modules that re-export our trainers."""
