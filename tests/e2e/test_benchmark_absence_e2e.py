"""``nnUNetv2_mm_benchmark --absence raw --lesionwise`` end to end, on cases whose modalities have different
foregrounds (T2's field of view cut short), against ``nnUNetv2_mm_predict`` on folders where the missing
modality files are really absent."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run

TRAINER = 'nnUNetTrainerModalityDropout'
FULL = 'FLAIR+T1ce+T1+T2'


def _model(ds) -> list[str]:
    return ['-d', str(ds.dataset_id), '-c', ds.configuration, '-tr', TRAINER, '-f', '0', '-device', 'cpu',
            '--disable_tta', '--disable_progress_bar']


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope='module')
def own_foreground_cases(nnunet_dataset, trained_model, tmp_path_factory):
    """Two cases of the session data set with T2 (channel 2) empty in the top 30 % of its slices."""
    trained_model(TRAINER)
    root = tmp_path_factory.mktemp('absence')
    (root / 'images').mkdir()
    (root / 'labels').mkdir()
    cases = sorted(p.name[:-7] for p in (nnunet_dataset.raw / 'labelsTr').iterdir())[:2]
    for case in cases:
        for c in range(4):
            source = nnunet_dataset.raw / 'imagesTr' / f'{case}_{c:04d}.nii.gz'
            image = sitk.ReadImage(str(source))
            if c == 2:
                array = sitk.GetArrayFromImage(image)
                array[int(0.7 * array.shape[0]):] = 0
                cut = sitk.GetImageFromArray(array)
                cut.CopyInformation(image)
                image = cut
            sitk.WriteImage(image, str(root / 'images' / source.name))
        shutil.copy(nnunet_dataset.raw / 'labelsTr' / f'{case}.nii.gz', root / 'labels')
    return root, cases


def test_raw_absence_predicts_what_mm_predict_predicts_from_absent_files(nnunet_dataset, own_foreground_cases,
                                                                        tmp_path):
    root, cases = own_foreground_cases
    env = nnunet_dataset.env
    bench = tmp_path / 'bench'
    run(['nnUNetv2_mm_benchmark', '-i', str(root / 'images'), '-l', str(root / 'labels'), '-o', str(bench),
         *_model(nnunet_dataset), '--subsets', 'FLAIR', 'T2', FULL, '--absence', 'raw', '--lesionwise',
         '--save_predictions'], env, timeout=1800)
    summary = json.loads((bench / 'summary.json').read_text())
    assert summary['evaluation']['absence'] == 'raw' and summary['evaluation']['lesionwise'] is True
    assert summary['evaluation']['lesionwise_hd95_penalty_mm'] == 373.0
    with open(bench / 'per_case.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 3 and list(rows[0]) == ['case', 'subset', 'n_missing', 'region', 'Dice', 'HD95',
                                                        'LesionDice', 'LesionHD95']
    for row in rows:
        assert 0.0 <= float(row['LesionDice']) <= 1.0 and 0.0 <= float(row['LesionHD95']) <= 373.0
    assert 'LesionDice' in summary['mean'] and (bench / 'table_lesionwise.md').is_file()

    # the same subsets through nnUNetv2_mm_predict, the other modality files absent from its input folder
    for subset, channels in (('FLAIR', (3,)), ('T2', (2,))):
        folder = tmp_path / f'only_{subset}'
        folder.mkdir()
        for case in cases:
            for c in channels:
                shutil.copy(root / 'images' / f'{case}_{c:04d}.nii.gz', folder)
        out = tmp_path / f'pred_{subset}'
        run(['nnUNetv2_mm_predict', '-i', str(folder), '-o', str(out), *_model(nnunet_dataset), '-npp', '0',
             '-nps', '0'], env, timeout=1800)
        for case in cases:
            np.testing.assert_array_equal(_read(out / f'{case}.nii.gz'),
                                          _read(bench / 'predictions' / subset / f'{case}.nii.gz'))

    # the complete set is preprocessed identically in both modes
    fast = tmp_path / 'fast'
    run(['nnUNetv2_mm_benchmark', '-i', str(root / 'images'), '-l', str(root / 'labels'), '-o', str(fast),
         *_model(nnunet_dataset), '--subsets', FULL, '--absence', 'preprocessed', '--save_predictions'], env,
        timeout=1800)
    assert json.loads((fast / 'summary.json').read_text())['evaluation']['absence'] == 'preprocessed'
    for case in cases:
        np.testing.assert_array_equal(_read(fast / 'predictions' / FULL / f'{case}.nii.gz'),
                                      _read(bench / 'predictions' / FULL / f'{case}.nii.gz'))


def test_val_raw_absence_needs_the_raw_images(nnunet_dataset, own_foreground_cases, tmp_path):
    """``--val --absence raw`` reads ``$nnUNet_raw/DatasetXXX/imagesTr``; a validation case without its raw files
    is one line naming it, before anything is predicted."""
    env = dict(nnunet_dataset.env)
    raw = tmp_path / 'nnUNet_raw'
    shutil.copytree(nnunet_dataset.raw, raw / nnunet_dataset.raw.name)
    splits = json.loads((nnunet_dataset.preprocessed / 'splits_final.json').read_text())
    victim = sorted(splits[0]['val'])[0]
    (raw / nnunet_dataset.raw.name / 'imagesTr' / f'{victim}_0001.nii.gz').unlink()
    env['nnUNet_raw'] = str(raw)
    result = subprocess.run(['nnUNetv2_mm_benchmark', *_model(nnunet_dataset), '--val', '--absence', 'raw', '-o',
                             str(tmp_path / 'out')], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"case {victim} in {raw / nnunet_dataset.raw.name / 'imagesTr'} lacks the files of ['T1ce']" in \
        result.stderr
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())
