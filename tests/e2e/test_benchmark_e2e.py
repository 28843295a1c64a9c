"""Missing-modality prediction and the subset benchmark, end to end.

The tests train ``nnUNetTrainerModalityDropout`` briefly (``trained_model`` fixture), run
``nnUNetv2_mm_benchmark --val`` once with every subset and check it against nnU-Net's own ``nnUNetv2_predict``
(full modalities and a zero-filled modality file) and against ``nnUNetv2_mm_predict`` (absent file, ``--missing``,
a case without any modality).
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_missingmod.evaluation.metrics import evaluate_case
from nnunet_missingmod.inference.predict import MissingModalityPredictor
from nnunet_missingmod.regions import dataset_regions

from conftest import run

TRAINER = 'nnUNetTrainerModalityDropout'
PAPER_ORDER = ['FLAIR', 'T1ce', 'T1', 'T2',
               'FLAIR+T1ce', 'FLAIR+T1', 'FLAIR+T2', 'T1ce+T1', 'T1ce+T2', 'T1+T2',
               'FLAIR+T1ce+T1', 'FLAIR+T1ce+T2', 'FLAIR+T1+T2', 'T1ce+T1+T2', 'FLAIR+T1ce+T1+T2']
FULL = 'FLAIR+T1ce+T1+T2'

def read_rows(path: Path) -> list[dict]:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def read_seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def model_args(ds) -> list[str]:
    return ['-d', str(ds.dataset_id), '-c', ds.configuration, '-tr', TRAINER, '-f', '0', '-device', 'cpu',
            '--disable_tta']


@pytest.fixture(scope='module')
def mm_benchmark(nnunet_dataset, trained_model, tmp_path_factory):
    """One ``nnUNetv2_mm_benchmark --val`` run with all 15 subsets and saved predictions."""
    trained_model(TRAINER)
    out = tmp_path_factory.mktemp('benchmark')
    result = run(['nnUNetv2_mm_benchmark', *model_args(nnunet_dataset), '--val', '-o', str(out),
                  '--save_predictions', '--disable_progress_bar'], nnunet_dataset.env, timeout=1800)
    splits = json.loads((nnunet_dataset.preprocessed / 'splits_final.json').read_text())
    return SimpleNamespace(out=out, cases=sorted(splits[0]['val']), stdout=result.stdout)


def test_benchmark_val_writes_every_subset_and_region(nnunet_dataset, mm_benchmark):
    rows = read_rows(mm_benchmark.out / 'per_case.csv')
    regions = ['WT', 'TC', 'ET']
    assert len(rows) == len(mm_benchmark.cases) * 15 * 3
    assert list(dict.fromkeys(r['subset'] for r in rows)) == PAPER_ORDER
    assert {(r['case'], r['subset'], r['region']) for r in rows} == \
        {(c, s, r) for c in mm_benchmark.cases for s in PAPER_ORDER for r in regions}
    for row in rows:
        dice, hd = float(row['Dice']), float(row['HD95'])
        assert 0.0 <= dice <= 1.0 and math.isfinite(hd) and hd >= 0.0
        assert int(row['n_missing']) == 4 - len(row['subset'].split('+'))
    summary = json.loads((mm_benchmark.out / 'summary.json').read_text())
    assert summary['subsets'] == PAPER_ORDER and summary['regions'] == regions
    assert summary['evaluation']['hd95_empty'] == 'penalty'
    expected = np.mean([float(r['Dice']) for r in rows if r['subset'] == 'T1ce' and r['region'] == 'TC'])
    assert summary['mean']['Dice']['T1ce']['TC'] == pytest.approx(expected)
    table = (mm_benchmark.out / 'table_dice.md').read_text().splitlines()
    assert table[0] == '| Dice (%) | ' + ' | '.join(PAPER_ORDER) + ' | Avg |'
    for name in ('table_dice.tex', 'table_hd95.md', 'table_hd95.tex', 'heatmap_dice.png', 'dice_vs_missing.png'):
        assert (mm_benchmark.out / name).stat().st_size > 0
    for subset in PAPER_ORDER:
        for case in mm_benchmark.cases:
            assert (mm_benchmark.out / 'predictions' / subset / f'{case}.nii.gz').is_file()


def test_benchmark_numbers_are_reproducible_in_process(nnunet_dataset, mm_benchmark):
    """The same model, case and subsets through the Python API give the very same numbers."""
    from nnunet_missingmod.env import enable_ext_trainers
    from nnunet_missingmod.evaluation.benchmark import (BenchmarkSettings, benchmark_subsets, run_benchmark,
                                                        validation_cases)
    enable_ext_trainers()
    predictor = MissingModalityPredictor(use_mirroring=False, device=torch.device('cpu'), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(nnunet_dataset.result_folder(TRAINER)), [0])
    names = ['T1', 'T1ce', 'T2', 'FLAIR']
    subsets = benchmark_subsets(names, 'paper', ['T1ce', 'FLAIR+T2', FULL])
    case = mm_benchmark.cases[0]
    cases = validation_cases(predictor, str(nnunet_dataset.preprocessed), 0, [case])
    rows = run_benchmark([(predictor, cases, 1)],
                         BenchmarkSettings(subsets, dataset_regions(predictor.dataset_json), 4, progress=False))
    saved = {(r['subset'], r['region']): r for r in read_rows(mm_benchmark.out / 'per_case.csv') if r['case'] == case}
    assert len(rows) == 9
    for row in rows:
        assert row['Dice'] == float(saved[row['subset'], row['region']]['Dice'])
        assert row['HD95'] == float(saved[row['subset'], row['region']]['HD95'])


def test_raw_test_set_mode_preprocesses_like_nnunet_and_matches_val_mode(nnunet_dataset, mm_benchmark, tmp_path):
    """``-i``/``-l`` mode (nnU-Net's preprocessor on raw files) gives the numbers of the preprocessed val data."""
    from nnunet_missingmod.env import enable_ext_trainers
    from nnunet_missingmod.evaluation.benchmark import (BenchmarkSettings, benchmark_subsets, raw_test_cases,
                                                        run_benchmark)
    enable_ext_trainers()
    case = mm_benchmark.cases[-1]
    images = tmp_path / 'imagesTs'
    images.mkdir()
    for c in range(4):
        shutil.copy(nnunet_dataset.raw / 'imagesTr' / f'{case}_{c:04d}.nii.gz', images)
    predictor = MissingModalityPredictor(use_mirroring=False, device=torch.device('cpu'), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(nnunet_dataset.result_folder(TRAINER)), [0])
    subsets = benchmark_subsets(['T1', 'T1ce', 'T2', 'FLAIR'], 'paper', ['T1+T2'])
    cases = raw_test_cases(predictor, str(images), str(nnunet_dataset.raw / 'labelsTr'))
    rows = run_benchmark([(predictor, cases, 1)],
                         BenchmarkSettings(subsets, dataset_regions(predictor.dataset_json), 4, progress=False))
    saved = {r['region']: r for r in read_rows(mm_benchmark.out / 'per_case.csv')
             if r['case'] == case and r['subset'] == 'T1+T2'}
    assert [r['region'] for r in rows] == ['WT', 'TC', 'ET']
    for row in rows:
        assert row['case'] == case and row['n_missing'] == 2
        assert row['Dice'] == pytest.approx(float(saved[row['region']]['Dice']), abs=1e-12)
        assert row['HD95'] == pytest.approx(float(saved[row['region']]['HD95']), abs=1e-9)
    (images / f'{case}_0001.nii.gz').unlink()
    with pytest.raises(FileNotFoundError, match=f"case {case} .* lacks the files of \\['T1ce'\\]"):
        next(raw_test_cases(predictor, str(images), str(nnunet_dataset.raw / 'labelsTr')))


@pytest.fixture(scope='module')
def stock_predictions(nnunet_dataset, mm_benchmark, tmp_path_factory):
    """``nnUNetv2_predict`` on the validation cases and on a copy of the first with T2 (channel 2) zero-filled."""
    folder = tmp_path_factory.mktemp('stock_in')
    images = nnunet_dataset.raw / 'imagesTr'
    for case in mm_benchmark.cases:
        for c in range(4):
            shutil.copy(images / f'{case}_{c:04d}.nii.gz', folder)
    first = mm_benchmark.cases[0]
    for c in (0, 1, 3):
        shutil.copy(images / f'{first}_{c:04d}.nii.gz', folder / f'zeroT2_{c:04d}.nii.gz')
    reference = sitk.ReadImage(str(images / f'{first}_0002.nii.gz'))
    zero = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(reference).shape, np.float32))
    zero.CopyInformation(reference)
    sitk.WriteImage(zero, str(folder / 'zeroT2_0002.nii.gz'))
    out = tmp_path_factory.mktemp('stock_out')
    run(['nnUNetv2_predict', '-i', str(folder), '-o', str(out), *model_args(nnunet_dataset), '-npp', '0',
         '-nps', '0', '--disable_progress_bar'], nnunet_dataset.env, timeout=1800)
    return out


