"""The published BraTS train/val/test splits of the missing-modality literature, shipped as package data.

One JSON file per split, ``{"source": {...}, "train": [...], "val": [...], "test": [...]}``: the case names exactly
as published, and under ``source`` the repository, commit and paths they were taken from. The same format (without
``source``) is what ``nnUNetv2_mm_convert_brats --split PATH`` reads.

``rfnet2018-1``, ``-2``, ``-3``
    BraTS 2018 (285 cases): the three 199/29/57 splits of RFNet and M2FTrans; RFNet reports the mean over them.
``rfnet2020``
    BraTS 2020 (369 cases): 219/50/100, RFNet and M2FTrans.
``m2ftrans2021``
    BraTS 2021 (1251 cases): 876/125/250, M2FTrans.

Published names may differ from the source folder names that the conversion uses as case identifiers: RFNet's
preprocessing prefixes BraTS 2020 cases with ``HG_``/``LG_`` (``HG_BraTS20_Training_001`` is the case folder
``BraTS20_Training_001``); :func:`source_case_name` maps them.
"""
from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
#: prefixes that RFNet's preprocess.py puts before the BraTS 2020 case names (high-/low-grade glioma)
GRADE_PREFIXES = ('HG_', 'LG_')


def available_splits() -> list[str]:
    """Names of the shipped splits."""
    return sorted(p.stem for p in FOLDER.glob('*.json'))


def split_file(split: str | Path) -> Path:
    """The file of a shipped split's name, or ``split`` itself if it is a file; ValueError (one line) otherwise."""
    if str(split) in available_splits():
        return FOLDER / f'{split}.json'
    path = Path(split)
    if path.is_file():
        return path
    raise ValueError(f'unknown split {str(split)!r}: neither a file nor a shipped split '
                     f'({", ".join(available_splits())})')


def source_case_name(listed: str, source_names) -> str | None:
    """The source case that the published name ``listed`` means (itself, or without RFNet's grade prefix);
    None if the source has no such case."""
    if listed in source_names:
        return listed
    for prefix in GRADE_PREFIXES:
        if listed.startswith(prefix) and listed[len(prefix):] in source_names:
            return listed[len(prefix):]
    return None
