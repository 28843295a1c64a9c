"""BraTS 2018 -> nnU-Net raw `Dataset218_BraTS2018` (channels T1, T1ce, T2, FLAIR; region-based labels).

Usage (source e.g. the unpacked MICCAI_BraTS_2018_Data_Training; its HGG/LGG sub-folders are searched recursively):

    python -m nnunet_missingmod.dataset_conversion.Dataset218_BraTS2018 -i SRC [--split rfnet2018-1] [--overwrite]

All options of `nnUNetv2_mm_convert_brats` apply; id, name and layout (brats2020) are only defaults.
"""
import sys

from nnunet_missingmod.dataset_conversion.brats import year_main

if __name__ == '__main__':
    sys.exit(year_main(218, 'BraTS2018', 'brats2020'))
