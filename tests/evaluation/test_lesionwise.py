"""BraTS lesion-wise Dice and HD95 (:mod:`nnunet_missingmod.evaluation.lesionwise`).

Cross-checked against the official ``brats-evaluation`` package run as a user runs it (its console commands on
NIfTI files: ``brats-evaluate --config gli`` then ``brats-parse-metrics mets --vol_threshold 0``, which scores
missed and false lesions 0 and 373) on synthetic metastasis cases with several lesions; hand values for the
conventions; the one-line hint when panoptica is not installed.
"""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_missingmod.dataset_conversion import synthetic_brats as sb
from nnunet_missingmod.evaluation import lesionwise

#: regions in BraTS 2023 labels (1 necrosis, 2 oedema, 3 enhancing), as the official ``gli`` config defines them
REGIONS = [('WT', (1, 2, 3)), ('TC', (1, 3)), ('ET', (3,))]
SPACING = 2.0


def _prediction(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A flawed prediction: the first lesion's core missed, the label map shifted by one voxel, a false lesion."""
    pred = np.roll(seg, 1, axis=0)
    cores, n = ndimage.label(np.isin(pred, (1, 3)))
    if n > 1:
        pred[cores == 1] = 2
    z, y, x = (int(rng.integers(2, s - 6)) for s in seg.shape)
    box = pred[z:z + 3, y:y + 3, x:x + 3]
    box[box == 0] = 3
    return pred


@pytest.fixture(scope='module')
def official(tmp_path_factory):
    """Four metastasis cases (2-5 lesions each) and the official scores of a flawed prediction of each."""
    root = tmp_path_factory.mktemp('brats_official')
    (root / 'ref').mkdir()
    (root / 'pred').mkdir()
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(1, 5):
        seg = sb.generate_case(sb.case_rng(11, i), (40, 48, 32), SPACING, 'metastasis')['seg']
        pred = _prediction(seg, rng)
        cases[f'BraTS-MET-{i:05d}-000'] = (pred, seg)
        for folder, array in (('ref', seg), ('pred', pred)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((SPACING,) * 3)
            sitk.WriteImage(image, str(root / folder / f'BraTS-MET-{i:05d}-000.nii.gz'))
    subprocess.run(['brats-evaluate', '--config', 'gli', '--ref_path', str(root / 'ref'), '--pred_path',
                    str(root / 'pred'), '--summary_json', str(root / 'summary.json')], check=True,
                   capture_output=True, timeout=600)
    subprocess.run(['brats-parse-metrics', 'mets', '--json_path', str(root / 'summary.json'),
                    '--vol_threshold', '0', '--output_csv_path', str(root / 'scores.csv')], check=True,
                   capture_output=True, timeout=600)
    with open(root / 'scores.csv', newline='') as f:
        rows = {r['subject_id']: r for r in csv.DictReader(f)}
    return cases, rows


@pytest.mark.slow
def test_lesionwise_equals_the_official_brats_evaluation(official):
    cases, rows = official
    compared = 0
    for name, (pred, seg) in cases.items():
        ours = lesionwise.evaluate_case_lesionwise(pred, seg, REGIONS, (SPACING,) * 3)
        row = rows[f'{name}.nii.gz']
        for region, _ in REGIONS:
            key = region.lower()
            assert ours[region]['LesionDice'] == pytest.approx(float(row[f'lesionwise_dsc_mean_{key}']), abs=1e-9)
            assert ours[region]['LesionHD95'] == pytest.approx(float(row[f'lesionwise_hd95_mean_{key}']), abs=1e-6)
            compared += 1
    assert compared == 12
    # the cases really test the penalties: missed or false lesions, and several lesions matched
    scores = [lesionwise.lesionwise_scores(np.isin(p, labels), np.isin(s, labels), (SPACING,) * 3)
              for p, s in cases.values() for _, labels in REGIONS]
    assert sum(s['FN'] for s in scores) > 0 and sum(s['FP'] for s in scores) >= 4
    assert max(s['TP'] for s in scores) >= 2


def test_lesionwise_hand_values():
    ref = np.zeros((30, 30, 30), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = pred[2:6, 2:6, 2:6] = True      # matched exactly: Dice 1, HD95 0
    ref[20:24, 20:24, 20:24] = True                       # missed
    pred[2:5, 20:23, 10:13] = True                        # false
    scores = lesionwise.lesionwise_scores(pred, ref, (1.0, 1.0, 1.0))
    assert (scores['TP'], scores['FN'], scores['FP']) == (1, 1, 1)
    assert scores['LesionDice'] == pytest.approx(1 / 3)
    assert scores['LesionHD95'] == pytest.approx(2 * 373 / 3)
    empty = np.zeros_like(ref)
    assert lesionwise.lesionwise_scores(empty, empty, (1, 1, 1))['LesionDice'] == 1.0
    assert lesionwise.lesionwise_scores(empty, empty, (1, 1, 1))['LesionHD95'] == 0.0
    false_only = lesionwise.lesionwise_scores(pred, empty, (1, 1, 1))
    assert (false_only['LesionDice'], false_only['LesionHD95'], false_only['FP']) == (0.0, 373.0, 2)


def test_lesionwise_uses_the_spacing_per_axis():
    """A lesion shifted by one voxel along axis 0: its HD95 is that axis' spacing, whatever the others."""
    ref = np.zeros((20, 20, 20), bool)
    ref[5:10, 5:10, 5:10] = True
    pred = np.roll(ref, 1, axis=0)
    assert lesionwise.lesionwise_scores(pred, ref, (3.0, 1.0, 1.0))['LesionHD95'] == pytest.approx(3.0)
    assert lesionwise.lesionwise_scores(pred, ref, (1.0, 1.0, 3.0))['LesionHD95'] == pytest.approx(1.0)


def test_lesionwise_applies_the_et_postprocessing():
    ref = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(ref)
    pred[2:4, 2:4, 2:4] = 3                               # 8 voxels of predicted ET, no reference ET
    plain = lesionwise.evaluate_case_lesionwise(pred, ref, REGIONS, (1, 1, 1))
    removed = lesionwise.evaluate_case_lesionwise(pred, ref, REGIONS, (1, 1, 1), et_min_voxels=10)
    assert (plain['ET']['LesionDice'], plain['ET']['LesionHD95']) == (0.0, 373.0)
    assert (removed['ET']['LesionDice'], removed['ET']['LesionHD95']) == (1.0, 0.0)


def test_without_panoptica_the_hint_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'panoptica', None)
    with pytest.raises(ImportError, match=r"^lesion-wise metrics need panoptica: pip install -e '\.\[brats\]'$"):
        lesionwise.check_available()
