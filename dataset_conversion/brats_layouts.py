"""The BraTS source layouts (file naming, label values) and finding the cases of a source folder.

A layout's label values are mapped to nnU-Net's region-based labels (:data:`NNUNET_LABEL_OF`); the channel order of
the converted data set is :data:`CHANNELS` whatever the layout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_missingmod.dataset_conversion.errors import ConversionError, join_errors

#: The package's fixed channel order for BraTS.
CHANNELS = ('T1', 'T1ce', 'T2', 'FLAIR')
#: nnU-Net label of each tumour compartment.
NNUNET_LABEL_OF = {'ED': 1, 'NCR': 2, 'ET': 3}
FILE_ENDING = '.nii.gz'
NIFTI_ENDINGS = ('.nii.gz', '.nii')


@dataclass(frozen=True)
class Layout:
    name: str
    sep: str
    suffixes: dict  # channel name -> file suffix
    labels: dict  # compartment ('NCR', 'ED', 'ET') -> source label
    default_name: str
    synthetic_pattern: str  # case-name pattern of the synthetic generator
    seg_suffix: str = 'seg'

    def filename(self, case: str, role: str, ending: str = FILE_ENDING) -> str:
        """File name of ``role`` (a channel name or ``'seg'``) of ``case``."""
        suffix = self.seg_suffix if role == 'seg' else self.suffixes[role]
        return f'{case}{self.sep}{suffix}{ending}'

    def source_label(self, compartment: str) -> int:
        return self.labels[compartment]

    @property
    def allowed_labels(self) -> list[int]:
        return sorted([0, *self.labels.values()])

    def to_nnunet_lut(self) -> np.ndarray:
        lut = np.zeros(max(self.allowed_labels) + 1, np.uint8)
        for compartment, source in self.labels.items():
            lut[source] = NNUNET_LABEL_OF[compartment]
        return lut

    def to_source_lut(self) -> np.ndarray:
        lut = np.zeros(max(NNUNET_LABEL_OF.values()) + 1, np.uint8)
        for compartment, source in self.labels.items():
            lut[NNUNET_LABEL_OF[compartment]] = source
        return lut

    def synthetic_case_name(self, index: int) -> str:
        return self.synthetic_pattern.format(index)

    def parse(self, filename: str) -> tuple[str, str] | None:
        """``(case prefix, role)`` if ``filename`` is a file of this layout, else None."""
        for ending in NIFTI_ENDINGS:
            if filename.endswith(ending):
                stem = filename[:-len(ending)]
                break
        else:
            return None
        for role, suffix in [*self.suffixes.items(), ('seg', self.seg_suffix)]:
            tail = self.sep + suffix
            if stem.endswith(tail) and len(stem) > len(tail):
                return stem[:-len(tail)], role
        return None


LAYOUTS = {
    'brats2020': Layout('brats2020', '_', {'T1': 't1', 'T1ce': 't1ce', 'T2': 't2', 'FLAIR': 'flair'},
                        {'NCR': 1, 'ED': 2, 'ET': 4}, 'BraTS2020', 'BraTS20_Training_{:03d}'),
    'brats2023': Layout('brats2023', '-', {'T1': 't1n', 'T1ce': 't1c', 'T2': 't2w', 'FLAIR': 't2f'},
                        {'NCR': 1, 'ED': 2, 'ET': 3}, 'BraTS2023', 'BraTS-GLI-{:05d}-000'),
}
LAYOUT_ALIASES = {'brats2018': 'brats2020', 'brats2019': 'brats2020', 'brats2021': 'brats2020',
                  'brats2024': 'brats2023'}


def canonical_layout(layout: str) -> str:
    key = layout.lower()
    key = LAYOUT_ALIASES.get(key, key)
    if key not in LAYOUTS:
        raise ValueError(f'unknown BraTS layout {layout!r}; choose one of '
                         f'{sorted([*LAYOUTS, *LAYOUT_ALIASES])}')
    return key


@dataclass
class SourceCase:
    name: str
    folder: Path
    files: dict = field(default_factory=dict)  # role -> Path


def is_nifti(name: str) -> bool:
    return not name.startswith('.') and name.endswith(NIFTI_ENDINGS)


def find_cases(source: Path, layout: str | None = None) -> tuple[str, list[SourceCase]]:
    """Find the case folders under ``source`` and their files; returns ``(layout, cases)``.

    Structural problems (no cases, unknown or duplicate files, a missing modality, mixed layouts) raise
    :class:`ConversionError`; all problems found are listed.
    """
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f'source folder {source} does not exist or is not a folder')
    expected = canonical_layout(layout) if layout else None
    folders, empty = [], []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        niftis = sorted(f for f in files if is_nifti(f))
        if niftis:
            folders.append((Path(root), niftis))
        elif not dirs and Path(root) != source:  # a leaf folder without images: an empty (or broken) case
            empty.append(Path(root))
    if not folders:
        raise ConversionError(f'source folder {source} is empty: no NIfTI files (.nii.gz/.nii) found in it')

    errors, cases, layouts_seen = [], [], {}
    for folder in empty:
        errors.append(f'case {folder.name}: empty case folder {folder} (no NIfTI file in it); remove it or add '
                      f'the case\'s files')
    for folder, niftis in folders:
        if folder == source:
            errors.append(f'{source / niftis[0]}: NIfTI files directly in the source folder; BraTS keeps one '
                          f'folder per case')
            continue
        case = SourceCase(folder.name, folder)
        case_layouts = set()
        for f in niftis:
            parsed = [(name, LAYOUTS[name].parse(f)) for name in LAYOUTS]
            parsed = [(name, p) for name, p in parsed if p is not None and (expected is None or name == expected)]
            if not parsed:
                errors.append(f'case {case.name}: unexpected file {folder / f} (not a BraTS modality or '
                              f'segmentation file of {"layout " + expected if expected else "any known layout"})')
                continue
            lay, (prefix, role) = parsed[0]
            if prefix != case.name:
                errors.append(f'case {case.name}: file {folder / f} does not belong to this case folder '
                              f'(its name starts with {prefix!r})')
                continue
            if role in case.files:
                errors.append(f'case {case.name}: extra file {folder / f} ({role} is already given by '
                              f'{case.files[role]})')
                continue
            case.files[role] = folder / f
            case_layouts.add(lay)
        if len(case_layouts) > 1:
            errors.append(f'case {case.name}: files of several layouts ({sorted(case_layouts)}) in {folder}')
            continue
        if not any(ch in case.files for ch in CHANNELS):
            errors.append(f'case {case.name}: no modality image at all in {folder}')
            continue
        lay = case_layouts.pop()
        layouts_seen.setdefault(lay, case.name)
        spec = LAYOUTS[lay]
        for ch in CHANNELS:
            if ch not in case.files:
                errors.append(f'case {case.name}: missing {ch} file {folder / spec.filename(case.name, ch)}')
        cases.append(case)
    if len(layouts_seen) > 1:
        errors.append('source mixes layouts: ' + ', '.join(f'{lay} (e.g. case {c})' for lay, c in
                                                            layouts_seen.items()))
    seen = {}
    for case in cases:
        if case.name in seen:
            errors.append(f'case name {case.name} occurs twice: {seen[case.name]} and {case.folder}')
        seen.setdefault(case.name, case.folder)
    if errors:
        raise ConversionError(join_errors(errors))
    if not cases:
        raise ConversionError(f'source folder {source} holds no BraTS case')
    return next(iter(layouts_seen)), sorted(cases, key=lambda c: c.name)
