"""The input files of a missing-modality prediction: the case files of a folder, every voxel checked, and one file
per channel with the missing ones zero-filled (``nnUNetv2_mm_predict`` and the benchmark's raw-absence mode)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from nnunet_missingmod.dataset_conversion.brats_checks import check_voxels, is_nifti
from nnunet_missingmod.dataset_conversion.errors import ConversionError


def scan_input_folder(folder: str, file_ending: str, num_modalities: int) -> Dict[str, Dict[int, str]]:
    """``{case: {channel: path}}`` of the ``CASE_XXXX<file_ending>`` files of a folder (channels may be absent).

    A channel index outside ``0..M-1`` is an error naming the file.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"input folder {folder} does not exist")
    pattern = re.compile(r'^(.+)_(\d{4})' + re.escape(file_ending) + r'$')
    cases: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        match = pattern.match(name)
        if not match:
            continue
        channel = int(match.group(2))
        if channel >= num_modalities:
            raise ValueError(f"{os.path.join(folder, name)}: channel {channel:04d} does not exist, the data set has "
                             f"{num_modalities} modalities (_0000 to _{num_modalities - 1:04d})")
        cases.setdefault(match.group(1), {})[channel] = os.path.join(folder, name)
    return cases


def read_checked_image(case: str, path: str, reader_writer, decode_voxels: bool = True) -> tuple[np.ndarray, dict]:
    """The reader's ``(1, *spatial)`` image and properties of one modality file, every voxel checked.

    ValueError ``case CASE: FILE: ...`` when the file cannot be read, is truncated or corrupt, or has NaN/Inf voxels.
    nnU-Net's SimpleITK reader turns NaN/Inf of a NIfTI file into 0 and zero-fills a truncated ``.nii.gz``, so a
    NIfTI file is also decoded with nibabel, by the converter's
    :func:`~nnunet_missingmod.dataset_conversion.brats_checks.check_voxels` (``decode_voxels=False``: not, for
    files checked so already).
    """
    try:
        image, properties = reader_writer.read_images([path])
    except Exception as e:  # noqa: BLE001 - any reader failure is bad input, named
        raise ValueError(f"case {case}: cannot read {path} ({type(e).__name__}: "
                         f"{' '.join(str(e).split()) or 'no detail'})") from e
    if decode_voxels and is_nifti(path):
        try:
            check_voxels(Path(path), f'case {case}: {path}')
        except ConversionError as e:
            raise ValueError(str(e)) from e
    if not np.isfinite(image).all():
        raise ValueError(f"case {case}: {path}: {int((~np.isfinite(image)).sum())} NaN/Inf voxel(s)")
    return image, properties


def check_case_images(case: str, files: Dict[int, str], reader_writer, decode_voxels: bool = True
                      ) -> tuple[Dict[int, bool], tuple | None]:
    """Read and check every file of a case (``{channel: path}``): readable, every voxel finite
    (:func:`read_checked_image`) and one geometry, i.e. the shape and spacing of the first file.

    Returns ``({channel: whether the image has a non-zero voxel}, (shape, properties, file) of the first file)``
    (None for no file); ValueError naming the case and the file otherwise.
    """
    nonzero, geometry = {}, None
    for c in sorted(files):
        image, properties = read_checked_image(case, files[c], reader_writer, decode_voxels)
        nonzero[c] = bool(np.any(image))
        if geometry is None:
            geometry = (image.shape[1:], properties, files[c])
            continue
        shape, first, first_file = geometry
        if image.shape[1:] != shape:
            raise ValueError(f"case {case}: {files[c]} has shape {tuple(map(int, image.shape[1:]))}, {first_file} "
                             f"has {tuple(map(int, shape))}; the modalities of a case must have one geometry")
        if not np.allclose(properties['spacing'], first['spacing'], rtol=0, atol=1e-4):
            raise ValueError(f"case {case}: {files[c]} has spacing {tuple(map(float, properties['spacing']))}, "
                             f"{first_file} has {tuple(map(float, first['spacing']))}; the modalities of a case "
                             f"must have one geometry")
    return nonzero, geometry


def prepare_case_files(case: str, files: Dict[int, str], names: Sequence[str], dropped: Sequence[int],
                       reader_writer, file_ending: str, zero_folder: str, decode_voxels: bool = True
                       ) -> tuple[List[str], dict]:
    """One file per channel for a case, zero-filled images written into ``zero_folder`` for missing ones.

    The present files are checked first (:func:`check_case_images`, ``decode_voxels`` passed on). Returns
    ``(file list in channel order, report)``; raises ValueError naming the case (and the file) for a bad file or
    when no modality is left.
    """
    present = {c: f for c, f in files.items() if c < len(names) and c not in dropped}
    nonzero, geometry = check_case_images(case, present, reader_writer, decode_voxels)
    used, zero, reasons = [], [], {}
    for c in range(len(names)):
        if c not in files:
            reasons[names[c]] = 'file absent'
        elif c in dropped:
            reasons[names[c]] = '--missing'
        elif not nonzero[c]:
            reasons[names[c]] = 'all-zero image'
        else:
            used.append(names[c])
    if not used:
        raise ValueError(f"case {case}: no modality at all (" +
                         ', '.join(f'{n}: {r}' for n, r in reasons.items()) + "); refusing to predict it")
    out = []
    for c in range(len(names)):
        if names[c] in used or reasons.get(names[c]) == 'all-zero image':
            out.append(files[c])
            if names[c] not in used:
                zero.append(names[c])
            continue
        path = os.path.join(zero_folder, f'{case}_{c:04d}{file_ending}')
        shape, properties, _ = geometry
        reader_writer.write_seg(np.zeros(shape, dtype=np.uint8), path, properties)
        out.append(path)
        zero.append(names[c])
    return out, {'used': used, 'zero_filled': {n: reasons[n] for n in zero}}
