"""BraTS (2018-2021 and 2023+) -> nnU-Net v2 raw data set, and predictions back to the BraTS label convention.

Source layouts (auto-detected; one folder per case, found recursively, so 2018/2019's ``HGG``/``LGG`` work):

``brats2020`` (BraTS 2018, 2019, 2020, 2021)
    ``CASE/CASE_{t1,t1ce,t2,flair}.nii.gz`` + ``CASE/CASE_seg.nii.gz``; labels 0 background, 1 necrotic /
    non-enhancing core, 2 oedema, 4 enhancing tumour.
``brats2023`` (BraTS 2023+ GLI, METS, MEN, SSA ...)
    ``CASE/CASE-{t1n,t1c,t2w,t2f}.nii.gz`` + ``CASE/CASE-seg.nii.gz``; labels 0, 1 necrosis/NETC, 2 oedema
    (SNFH), 3 enhancing tumour. (BraTS-PED 2023 and the 2024 post-treatment labels use other label sets and are
    refused with an "unexpected label" error.)

Target (whatever the source): ``$nnUNet_raw/DatasetXXX_NAME`` with channels ``0 T1, 1 T1ce, 2 T2, 3 FLAIR`` and
nnU-Net's region-based BraTS labels, as in nnU-Net's own Dataset137 conversion: oedema -> 1, necrosis -> 2,
enhancing -> 3; regions whole tumour (1, 2, 3), tumour core (2, 3), enhancing tumour (3). Cases with a
segmentation go to ``imagesTr``/``labelsTr``, cases without to ``imagesTs``.

Published splits: ``--split NAME`` (a split shipped in :mod:`nnunet_missingmod.splits`: ``rfnet2018-1/2/3``,
``rfnet2020``, ``m2ftrans2021``) or ``--split PATH`` (``{"train": [...], "val": [...], "test": [...]}`` of case
names). Every source case must be listed. train + val go to ``imagesTr``/``labelsTr`` and become the one fold of
nnU-Net's ``splits_final.json`` (train it as fold 0): written into the raw data set, from where
``nnUNetv2_plan_and_preprocess`` copies it, and to ``$nnUNet_preprocessed/DatasetXXX_NAME/``, where nnU-Net's trainer
reads it; test cases go to ``imagesTs`` with their labels in ``labelsTs``. One split is one data set (the three
BraTS 2018 splits are three data sets).

Safety: every case is read and checked before anything is written (missing/extra files, empty case folders, label
values, shape/spacing/origin/direction agreement, every voxel of every file decoded - a truncated ``.nii.gz`` is
refused -, NaN/Inf, cases whose modalities are all zero); the data set is written into a hidden temporary sibling folder
and renamed into place at the end, so a failed run leaves nothing behind (temporary folders of runs that were
killed are removed by the next run). The source folder is never written; an
existing target needs ``--overwrite`` and is then replaced by rename.

Command line::

    nnUNetv2_mm_convert_brats -i SRC -d ID [-n NAME] [--split NAME|PATH] [--overwrite] [--layout L] [-np N]
    nnUNetv2_mm_convert_brats --to-source PRED_DIR OUT_DIR --layout brats2020|brats2023
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_missingmod.cli import ArgumentParser, command
from nnunet_missingmod.splits import FOLDER as SPLITS_FOLDER
from nnunet_missingmod.splits import available_splits, source_case_name, split_file

#: The package's fixed channel order for BraTS.
CHANNELS = ('T1', 'T1ce', 'T2', 'FLAIR')
CHANNEL_NAMES = {str(i): name for i, name in enumerate(CHANNELS)}
#: nnU-Net's region-based BraTS labels (as in nnU-Net's Dataset137_BraTS21).
NNUNET_LABELS = {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': 3}
REGIONS_CLASS_ORDER = [1, 2, 3]
#: nnU-Net label of each tumour compartment.
NNUNET_LABEL_OF = {'ED': 1, 'NCR': 2, 'ET': 3}
FILE_ENDING = '.nii.gz'
#: nnU-Net's file of custom cross-validation splits
SPLITS_FINAL = 'splits_final.json'
NIFTI_ENDINGS = ('.nii.gz', '.nii')


class ConversionError(Exception):
    """Bad input or a target that cannot be written; the message names the case and the file."""


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


def to_nnunet_labels(seg: np.ndarray, layout: str, where: str = 'segmentation') -> np.ndarray:
    """Source labels -> nnU-Net labels (uint8); :class:`ConversionError` naming ``where`` for unexpected values."""
    spec = LAYOUTS[canonical_layout(layout)]
    _check_labels(seg, spec.allowed_labels, where)
    return spec.to_nnunet_lut()[seg.astype(np.int64)]


def to_source_labels(seg: np.ndarray, layout: str, where: str = 'prediction') -> np.ndarray:
    """nnU-Net labels (0-3) -> source convention (2020: 1->2, 2->1, 3->4; 2023: 1->2, 2->1, 3->3)."""
    spec = LAYOUTS[canonical_layout(layout)]
    _check_labels(seg, [0, *sorted(NNUNET_LABEL_OF.values())], where)
    return spec.to_source_lut()[seg.astype(np.int64)]


def _check_labels(seg: np.ndarray, allowed: Sequence[int], where: str) -> None:
    if seg.dtype.kind == 'f':
        if not np.all(np.isfinite(seg)):
            raise ConversionError(f'{where}: NaN/Inf label values')
        if not np.all(seg == np.round(seg)):
            raise ConversionError(f'{where}: non-integer label values')
    values = np.unique(seg)
    unexpected = sorted(set(values.tolist()) - set(allowed))
    if unexpected:
        raise ConversionError(f'{where}: unexpected label value(s) {unexpected}; this layout allows {list(allowed)}')


# --------------------------------------------------------------------------------------------------------------
# finding and checking the source


@dataclass
class SourceCase:
    name: str
    folder: Path
    files: dict = field(default_factory=dict)  # role -> Path


def _is_nifti(name: str) -> bool:
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
        niftis = sorted(f for f in files if _is_nifti(f))
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
        raise ConversionError(_join_errors(errors))
    if not cases:
        raise ConversionError(f'source folder {source} holds no BraTS case')
    return next(iter(layouts_seen)), sorted(cases, key=lambda c: c.name)


def _join_errors(errors: list[str], limit: int = 25) -> str:
    """The problems on one line (a command reports an error on one line)."""
    if len(errors) == 1:
        return errors[0]
    shown = '; '.join(errors[:limit])
    more = f'; ... and {len(errors) - limit} more' if len(errors) > limit else ''
    return f'{len(errors)} problems in the source: {shown}{more}'


def _read(path: Path):
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
        img = _read(path)
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
        values = _check_voxels(path, where)
        if role != 'seg':
            nonzero = nonzero or values
        if role == 'seg':
            _check_labels(array, spec.allowed_labels, where)
            labels = sorted(np.unique(array).astype(int).tolist())
    if not nonzero:
        raise ConversionError(f'case {case.name}: every modality image is all zero in {case.folder}; a case needs '
                              f'at least one modality with content')
    return {'case': case.name, 'shape': list(ref['shape']), 'spacing': list(ref['spacing']),
            'labels': labels if 'seg' in case.files else None}


def _check_voxels(path: Path, where: str) -> bool:
    """Decode every stored voxel with nibabel and check it; returns whether any voxel is non-zero.

    SimpleITK zero-fills a truncated ``.nii.gz`` and silently turns NaN into 0, so the file is decoded again with
    nibabel, which raises on a truncated or corrupt stream; floating-point files are checked for NaN/Inf.
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
        raise ConversionError(_join_errors(errors))
    return summaries


