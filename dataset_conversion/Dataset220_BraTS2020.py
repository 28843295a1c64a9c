"""BraTS 2020 -> nnU-Net raw `Dataset220_BraTS2020` (channels T1, T1ce, T2, FLAIR; region-based labels).

Usage (source e.g. the unpacked MICCAI_BraTS2020_TrainingData):

    python -m nnunet_missingmod.dataset_conversion.Dataset220_BraTS2020 -i SRC [--split rfnet2020] [--overwrite]

All options of `nnUNetv2_mm_convert_brats` apply; id, name and layout (brats2020) are only defaults.
"""
import sys

from nnunet_missingmod.dataset_conversion.brats import year_main

if __name__ == '__main__':
    sys.exit(year_main(220, 'BraTS2020', 'brats2020'))
