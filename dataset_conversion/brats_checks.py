"""Reading and checking the source cases before anything is written: every voxel decoded, label values, geometry.

SimpleITK reads the images; nibabel decodes every voxel again, because SimpleITK zero-fills a truncated ``.nii.gz``
and turns NaN into 0. All problems of all cases are collected into one
:class:`~nnunet_missingmod.dataset_conversion.errors.ConversionError`. :func:`check_voxels` is the one voxel check of
the package: the prediction and benchmark commands run it on their input files too.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from nnunet_missingmod.dataset_conversion.brats_layouts import CHANNELS, LAYOUTS, SourceCase
from nnunet_missingmod.dataset_conversion.errors import ConversionError, join_errors


def read_image(path: Path):
    """The SimpleITK image of ``path``; :class:`ConversionError` naming the file if it cannot be read."""
    import SimpleITK as sitk
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ConversionError(f'cannot read {path}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}')


def check_case(case: SourceCase, layout: str) -> dict:
    """Read every file of a case and check it; returns a summary (shape, spacing, labels present)."""
    import SimpleITK as sitk
    spec = LAYOUTS[layout]
    reference_role = CHANNELS[0]
    ref = None
    nonzero = False
    for role in [*CHANNELS, 'seg']:
        if role not in case.files:
            continue
        path = case.files[role]
        img = read_image(path)
        where = f'case {case.name}: {path}'
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise ConversionError(f'{where}: expected a 3D single-channel image, got dimension '
                                  f'{img.GetDimension()} with {img.GetNumberOfComponentsPerPixel()} component(s)')
        geometry = {'shape': img.GetSize(), 'spacing': img.GetSpacing(), 'origin': img.GetOrigin(),
                    'direction': img.GetDirection()}
        if ref is None:
            ref, reference_role = geometry, role
        else:
            ref_file = case.files[reference_role]
            if geometry['shape'] != ref['shape']:
                raise ConversionError(f'{where}: shape {geometry["shape"]} differs from {ref["shape"]} of {ref_file}')
            for key, tol in (('spacing', 1e-4), ('origin', 1e-3), ('direction', 1e-4)):
                if not np.allclose(geometry[key], ref[key], rtol=0, atol=tol):
                    raise ConversionError(f'{where}: {key} {tuple(round(v, 6) for v in geometry[key])} differs from '
                                          f'{tuple(round(v, 6) for v in ref[key])} of {ref_file}')
        array = sitk.GetArrayViewFromImage(img)
        values = check_voxels(path, where)
        if role != 'seg':
            nonzero = nonzero or values
        if role == 'seg':
            check_labels(array, spec.allowed_labels, where)
            labels = sorted(np.unique(array).astype(int).tolist())
    if not nonzero:
        raise ConversionError(f'case {case.name}: every modality image is all zero in {case.folder}; a case needs '
                              f'at least one modality with content')
    return {'case': case.name, 'shape': list(ref['shape']), 'spacing': list(ref['spacing']),
            'labels': labels if 'seg' in case.files else None}


#: the file endings :func:`check_voxels` decodes (NIfTI, which SimpleITK reads wrongly: see there)
NIFTI_ENDINGS = ('.nii.gz', '.nii')


def is_nifti(path) -> bool:
    """Whether :func:`check_voxels` can decode ``path`` (a NIfTI file, :data:`NIFTI_ENDINGS`)."""
    return str(path).lower().endswith(NIFTI_ENDINGS)


def check_voxels(path: Path, where: str) -> bool:
    """Decode every stored voxel of a NIfTI file with nibabel and check it; returns whether any voxel is non-zero.

    SimpleITK zero-fills a truncated ``.nii.gz`` and silently turns NaN/Inf into 0, so the file is decoded again with
    nibabel, which raises on a truncated or corrupt stream; floating-point files are checked for NaN/Inf.
    :class:`ConversionError` starting with ``where`` (which names the file) otherwise.
    """
    import nibabel as nib
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel cannot decode a file SimpleITK could: truncated or corrupt
        raise ConversionError(f'{where}: cannot decode the voxel values, the file is truncated or corrupt '
                              f'({type(e).__name__}: {str(e).strip() or "no detail"})') from e
    if data.dtype.kind in 'fc':
        bad = ~np.isfinite(data)
        if bad.any():
            raise ConversionError(f'{where}: {int(bad.sum())} NaN/Inf voxel(s)')
    return bool(np.any(data))


def _check_case_star(args):
    return check_case(*args)


def check_cases(cases: list[SourceCase], layout: str, num_processes: int = 1, progress: bool = True) -> list[dict]:
    """:func:`check_case` for every case; all problems are collected into one :class:`ConversionError`."""
    errors, summaries = [], []
    jobs = [(c, layout) for c in cases]
    if num_processes > 1:
        with ProcessPoolExecutor(num_processes) as pool:
            futures = [pool.submit(_check_case_star, j) for j in jobs]
            for f in tqdm(futures, desc='checking cases', disable=not progress):
                try:
                    summaries.append(f.result())
                except ConversionError as e:
                    errors.append(str(e))
    else:
        for job in tqdm(jobs, desc='checking cases', disable=not progress):
            try:
                summaries.append(check_case(*job))
            except ConversionError as e:
                errors.append(str(e))
    if errors:
        raise ConversionError(join_errors(errors))
    return summaries


def check_labels(seg: np.ndarray, allowed: Sequence[int], where: str) -> None:
    """Refuse non-finite, non-integer or unlisted label values (:class:`ConversionError` naming ``where``)."""
    if seg.dtype.kind == 'f':
        if not np.all(np.isfinite(seg)):
            raise ConversionError(f'{where}: NaN/Inf label values')
        if not np.all(seg == np.round(seg)):
            raise ConversionError(f'{where}: non-integer label values')
    values = np.unique(seg)
    unexpected = sorted(set(values.tolist()) - set(allowed))
    if unexpected:
        raise ConversionError(f'{where}: unexpected label value(s) {unexpected}; this layout allows {list(allowed)}')
