"""BraTS 2023 GLI -> nnU-Net raw `Dataset223_BraTS2023_GLI` (channels T1, T1ce, T2, FLAIR; region-based labels).

Usage (source e.g. the unpacked ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData):

    python -m nnunet_missingmod.dataset_conversion.Dataset223_BraTS2023_GLI -i SRC [--split SPLIT.json] [--overwrite]

All options of `nnUNetv2_mm_convert_brats` apply; id, name and layout (brats2023) are only defaults.
"""
import sys

from nnunet_missingmod.dataset_conversion.brats import year_main

if __name__ == '__main__':
    sys.exit(year_main(223, 'BraTS2023_GLI', 'brats2023'))