def test_full_modality_row_equals_nnunet_predict_and_our_metrics(nnunet_dataset, mm_benchmark, stock_predictions):
    dataset_json = json.loads((nnunet_dataset.raw / 'dataset.json').read_text())
    regions = dataset_regions(dataset_json)
    rows = read_rows(mm_benchmark.out / 'per_case.csv')
    for case in mm_benchmark.cases:
        stock = read_seg(stock_predictions / f'{case}.nii.gz')
        np.testing.assert_array_equal(stock, read_seg(mm_benchmark.out / 'predictions' / FULL / f'{case}.nii.gz'))
        reference = sitk.ReadImage(str(nnunet_dataset.raw / 'labelsTr' / f'{case}.nii.gz'))
        spacing = reference.GetSpacing()[::-1]
        scores = evaluate_case(stock, sitk.GetArrayFromImage(reference), regions, spacing)
        for row in rows:
            if row['case'] == case and row['subset'] == FULL:
                assert float(row['Dice']) == pytest.approx(scores[row['region']]['Dice'], abs=1e-12)
                assert float(row['HD95']) == pytest.approx(scores[row['region']]['HD95'], abs=1e-9)


def test_zero_filled_file_with_nnunet_predict_equals_masked_benchmark_prediction(mm_benchmark, stock_predictions):
    masked = read_seg(mm_benchmark.out / 'predictions' / 'FLAIR+T1ce+T1' / f'{mm_benchmark.cases[0]}.nii.gz')
    np.testing.assert_array_equal(read_seg(stock_predictions / 'zeroT2.nii.gz'), masked)


