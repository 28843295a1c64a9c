"""nnU-Net v2 extension for segmentation with missing input modalities."""
__version__ = '0.1.0'
