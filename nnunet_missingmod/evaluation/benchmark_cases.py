"""The cases of ``nnUNetv2_mm_benchmark``: where they come from, their input under each modality subset, their
reference label maps.

A case is ``(identifier, input under a subset, reference file)``; the input is a function of the subset (channel
indices of the present modalities) that returns the preprocessed data and nnU-Net's properties. Sources:

* :func:`raw_test_cases`: a raw test folder (``-i``/``-l``), every modality file required;
* :func:`validation_cases`: each fold's validation cases (``--val``), from nnU-Net's preprocessed data or, under
  ``--absence raw``, from the raw ``imagesTr``.

How a missing modality is made absent (``--absence``) is described in :mod:`nnunet_missingmod.evaluation.benchmark`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from tqdm import tqdm

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunet_missingmod.dataset_conversion.brats_checks import check_voxels, is_nifti
from nnunet_missingmod.dataset_conversion.errors import ConversionError
from nnunet_missingmod.inference.case_files import check_case_images, prepare_case_files, scan_input_folder
from nnunet_missingmod.inference.predict import MissingModalityPredictor
from nnunet_missingmod.modalities import modality_names

#: the preprocessed data and properties of a case under a subset (channel indices of the present modalities)
SubsetInput = Callable[[Tuple[int, ...]], Tuple[torch.Tensor, dict]]
Case = Tuple[str, SubsetInput, str]  # identifier, its input under each subset, reference file
#: ``--absence``: how a missing modality is made absent (see :mod:`nnunet_missingmod.evaluation.benchmark`)
ABSENCE_MODES = ('raw', 'preprocessed')
DEFAULT_ABSENCE = 'preprocessed'


def check_references(reader_writer, files: Sequence[str], allowed_labels: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """Read every reference label map with nnU-Net's ``reader_writer`` and check it (every voxel decoded, label
    values), before anything is predicted; returns ``{file: shape}``."""
    shapes = {}
    for path in files:
        if is_nifti(path) and os.path.isfile(path):
            try:
                check_voxels(Path(path), f'reference segmentation {path}')
            except ConversionError as e:
                raise ValueError(str(e)) from e
        shapes[path] = tuple(load_reference(reader_writer, path, allowed_labels)[0].shape)
    return shapes


def check_case_files(cases: Dict[str, Dict[int, str]], reader_writer, references: Dict[str, str] | None = None,
                     reference_shapes: Dict[str, Tuple[int, ...]] | None = None, progress: bool = False) -> None:
    """Every image of every case (``{case: {channel: path}}``) read and checked before the first prediction:
    readable, every voxel finite, one shape and spacing per case
    (:func:`~nnunet_missingmod.inference.predict.check_case_images`) and, given ``references`` (``{case: file}``)
    and their ``reference_shapes``, the reference's shape. All problems in one ValueError naming the files."""
    problems = []
    for case in tqdm(sorted(cases), desc='checking images', disable=not progress):
        try:
            _, (shape, _, first) = check_case_images(case, cases[case], reader_writer)
        except ValueError as e:
            problems.append(str(e))
            continue
        reference = (references or {}).get(case)
        if reference in (reference_shapes or {}) and tuple(reference_shapes[reference]) != tuple(shape):
            problems.append(f"case {case}: reference {reference} has shape {tuple(reference_shapes[reference])}, "
                            f"{first} has {tuple(shape)}")
    if problems:
        raise ValueError(join_problems(problems))


def check_preprocessed_cases(predictor: MissingModalityPredictor, folder: str, keys: Sequence[str],
                             progress: bool = False) -> None:
    """``--val --absence preprocessed``: the preprocessed data of every case ``keys`` in ``folder`` (the data set's
    nnU-Net preprocessed folder) loaded and checked for NaN/Inf before the first prediction; one ValueError."""
    data_folder = os.path.join(folder, predictor.configuration_manager.data_identifier)
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(f"{data_folder} does not exist: --val predicts nnU-Net's preprocessed data "
                                f"(run nnUNetv2_plan_and_preprocess)")
    ds = infer_dataset_class(data_folder)(data_folder, list(keys))
    problems = []
    for key in tqdm(keys, desc='checking preprocessed data', disable=not progress):
        try:
            data = np.asarray(ds.load_case(key)[0][:])
        except Exception as e:  # noqa: BLE001 - an unreadable case is bad input, named
            problems.append(f"case {key}: cannot load its preprocessed data in {data_folder} ({type(e).__name__}: "
                            f"{' '.join(str(e).split()) or 'no detail'})")
            continue
        if not np.isfinite(data).all():
            problems.append(f"case {key}: {int((~np.isfinite(data)).sum())} NaN/Inf value(s) in its preprocessed "
                            f"data in {data_folder}")
    if problems:
        raise ValueError(join_problems(problems))


