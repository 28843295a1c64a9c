"""``nnUNetv2_mm_benchmark --absence raw``: a missing modality is absent before nnU-Net's preprocessing.

A case whose modalities have different foregrounds (T1's box inside T2's larger one). Under the subset {T1}, the
input the benchmark predicts must be nnU-Net's preprocessing of the T1 file alone: cropped to T1's foreground and
z-scored over it, every other channel zero. Expected values are computed here with NumPy from the written
arrays. The old behaviour (``--absence preprocessed``: crop and z-score masks from all four foregrounds, T2's
voxels then zeroed) is shown to differ.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import BRATS_DATASET_JSON, small_plans
from nnunet_missingmod.evaluation.benchmark import present_files_input, raw_test_cases
from nnunet_missingmod.inference.predict import MissingModalityPredictor

SHAPE = (20, 24, 18)            # z, y, x as SimpleITK's arrays
T1_BOX = (slice(6, 14), slice(5, 17), slice(4, 12))
T2_BOX = (slice(2, 18), slice(2, 22), slice(2, 16))


def _predictor() -> MissingModalityPredictor:
    predictor = MissingModalityPredictor(device=torch.device('cpu'), allow_tqdm=False)
    plans = small_plans()
    plans['foreground_intensity_properties_per_channel'] = {str(c): {} for c in range(4)}  # unused by z-scoring
    predictor.plans_manager = PlansManager(plans)
    predictor.configuration_manager = predictor.plans_manager.get_configuration('3d_fullres')
    predictor.dataset_json = BRATS_DATASET_JSON
    return predictor


def _write_case(folder, rng) -> dict:
    """Four modality files (T1, T1ce, FLAIR on T1's box, T2 on its larger box) and a label map; returns arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for c in range(4):
        image = np.zeros(SHAPE, np.float32)
        box = T2_BOX if c == 2 else T1_BOX
        image[box] = rng.uniform(100, 1000, image[box].shape)
        arrays[c] = image
        itk = sitk.GetImageFromArray(image)
        itk.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(itk, str(folder / f'case_{c:04d}.nii.gz'))
    return arrays


def test_raw_absence_preprocesses_the_present_files_only(tmp_path):
    arrays = _write_case(tmp_path / 'images', np.random.default_rng(0))
    files = {c: str(tmp_path / 'images' / f'case_{c:04d}.nii.gz') for c in range(4)}
    predictor = _predictor()

    data, properties = present_files_input(predictor, 'case', files)((0,))
    t1 = arrays[0][T1_BOX].astype(np.float64)
    expected_t1 = (t1 - t1.mean()) / t1.std()
    assert tuple(data.shape) == (4, 8, 12, 8), 'cropped to the present T1 foreground'
    np.testing.assert_allclose(data[0].numpy(), expected_t1, rtol=1e-5, atol=1e-5)
    assert not data[1:].any(), 'absent modalities are zero'
    assert properties['bbox_used_for_cropping'] == [[6, 14], [5, 17], [4, 12]]

    # T2 present with T1: the crop is T2's larger box, T1 z-scored over the union of both foregrounds
    data, _ = present_files_input(predictor, 'case', files)((0, 2))
    assert tuple(data.shape) == (4, 16, 20, 14)

    # the old behaviour: one preprocessing of the complete case, the dropped channels zeroed afterwards; its T1
    # channel is cropped to T2's box and carries the constant -mean/std where only T2 has signal
    (_, old_input, _), = raw_test_cases(predictor, str(tmp_path / 'images'), _labels(tmp_path), 'preprocessed')
    old, _ = old_input((0,))
    assert tuple(old.shape) == (4, 16, 20, 14)
    t1_union = arrays[0][T2_BOX].astype(np.float64)
    constant = -t1_union.mean() / t1_union.std()
    assert np.isclose(float(old[0, 0, 0, 0]), constant, atol=1e-5) and abs(constant) > 0.3


def _labels(tmp_path) -> str:
    folder = tmp_path / 'labels'
    folder.mkdir(exist_ok=True)
    seg = np.zeros(SHAPE, np.uint8)
    seg[8:12, 8:12, 6:10] = 1
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(folder / 'case.nii.gz'))
    return str(folder)


def test_raw_absence_is_the_benchmark_input_of_raw_test_cases(tmp_path):
    """``raw_test_cases(..., 'raw')`` hands out, per subset, what :func:`present_files_input` gives."""
    _write_case(tmp_path / 'images', np.random.default_rng(1))
    predictor = _predictor()
    (case, subset_input, reference), = raw_test_cases(predictor, str(tmp_path / 'images'), _labels(tmp_path), 'raw')
    assert case == 'case' and reference.endswith('case.nii.gz')
    data, _ = subset_input((0,))
    assert tuple(data.shape) == (4, 8, 12, 8)
    data, _ = subset_input((0, 1, 2, 3))
    assert tuple(data.shape) == (4, 16, 20, 14)