def test_mm_predict_absent_file_missing_option_and_refused_case(nnunet_dataset, mm_benchmark, tmp_path):
    first, second = mm_benchmark.cases[:2]
    images = nnunet_dataset.raw / 'imagesTr'
    folder = tmp_path / 'in'
    folder.mkdir()
    for c in (1, 2, 3):  # T1 file of the first case simply absent
        shutil.copy(images / f'{first}_{c:04d}.nii.gz', folder / f'absentT1_{c:04d}.nii.gz')
    for c in range(4):
        shutil.copy(images / f'{second}_{c:04d}.nii.gz', folder / f'complete_{c:04d}.nii.gz')
    reference = sitk.ReadImage(str(images / f'{first}_0000.nii.gz'))
    zero = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(reference).shape, np.float32))
    zero.CopyInformation(reference)
    sitk.WriteImage(zero, str(folder / 'nothing_0000.nii.gz'))  # only an all-zero T1, the rest absent
    out = tmp_path / 'out'
    result = subprocess.run(['nnUNetv2_mm_predict', '-i', str(folder), '-o', str(out), *model_args(nnunet_dataset),
                             '--missing', 'T2', '-npp', '0', '-nps', '0', '--disable_progress_bar'],
                            env=nnunet_dataset.env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'case nothing: no modality at all' in result.stderr
    assert not (out / 'nothing.nii.gz').exists()
    predictions = mm_benchmark.out / 'predictions'
    # absent T1 file + --missing T2 -> subset FLAIR+T1ce; complete case + --missing T2 -> FLAIR+T1ce+T1
    np.testing.assert_array_equal(read_seg(out / 'absentT1.nii.gz'),
                                  read_seg(predictions / 'FLAIR+T1ce' / f'{first}.nii.gz'))
    np.testing.assert_array_equal(read_seg(out / 'complete.nii.gz'),
                                  read_seg(predictions / 'FLAIR+T1ce+T1' / f'{second}.nii.gz'))
    report = json.loads((out / 'missing_modalities.json').read_text())
    assert report['missing_option'] == ['T2']
    assert report['cases']['absentT1'] == {'used': ['T1ce', 'FLAIR'],
                                           'zero_filled': {'T1': 'file absent', 'T2': '--missing'}}
    assert report['cases']['complete']['used'] == ['T1', 'T1ce', 'FLAIR']
    assert set(report['refused']) == {'nothing'}
    # unknown modality names are refused before anything is predicted
    bad = subprocess.run(['nnUNetv2_mm_predict', '-i', str(folder), '-o', str(tmp_path / 'bad'),
                          *model_args(nnunet_dataset), '--missing', 'PD'], env=nnunet_dataset.env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "unknown modality 'PD'" in bad.stderr


def test_benchmark_cost_times_the_benchmark_against_one_predict_per_subset(nnunet_dataset, mm_benchmark, tmp_path):
    case = mm_benchmark.cases[0]
    images = tmp_path / 'images'
    images.mkdir()
    for c in range(4):
        shutil.copy(nnunet_dataset.raw / 'imagesTr' / f'{case}_{c:04d}.nii.gz', images)
    out = tmp_path / 'cost'
    run(['nnUNetv2_mm_benchmark_cost', *model_args(nnunet_dataset), '-i', str(images), '-l',
         str(nnunet_dataset.raw / 'labelsTr'), '-o', str(out), '--subsets', 'T1ce', 'FLAIR+T2'],
        nnunet_dataset.env, timeout=1800)
    cost = json.loads((out / 'cost.json').read_text())
    assert list(cost['predict_s_per_subset']) == ['T1ce', 'FLAIR+T2']
    assert cost['benchmark_s'] > 0 and all(t > 0 for t in cost['predict_s_per_subset'].values())
    assert cost['predict_s'] == pytest.approx(sum(cost['predict_s_per_subset'].values()))
    assert cost['predict_over_benchmark'] == pytest.approx(cost['predict_s'] / cost['benchmark_s'])
    # the inputs of nnUNetv2_predict: the subset's files unchanged, every other modality an all-zero image
    for subset, kept in (('T1ce', {1}), ('FLAIR+T2', {2, 3})):
        for c in range(4):
            copy = read_seg(out / 'inputs' / subset / f'{case}_{c:04d}.nii.gz')
            source = read_seg(images / f'{case}_{c:04d}.nii.gz')
            if c in kept:
                np.testing.assert_array_equal(copy, source)
            else:
                assert copy.shape == source.shape and not copy.any()
        assert (out / 'predictions' / subset / f'{case}.nii.gz').is_file()
    assert len(read_rows(out / 'benchmark' / 'per_case.csv')) == 2 * 3


def test_benchmark_cost_refuses_incomplete_inputs_before_writing(nnunet_dataset, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    shutil.copy(nnunet_dataset.raw / 'imagesTr' / 'BraTS20_Training_001_0000.nii.gz', images)
    out = tmp_path / 'cost'
    result = subprocess.run(['nnUNetv2_mm_benchmark_cost', *model_args(nnunet_dataset), '-i', str(images), '-l',
                             str(nnunet_dataset.raw / 'labelsTr'), '-o', str(out)],
                            env=nnunet_dataset.env, capture_output=True, text=True)
    assert result.returncode == 1  # bad input (a usage error would be 2)
    assert f"{images}: every modality must be present" in result.stderr
    assert "'BraTS20_Training_001': [1, 2, 3]" in result.stderr
    assert not out.exists()