# --------------------------------------------------------------------------------------------------------------
# split files and target folders


def read_split(split, cases: dict[str, SourceCase], source: Path) -> dict[str, list[str]]:
    """Load and check a split (a shipped split's name or a JSON file, see :mod:`nnunet_missingmod.splits`); returns
    ``{"train", "val", "test"}`` lists of source case names (published names mapped by
    :func:`~nnunet_missingmod.splits.source_case_name`)."""
    try:
        path = split_file(split)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    label = f'split {path.stem}' if path.parent == SPLITS_FOLDER else f'split file {path}'
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f'{label}: cannot read it as JSON ({e})') from e
    if not isinstance(content, dict):
        raise ConversionError(f'{label}: expected an object {{"train": [...], "val": [...], "test": [...]}}')
    if 'validation' in content and 'val' not in content:
        content['val'] = content.pop('validation')
    unknown = sorted(set(content) - {'train', 'val', 'test', 'source'})
    if unknown:
        raise ConversionError(f'{label}: unknown key(s) {unknown}; expected train, val, test (and source)')
    out = {}
    for key in ('train', 'val', 'test'):
        names = content.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConversionError(f'{label}: "{key}" must be a list of case names')
        out[key] = list(names)
    if not out['train']:
        raise ConversionError(f'{label}: the "train" list is empty')
    errors, owner, absent = [], {}, []
    for key in ('train', 'val', 'test'):
        resolved = []
        for listed in out[key]:
            n = source_case_name(listed, cases)
            if n is None:
                absent.append(listed)
                continue
            if n in owner:
                errors.append(f'{label}: case {n} is listed in "{owner[n]}" and in "{key}"')
                continue
            owner[n] = key
            resolved.append(n)
            if key in ('train', 'val') and 'seg' not in cases[n].files:
                errors.append(f'{label}: {key} case {n} has no segmentation file in {cases[n].folder}')
        out[key] = resolved
    if absent:
        shown = ', '.join(absent[:10]) + (f' ... and {len(absent) - 10} more' if len(absent) > 10 else '')
        errors.insert(0, f'{label}: {len(absent)} listed case(s) not in the source folder {source}: {shown}')
    unlisted = sorted(set(cases) - set(owner))
    if unlisted:
        errors.append(f'{label}: {len(unlisted)} source case(s) are in no list, e.g. '
                      f'{", ".join(unlisted[:5])}; list every case (or remove it from the source)')
    if errors:
        raise ConversionError(_join_errors(errors))
    return out


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise ConversionError(f'dataset id must be between 1 and 999, got {dataset_id}')
    if not name or any(c in name for c in '/\\ ') or name.startswith('.'):
        raise ConversionError(f'invalid data set name {name!r}')
    return f'Dataset{int(dataset_id):03d}_{name}'