def join_problems(problems: Sequence[str], limit: int = 10) -> str:
    """Problems on one line: the only one, or ``N problems: first; second; ... and K more``."""
    if len(problems) == 1:
        return problems[0]
    more = f'; ... and {len(problems) - limit} more' if len(problems) > limit else ''
    return f'{len(problems)} problems: ' + '; '.join(problems[:limit]) + more


def load_reference(reader_writer, path: str, allowed_labels: Sequence[int]) -> Tuple[np.ndarray, List[float]]:
    """The label map ``(Z, Y, X)`` of a reference file and its spacing; FileNotFoundError / ValueError naming the
    file when it is absent, unreadable or has label values outside ``allowed_labels``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference segmentation {path} does not exist")
    try:
        seg, properties = reader_writer.read_seg(path)
    except Exception as e:  # noqa: BLE001 - an unreadable reference is bad input, named
        raise ValueError(f"reference segmentation {path} cannot be read ({type(e).__name__}: "
                         f"{' '.join(str(e).split()) or 'no detail'})") from e
    seg = seg[0]
    unexpected = sorted(set(np.unique(seg).tolist()) - set(allowed_labels) - {0})
    unexpected = [int(v) if float(v).is_integer() else v for v in unexpected]
    if unexpected:
        raise ValueError(f"{path}: unexpected label values {unexpected}; dataset.json labels use {allowed_labels}")
    return seg, [float(s) for s in properties['spacing']]


def preprocessed_dataset_folder(dataset: str) -> str:
    """``$nnUNet_preprocessed/DatasetXXX_Name`` of a dataset name or ID."""
    return os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))


def validation_keys(folder: str, fold: int) -> List[str]:
    """Validation case identifiers of ``fold`` in ``folder/splits_final.json``."""
    splits_file = os.path.join(folder, 'splits_final.json')
    if not os.path.isfile(splits_file):
        raise FileNotFoundError(f"{splits_file} does not exist: --val needs nnU-Net's splits (train the model first)")
    splits = load_json(splits_file)
    if not isinstance(fold, int) or not 0 <= fold < len(splits):
        raise ValueError(f"fold {fold!r} has no validation split in {splits_file} ({len(splits)} folds)")
    return sorted(splits[fold]['val'])


def _tensor(data) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(data), dtype=np.float32))


def _same_for_every_subset(data: torch.Tensor, properties: dict) -> SubsetInput:
    """``--absence preprocessed``: one preprocessed case for every subset (the predictor zeroes missing channels)."""
    return lambda subset: (data, properties)


def present_files_input(predictor: MissingModalityPredictor, case: str, files: Dict[int, str],
                        voxels_checked: bool = False) -> SubsetInput:
    """``--absence raw``: under a subset, ``case`` preprocessed from the files of the present modalities only, as
    ``nnUNetv2_mm_predict`` sees a case whose other files are absent (its :func:`prepare_case_files` zero-fills
    them in the geometry of a present modality, then nnU-Net's preprocessor runs on the files). ``voxels_checked``:
    the files went through :func:`check_case_files` already (they are not decoded again for every subset)."""
    dataset_json = predictor.dataset_json
    names, ending = modality_names(dataset_json), dataset_json['file_ending']
    reader_writer = predictor.plans_manager.image_reader_writer_class()
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)

    def subset_input(subset: Tuple[int, ...]) -> Tuple[torch.Tensor, dict]:
        present = {c: f for c, f in files.items() if c in subset}
        with tempfile.TemporaryDirectory(prefix='mm_benchmark_absent_') as zero_folder:
            paths, _ = prepare_case_files(case, present, names, [], reader_writer, ending, zero_folder,
                                          decode_voxels=not voxels_checked)
            data, _, properties = preprocessor.run_case(paths, None, predictor.plans_manager,
                                                        predictor.configuration_manager, dataset_json)
        return _tensor(data), properties
    return subset_input


def validation_cases(predictor: MissingModalityPredictor, folder: str, fold: int,
                     keys: Sequence[str] | None = None, raw_images: str | None = None,
                     voxels_checked: bool = False) -> Iterator[Case]:
    """The validation cases of ``fold`` (``folder/splits_final.json``; ``folder`` is the data set's nnU-Net
    preprocessed folder) and their reference files (``folder/gt_segmentations``); ``keys`` restricts. The input is
    nnU-Net's preprocessed data (``--absence preprocessed``) or, with ``raw_images`` (the data set's raw
    ``imagesTr``), the present files of each subset (``--absence raw``; ``voxels_checked``: see
    :func:`present_files_input`)."""
    keys = validation_keys(folder, fold) if keys is None else list(keys)
    ending = predictor.dataset_json['file_ending']
    if raw_images is not None:
        files = complete_cases(raw_images, predictor.dataset_json, keys)
        for key in keys:
            yield key, present_files_input(predictor, key, files[key], voxels_checked), \
                os.path.join(folder, 'gt_segmentations', key + ending)
        return
    data_folder = os.path.join(folder, predictor.configuration_manager.data_identifier)
    ds = infer_dataset_class(data_folder)(data_folder, keys)
    for key in keys:
        data, _, _, properties = ds.load_case(key)
        yield key, _same_for_every_subset(_tensor(data[:]), properties), \
            os.path.join(folder, 'gt_segmentations', key + ending)


def raw_test_cases(predictor: MissingModalityPredictor, images: str, labels: str,
                   absence: str = DEFAULT_ABSENCE, voxels_checked: bool = False) -> Iterator[Case]:
    """Cases of a raw test folder (all modality files required): preprocessed once per subset from the present
    files (``absence='raw'``; ``voxels_checked``: see :func:`present_files_input`) or once with all files
    (``'preprocessed'``)."""
    if absence not in ABSENCE_MODES:
        raise ValueError(f"unknown absence mode {absence!r}; use one of {ABSENCE_MODES}")
    dataset_json = predictor.dataset_json
    ending = dataset_json['file_ending']
    cases = scan_test_folder(images, labels, dataset_json)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    for case in sorted(cases):
        if absence == 'raw':
            subset_input = present_files_input(predictor, case, cases[case], voxels_checked)
        else:
            files = [cases[case][c] for c in sorted(cases[case])]
            data, _, properties = preprocessor.run_case(files, None, predictor.plans_manager,
                                                        predictor.configuration_manager, dataset_json)
            subset_input = _same_for_every_subset(_tensor(data), properties)
        yield case, subset_input, os.path.join(labels, case + ending)


def complete_cases(images: str, dataset_json: dict, keys: Sequence[str] | None = None) -> Dict[str, Dict[int, str]]:
    """``{case: {channel: path}}`` of a raw image folder (of the cases ``keys``, default all);
    FileNotFoundError naming the case for a case that lacks a modality file or has none."""
    names = modality_names(dataset_json)
    cases = scan_input_folder(images, dataset_json['file_ending'], len(names))
    if not cases:
        raise FileNotFoundError(f"no CASE_XXXX{dataset_json['file_ending']} files in {images}")
    for case in (sorted(cases) if keys is None else keys):
        absent = [names[c] for c in range(len(names)) if c not in cases.get(case, {})]
        if absent:
            raise FileNotFoundError(f"case {case} in {images} lacks the files of {absent}: the benchmark needs "
                                    f"complete cases (it drops modalities itself)")
    return cases if keys is None else {k: cases[k] for k in keys}


def scan_test_folder(images: str, labels: str, dataset_json: dict) -> dict:
    """``{case: {channel: path}}`` of a raw test folder; FileNotFoundError naming the case for an incomplete case
    or an absent reference."""
    ending = dataset_json['file_ending']
    cases = complete_cases(images, dataset_json)
    for case in cases:
        if not os.path.isfile(os.path.join(labels, case + ending)):
            raise FileNotFoundError(f"case {case}: no reference {os.path.join(labels, case + ending)}")
    return cases
