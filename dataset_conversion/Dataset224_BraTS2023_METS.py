"""BraTS 2023 METS -> nnU-Net raw `Dataset224_BraTS2023_METS` (channels T1, T1ce, T2, FLAIR; region-based labels).

Usage (source e.g. the unpacked ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData):

    python -m nnunet_missingmod.dataset_conversion.Dataset224_BraTS2023_METS -i SRC [--split SPLIT.json] [--overwrite]

All options of `nnUNetv2_mm_convert_brats` apply; id, name and layout (brats2023) are only defaults.
"""
import sys

from nnunet_missingmod.dataset_conversion.brats import year_main

if __name__ == '__main__':
    sys.exit(year_main(224, 'BraTS2023_METS', 'brats2023'))