def _raw_root() -> Path:
    from nnunetv2.paths import nnUNet_raw
    if not nnUNet_raw:
        raise ConversionError('nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw')
    return Path(os.fspath(nnUNet_raw)).resolve()


def _preprocessed_root() -> Path:
    from nnunetv2.paths import nnUNet_preprocessed
    if not nnUNet_preprocessed:
        raise ConversionError('nnUNet_preprocessed is not set: --split writes splits_final.json there; export '
                              'nnUNet_preprocessed=/path/to/nnUNet_preprocessed')
    return Path(os.fspath(nnUNet_preprocessed)).resolve()


def _check_target(source: Path, target: Path, dataset_id: int, overwrite: bool) -> None:
    if _inside(target, source):
        raise ConversionError(f'output folder {target} is inside (or equal to) the source folder {source}; the '
                              f'source is never written - choose another nnUNet_raw')
    if _inside(source, target):
        raise ConversionError(f'source folder {source} is inside the output folder {target}')
    if target.exists() and not overwrite:
        raise ConversionError(f'output folder {target} already exists; use --overwrite to replace it')
    prefix = f'Dataset{dataset_id:03d}_'
    if target.parent.is_dir():
        others = sorted(p.name for p in target.parent.iterdir() if p.name.startswith(prefix) and p != target)
        if others:
            raise ConversionError(f'dataset id {dataset_id} is already used by {target.parent / others[0]}; nnU-Net '
                                  f'needs unique ids - choose another id or remove that folder')


