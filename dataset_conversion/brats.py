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
    nnUNetv2_mm_convert_brats --to-source PRED_DIR OUT_DIR --layout brats2020|brats2023 [--overwrite]

``--to-source`` checks every prediction before it writes, needs ``--overwrite`` for a non-empty ``OUT_DIR`` (whose
other files stay) and writes through a temporary sibling folder: all files or none.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_missingmod.cli import ArgumentParser, command
from nnunet_missingmod.dataset_conversion.atomic_writing import (atomic_folder, atomic_write_json,
                                                                 remove_stale_temporary_folders)
from nnunet_missingmod.dataset_conversion.brats_checks import check_cases, check_labels, read_image
from nnunet_missingmod.dataset_conversion.brats_layouts import (CHANNELS, FILE_ENDING, LAYOUTS, NNUNET_LABEL_OF,
                                                                SourceCase, canonical_layout, find_cases, is_nifti)
from nnunet_missingmod.dataset_conversion.brats_splits import SPLITS_FINAL, nnunet_folds, read_split
from nnunet_missingmod.dataset_conversion.errors import ConversionError
from nnunet_missingmod.splits import available_splits

CHANNEL_NAMES = {str(i): name for i, name in enumerate(CHANNELS)}
#: nnU-Net's region-based BraTS labels (as in nnU-Net's Dataset137_BraTS21).
NNUNET_LABELS = {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': 3}
REGIONS_CLASS_ORDER = [1, 2, 3]


def to_nnunet_labels(seg: np.ndarray, layout: str, where: str = 'segmentation') -> np.ndarray:
    """Source labels -> nnU-Net labels (uint8); :class:`ConversionError` naming ``where`` for unexpected values."""
    spec = LAYOUTS[canonical_layout(layout)]
    check_labels(seg, spec.allowed_labels, where)
    return spec.to_nnunet_lut()[seg.astype(np.int64)]


def to_source_labels(seg: np.ndarray, layout: str, where: str = 'prediction') -> np.ndarray:
    """nnU-Net labels (0-3) -> source convention (2020: 1->2, 2->1, 3->4; 2023: 1->2, 2->1, 3->3)."""
    spec = LAYOUTS[canonical_layout(layout)]
    check_labels(seg, [0, *sorted(NNUNET_LABEL_OF.values())], where)
    return spec.to_source_lut()[seg.astype(np.int64)]


# --------------------------------------------------------------------------------------------------------------
# target folders


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
        sitk.WriteImage(read_image(src), str(dst), useCompression=True)


def _write_seg(src: Path, dst: Path, layout: str) -> None:
    import SimpleITK as sitk
    img = read_image(src)
    seg = to_nnunet_labels(sitk.GetArrayFromImage(img), layout, str(src))
    out = sitk.GetImageFromArray(seg)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(dst), useCompression=True)


def _write_case(case: SourceCase, layout: str, images: Path, labels: Path | None) -> None:
    for ch, name in enumerate(CHANNELS):
        _copy_image(case.files[name], images / f'{case.name}_{ch:04d}{FILE_ENDING}')
    if labels is not None and 'seg' in case.files:
        _write_seg(case.files['seg'], labels / f'{case.name}{FILE_ENDING}', layout)


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

    with atomic_folder(target) as tmp:
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
            (tmp / SPLITS_FINAL).write_text(json.dumps(nnunet_folds(assignment), indent=4))
    if splits_file is not None:
        splits_file.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporary_folders(splits_file.parent)
        atomic_write_json(nnunet_folds(assignment), splits_file)
    return target


def _source_name(f: Path) -> str:
    return f.name if f.name.endswith('.nii.gz') else f.name + '.gz'


def convert_predictions_to_source(pred_dir, out_dir, layout: str, progress: bool = True,
                                  overwrite: bool = False) -> list[Path]:
    """Map every NIfTI prediction in ``pred_dir`` back to the source label convention into ``out_dir`` (same file
    names, ``.nii`` as ``.nii.gz``). All files are checked before any is written; a non-empty ``out_dir`` needs
    ``overwrite``. The files are written into a hidden temporary sibling folder first and moved into ``out_dir``
    at the end (a new ``out_dir`` by one rename; in an existing one each file is replaced by rename and other files
    stay), so a failed run leaves ``out_dir`` as it was."""
    import SimpleITK as sitk
    layout = canonical_layout(layout)
    pred_dir, out_dir = Path(pred_dir).resolve(), Path(out_dir).resolve()
    if not pred_dir.is_dir():
        raise ConversionError(f'prediction folder {pred_dir} does not exist')
    if out_dir == pred_dir:
        raise ConversionError(f'output folder {out_dir} equals the prediction folder; choose another one')
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise ConversionError(f'output folder {out_dir} is a file, not a folder')
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        names = sorted(p.name for p in out_dir.iterdir())
        raise ConversionError(f'output folder {out_dir} is not empty ({", ".join(names[:5])}'
                              f'{" ..." if len(names) > 5 else ""}); use --overwrite to replace the same-named files '
                              f'there, or choose an empty folder')
    files = sorted(p for p in pred_dir.iterdir() if p.is_file() and is_nifti(p.name))
    if not files:
        raise ConversionError(f'prediction folder {pred_dir} holds no NIfTI file')
    by_name: dict[str, Path] = {}
    for f in files:
        if _source_name(f) in by_name:
            raise ConversionError(f'{by_name[_source_name(f)]} and {f} would both be written as '
                                  f'{out_dir / _source_name(f)}; keep one of them')
        by_name[_source_name(f)] = f
    for f in tqdm(files, desc='checking predictions', disable=not progress):
        to_source_labels(sitk.GetArrayFromImage(read_image(f)), layout, str(f))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f'.{out_dir.name}.tmp-{os.getpid()}')
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        for f in tqdm(files, desc='writing', disable=not progress):
            img = read_image(f)
            out = sitk.GetImageFromArray(to_source_labels(sitk.GetArrayFromImage(img), layout, str(f)))
            out.CopyInformation(img)
            sitk.WriteImage(out, str(tmp / _source_name(f)), useCompression=True)
        if out_dir.is_dir():
            for name in sorted(by_name):
                os.replace(tmp / name, out_dir / name)
            tmp.rmdir()
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out_dir / name for name in sorted(by_name)]


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
    p.add_argument('--overwrite', action='store_true', help='replace an existing target data set; with '
                   '--to-source, write into a non-empty OUT_DIR (its same-named files are replaced, others stay)')
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
        result = convert_predictions_to_source(*args.to_source, args.layout, progress=not args.quiet,
                                               overwrite=args.overwrite)
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
