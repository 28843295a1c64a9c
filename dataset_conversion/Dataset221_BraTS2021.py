"""BraTS 2021 -> nnU-Net raw `Dataset221_BraTS2021` (channels T1, T1ce, T2, FLAIR; region-based labels).

Usage (source e.g. the unpacked RSNA_ASNR_MICCAI_BraTS2021_TrainingData):

    python -m nnunet_missingmod.dataset_conversion.Dataset221_BraTS2021 -i SRC [--split m2ftrans2021] [--overwrite]

All options of `nnUNetv2_mm_convert_brats` apply; id, name and layout (brats2020) are only defaults.
"""
import sys

from nnunet_missingmod.dataset_conversion.brats import year_main

if __name__ == '__main__':
    sys.exit(year_main(221, 'BraTS2021', 'brats2020'))