# --------------------------------------------------------------------------------------------------------------
# writing


def _copy_image(src: Path, dst: Path) -> None:
    if src.name.endswith('.nii.gz'):
        shutil.copyfile(src, dst)
    else:
        import SimpleITK as sitk
        sitk.WriteImage(_read(src), str(dst), useCompression=True)


def _write_seg(src: Path, dst: Path, layout: str) -> None:
    import SimpleITK as sitk
    img = _read(src)
    seg = to_nnunet_labels(sitk.GetArrayFromImage(img), layout, str(src))
    out = sitk.GetImageFromArray(seg)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(dst), useCompression=True)


def _write_case(case: SourceCase, layout: str, images: Path, labels: Path | None) -> None:
    for ch, name in enumerate(CHANNELS):
        _copy_image(case.files[name], images / f'{case.name}_{ch:04d}{FILE_ENDING}')
    if labels is not None and 'seg' in case.files:
        _write_seg(case.files['seg'], labels / f'{case.name}{FILE_ENDING}', layout)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def remove_stale_temporary_folders(parent: Path) -> list[Path]:
    """Remove the ``.DatasetXXX_*.tmp-<pid>`` / ``.old-<pid>`` folders (and ``.*.json.tmp-<pid>`` files) that a
    killed conversion left in ``parent``: those whose process is gone. Returns what was removed."""
    import re
    removed = []
    if not parent.is_dir():
        return removed
    pattern = re.compile(r'^\.(Dataset\d{3}_.+\.(tmp|old)|.+\.json\.tmp)-(\d+)$')
    for p in sorted(parent.iterdir()):
        match = pattern.match(p.name)
        if not match or int(match.group(3)) == os.getpid() or _pid_alive(int(match.group(3))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _atomic_write_json(obj, path: Path) -> None:
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    tmp.write_text(json.dumps(obj, indent=4))
    os.replace(tmp, path)


def convert_brats(source, dataset_id: int, name: str | None = None, split=None, overwrite: bool = False,
                  layout: str | None = None, num_processes: int = 1, progress: bool = True) -> Path:
    """Convert a BraTS folder into ``$nnUNet_raw/DatasetXXX_NAME``; returns the data set folder.

    ``layout`` (``brats2020``/``brats2023`` or an alias) restricts detection to that layout; ``split`` is a shipped
    split's name (``rfnet2018-1`` ...) or the path of a ``{"train", "val", "test"}`` JSON file of case names. Raises
    :class:`ConversionError` for any bad input, before anything is written.
    """
    source = Path(source).resolve()
    layout, cases = find_cases(source, layout)
    spec = LAYOUTS[layout]
    name = name or spec.default_name
    folder_name = dataset_folder_name(dataset_id, name)
    target = _raw_root() / folder_name
    _check_target(source, target, int(dataset_id), overwrite)
    by_name = {c.name: c for c in cases}
    splits_file = None
    if split is not None:
        assignment = read_split(split, by_name, source)
        splits_file = _preprocessed_root() / folder_name / SPLITS_FINAL
        if _inside(splits_file, source):
            raise ConversionError(f'{splits_file} would be written inside the source folder {source}')
        train = assignment['train'] + assignment['val']
        test = assignment['test']
    else:
        assignment = None
        train = [c.name for c in cases if 'seg' in c.files]
        test = [c.name for c in cases if 'seg' not in c.files]
    if not train:
        raise ConversionError(f'source folder {source}: no case has a segmentation ({spec.filename("CASE", "seg")})'
                              f', so there is nothing to train on')
    check_cases(cases, layout, num_processes, progress)

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporary_folders(target.parent)
    tmp = target.with_name(f'.{folder_name}.tmp-{os.getpid()}')
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        images_tr, labels_tr = tmp / 'imagesTr', tmp / 'labelsTr'
        images_ts, labels_ts = tmp / 'imagesTs', tmp / 'labelsTs'
        for f in (images_tr, labels_tr):
            f.mkdir(parents=True)
        if test:
            images_ts.mkdir()
            if any('seg' in by_name[n].files for n in test):
                labels_ts.mkdir()
        jobs = [(n, images_tr, labels_tr) for n in train] + [(n, images_ts, labels_ts) for n in test]
        for n, imgs, labs in tqdm(jobs, desc=f'writing {folder_name}', disable=not progress):
            _write_case(by_name[n], layout, imgs, labs)
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(
            str(tmp), channel_names=dict(CHANNEL_NAMES), labels=json.loads(json.dumps(NNUNET_LABELS)),
            num_training_cases=len(train), file_ending=FILE_ENDING, regions_class_order=list(REGIONS_CLASS_ORDER),
            dataset_name=folder_name,
            description=f'BraTS ({layout} layout) converted by nnunet_missingmod: channels T1, T1ce, T2, FLAIR; '
                        f'labels oedema 1, necrosis/non-enhancing core 2, enhancing tumour 3',
            reference='https://www.synapse.org/brats', license='see the BraTS data terms of use',
            converted_by='nnunet_missingmod.dataset_conversion.brats', source_layout=layout,
            source_label_mapping={str(spec.labels[c]): NNUNET_LABEL_OF[c] for c in ('ED', 'NCR', 'ET')})
        if assignment is not None:
            (tmp / SPLITS_FINAL).write_text(json.dumps(_fold(assignment), indent=4))
        if target.exists():
            old = target.with_name(f'.{folder_name}.old-{os.getpid()}')
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if splits_file is not None:
        splits_file.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporary_folders(splits_file.parent)
        _atomic_write_json(_fold(assignment), splits_file)
    return target


def _fold(assignment: dict) -> list[dict]:
    """nnU-Net's ``splits_final.json`` content: one fold, the split's train and val cases."""
    return [{'train': assignment['train'], 'val': assignment['val']}]


def convert_predictions_to_source(pred_dir, out_dir, layout: str, progress: bool = True) -> list[Path]:
    """Map every NIfTI prediction in ``pred_dir`` back to the source label convention into ``out_dir`` (same file
    names). All files are checked before any is written."""
    import SimpleITK as sitk
    layout = canonical_layout(layout)
    pred_dir, out_dir = Path(pred_dir).resolve(), Path(out_dir).resolve()
    if not pred_dir.is_dir():
        raise ConversionError(f'prediction folder {pred_dir} does not exist')
    if out_dir == pred_dir:
        raise ConversionError(f'output folder {out_dir} equals the prediction folder; choose another one')
    files = sorted(p for p in pred_dir.iterdir() if p.is_file() and _is_nifti(p.name))
    if not files:
        raise ConversionError(f'prediction folder {pred_dir} holds no NIfTI file')
    for f in tqdm(files, desc='checking predictions', disable=not progress):
        to_source_labels(sitk.GetArrayFromImage(_read(f)), layout, str(f))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in tqdm(files, desc='writing', disable=not progress):
        img = _read(f)
        out = sitk.GetImageFromArray(to_source_labels(sitk.GetArrayFromImage(img), layout, str(f)))
        out.CopyInformation(img)
        name = f.name if f.name.endswith('.nii.gz') else f.name + '.gz'
        sitk.WriteImage(out, str(out_dir / name), useCompression=True)
        written.append(out_dir / name)
    return written


# --------------------------------------------------------------------------------------------------------------
# command line


def _parser(prog: str, dataset_id: int | None = None, name: str | None = None,
            layout: str | None = None) -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=prog, description='Convert a BraTS folder (2018-2021 "_flair/_t1/_t1ce/_t2/_seg" or 2023+ '
                               '"-t1n/-t1c/-t2w/-t2f/-seg") into an nnU-Net v2 raw data set with channels T1, T1ce, '
                               'T2, FLAIR and region-based labels; or, with --to-source, predictions back to the '
                               'BraTS label convention.')
    p.add_argument('-i', '--input', help='source folder (one sub-folder per case, searched recursively)')
    p.add_argument('-d', '--dataset-id', type=int, default=dataset_id,
                   help='nnU-Net dataset id' + (f' (default {dataset_id})' if dataset_id else ''))
    p.add_argument('-n', '--name', default=name, help='data set name (default: BraTS2020 / BraTS2023 by layout)'
                   if name is None else f'data set name (default {name})')
    p.add_argument('--split', metavar='NAME|PATH',
                   help='a published train/val/test split: one of ' + ', '.join(available_splits()) + ' (BraTS '
                   '2018 splits 1-3 of RFNet/M2FTrans, BraTS 2020 of RFNet/M2FTrans, BraTS 2021 of M2FTrans), or a '
                   'JSON file {"train": [...], "val": [...], "test": [...]} of case names. train + val go to '
                   'imagesTr/labelsTr and become fold 0 of nnU-Net\'s splits_final.json (written to the raw data set, '
                   'from where nnUNetv2_plan_and_preprocess copies it, and to $nnUNet_preprocessed/DatasetXXX_NAME); '
                   'test goes to imagesTs/labelsTs. Every source case must be listed; RFNet\'s HG_/LG_ name prefixes '
                   'are mapped to the case folders')
    p.add_argument('--overwrite', action='store_true', help='replace an existing target data set')
    p.add_argument('--layout', default=layout, help='brats2020 (2018/2019/2021) or brats2023; for conversion the '
                   'default is auto-detection, --to-source needs it')
    p.add_argument('-np', '--num-processes', type=int, default=1, help='processes for checking the source')
    p.add_argument('--to-source', nargs=2, metavar=('PRED_DIR', 'OUT_DIR'),
                   help='map nnU-Net predictions (labels 0-3) back to the BraTS convention of --layout')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    return p


