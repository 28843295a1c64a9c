"""BraTS (2018-2023+) conversion to nnU-Net raw format and the synthetic BraTS-like generator."""