@command('nnUNetv2_mm_convert_brats')
def main(argv: Sequence[str] | None = None, prog: str = 'nnUNetv2_mm_convert_brats', dataset_id: int | None = None,
         name: str | None = None, layout: str | None = None) -> int:
    """The command line; returns the exit status (0: written; 1: bad input, one line on stderr, nothing written).
    From Python, :func:`convert_brats` / :func:`convert_predictions_to_source` return the paths."""
    parser = _parser(prog, dataset_id, name, layout)
    args = parser.parse_args(argv)
    if args.to_source:
        if not args.layout:
            parser.error('--to-source needs --layout brats2020 or brats2023')
        if args.input or args.split:
            parser.error('--to-source takes no -i/--split')
        result = convert_predictions_to_source(*args.to_source, args.layout, progress=not args.quiet)
        print(f'wrote {len(result)} file(s) in the {canonical_layout(args.layout)} convention to '
              f'{args.to_source[1]}')
        return 0
    if not args.input or args.dataset_id is None:
        parser.error('conversion needs -i SRC and -d ID')
    result = convert_brats(args.input, args.dataset_id, args.name, args.split, args.overwrite, args.layout,
                           args.num_processes, progress=not args.quiet)
    print(f'wrote {result}')
    return 0


def year_main(dataset_id: int, name: str, layout: str, argv: Iterable[str] | None = None) -> int:
    """Entry point of the per-release scripts (``Dataset220_BraTS2020.py`` ...): defaults for id, name, layout;
    returns the exit status (``sys.exit(year_main(...))``)."""
    return main(list(sys.argv[1:] if argv is None else argv), prog=f'Dataset{dataset_id:03d}_{name}',
                dataset_id=dataset_id, name=name, layout=layout)


if __name__ == '__main__':
    sys.exit(main())
