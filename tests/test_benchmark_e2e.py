"""Missing-modality prediction and the subset benchmark.

The first tests check :class:`MissingModalityPredictor` on a tiny hand-made network (no data set needed). The
end-to-end tests train ``nnUNetTrainerModalityDropout`` briefly (``trained_model`` fixture), run
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
from torch import nn

from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_missingmod.evaluation.metrics import evaluate_case
from nnunet_missingmod.inference.predict import MissingModalityPredictor, prepare_case_files, scan_input_folder
from nnunet_missingmod.networks.base import MissingModalityNetwork
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.regions import dataset_regions

from conftest import run

TRAINER = 'nnUNetTrainerModalityDropout'
PAPER_ORDER = ['FLAIR', 'T1ce', 'T1', 'T2',
               'FLAIR+T1ce', 'FLAIR+T1', 'FLAIR+T2', 'T1ce+T1', 'T1ce+T2', 'T1+T2',
               'FLAIR+T1ce+T1', 'FLAIR+T1ce+T2', 'FLAIR+T1+T2', 'T1ce+T1+T2', 'FLAIR+T1ce+T1+T2']
FULL = 'FLAIR+T1ce+T1+T2'
DATASET_JSON = {'channel_names': {'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'},
                'labels': {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': 3},
                'regions_class_order': [1, 2, 3], 'file_ending': '.nii.gz'}


# ----------------------------------------------------------------------------------------------- predictor unit tests
class RecordingNet(MissingModalityNetwork):
    """1x1x1 conv whose output also depends on the mask; records every mask and input it sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(4, 3, 1)
        self.mask_weight = nn.Parameter(torch.tensor([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.], [1., 1., 1.]]))
        self.masks, self.inputs = [], []

    def forward_with_mask(self, x, availability):
        self.masks.append(availability.clone())
        self.inputs.append(x.clone())
        bias = availability.float() @ self.mask_weight
        return NetworkOutput(self.conv(x) + bias[:, :, None, None, None], {}, {})


class StockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(4, 3, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def manual_predictor(network, mirroring=False) -> MissingModalityPredictor:
    predictor = MissingModalityPredictor(use_mirroring=mirroring, device=torch.device('cpu'), allow_tqdm=False)
    predictor.network = network
    predictor.list_of_parameters = [network.state_dict()]
    predictor.dataset_json = DATASET_JSON
    predictor.configuration_manager = SimpleNamespace(patch_size=[8, 8, 8])
    predictor.label_manager = LabelManager(DATASET_JSON['labels'], DATASET_JSON['regions_class_order'])
    predictor.allowed_mirroring_axes = (0, 1, 2)
    return predictor


def case_data():
    torch.manual_seed(0)
    data = torch.zeros(4, 24, 16, 12)
    data[:, 2:10, 2:14, 2:10] = torch.randn(4, 8, 12, 8)
    data[1, 2:10, 2:8, 2:10] = 0  # a present modality that is zero in part of the brain
    return data


def test_predictor_passes_the_case_mask_to_every_patch_and_zeroes_missing_channels():
    net = RecordingNet()
    predictor = manual_predictor(net, mirroring=True)
    mask = np.array([False, True, False, True])
    logits = predictor.predict_logits_from_preprocessed_data(case_data(), mask)
    assert logits.shape == (3, 24, 16, 12)
    n_patches = 5 * 3 * 2  # patch 8, step 0.5: 24 -> 5 positions, 16 -> 3, 12 -> 2
    assert len(net.masks) == n_patches * 8  # 7 mirrored copies per patch
    for seen, x in zip(net.masks, net.inputs):
        assert seen.tolist() == [mask.tolist()]
        assert x[:, [0, 2]].abs().sum() == 0  # missing channels zeroed before the network
    # background patches (all channels zero) and patches where a present channel is zero keep the case mask
    assert any(x.abs().sum() == 0 for x in net.inputs)
    assert any(x[:, 1].abs().sum() == 0 and x[:, 3].abs().sum() > 0 for x in net.inputs)
    assert predictor._availability is None  # reset after the case


def test_predictor_derives_the_mask_from_zero_channels_and_refuses_empty_masks():
    net = RecordingNet()
    predictor = manual_predictor(net)
    data = case_data()
    data[2] = 0
    predictor.predict_logits_from_preprocessed_data(data)
    assert all(m.tolist() == [[True, True, False, True]] for m in net.masks)
    with pytest.raises(ValueError, match='no modality'):
        predictor.predict_logits_from_preprocessed_data(data, np.zeros(4, bool))
    with pytest.raises(ValueError, match='4 modalities'):
        predictor.predict_logits_from_preprocessed_data(data, np.ones(3, bool))


def test_predictor_mask_changes_the_prediction_of_missing_modality_networks():
    predictor = manual_predictor(RecordingNet())
    data = case_data()
    masked = predictor.predict_logits_from_preprocessed_data(data, np.array([True, False, True, True]))
    zeroed = data.clone()
    zeroed[1] = 0
    # same as zero-filling the channel (the mask is derived from it) ...
    torch.testing.assert_close(masked, predictor.predict_logits_from_preprocessed_data(zeroed))
    # ... and not the same as the full-modality prediction
    assert not torch.allclose(masked, predictor.predict_logits_from_preprocessed_data(data))


def test_stock_networks_get_zero_filled_input_only():
    net = StockNet()
    predictor = manual_predictor(net)
    data = case_data()
    masked = predictor.predict_logits_from_preprocessed_data(data, np.array([True, True, True, False]))
    assert net.calls == 30
    zeroed = data.clone()
    zeroed[3] = 0
    plain = manual_predictor(StockNet())
    plain.network.load_state_dict(net.state_dict())
    plain.list_of_parameters = [net.state_dict()]
    torch.testing.assert_close(masked, plain.predict_logits_from_preprocessed_data(zeroed))


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.5)):
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -2.0, 1.0))
    sitk.WriteImage(image, str(path))


def test_prepare_case_files_zero_fills_absent_and_dropped_modalities(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    src, zero = tmp_path / 'in', tmp_path / 'zero'
    src.mkdir(), zero.mkdir()
    rng = np.random.default_rng(0)
    write_image(src / 'a_0000.nii.gz', rng.random((5, 6, 7)) + 1)
    write_image(src / 'a_0003.nii.gz', rng.random((5, 6, 7)) + 1)
    write_image(src / 'b_0001.nii.gz', np.zeros((5, 6, 7)))
    write_image(src / 'b_0003.nii.gz', rng.random((5, 6, 7)))
    names = ['T1', 'T1ce', 'T2', 'FLAIR']
    cases = scan_input_folder(str(src), '.nii.gz', 4)
    assert sorted(cases) == ['a', 'b'] and sorted(cases['a']) == [0, 3]
    rw = SimpleITKIO()
    files, report = prepare_case_files('a', cases['a'], names, [3], rw, '.nii.gz', str(zero))
    assert report == {'used': ['T1'], 'zero_filled': {'T1ce': 'file absent', 'T2': 'file absent',
                                                      'FLAIR': '--missing'}}
    assert files[0] == cases['a'][0] and all(f.startswith(str(zero)) for f in files[1:])
    images, properties = rw.read_images(files)
    assert images.shape == (4, 5, 6, 7) and np.any(images[0]) and not np.any(images[1:])
    assert tuple(properties['spacing']) == (1.5, 1.0, 1.0)  # zero files carry the geometry of the present one
    with pytest.raises(ValueError, match="case b: no modality at all.*T1ce: all-zero image.*FLAIR: --missing"):
        prepare_case_files('b', cases['b'], names, [3], rw, '.nii.gz', str(zero))
    write_image(src / 'c_0004.nii.gz', np.ones((5, 6, 7)))
    with pytest.raises(ValueError, match='c_0004.nii.gz: channel 0004 does not exist'):
        scan_input_folder(str(src), '.nii.gz', 4)


# ----------------------------------------------------------------------------------------------- end to end
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
    from nnunet_missingmod.evaluation.benchmark import benchmark_subsets, run_benchmark, validation_cases
    enable_ext_trainers()
    predictor = MissingModalityPredictor(use_mirroring=False, device=torch.device('cpu'), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(nnunet_dataset.result_folder(TRAINER)), [0])
    names = ['T1', 'T1ce', 'T2', 'FLAIR']
    subsets = benchmark_subsets(names, 'paper', ['T1ce', 'FLAIR+T2', FULL])
    case = mm_benchmark.cases[0]
    cases = validation_cases(predictor, str(nnunet_dataset.preprocessed), 0, [case])
    rows = run_benchmark([(predictor, cases, 1)], subsets, dataset_regions(predictor.dataset_json), 4,
                         progress=False)
    saved = {(r['subset'], r['region']): r for r in read_rows(mm_benchmark.out / 'per_case.csv') if r['case'] == case}
    assert len(rows) == 9
    for row in rows:
        assert row['Dice'] == float(saved[row['subset'], row['region']]['Dice'])
        assert row['HD95'] == float(saved[row['subset'], row['region']]['HD95'])


def test_raw_test_set_mode_preprocesses_like_nnunet_and_matches_val_mode(nnunet_dataset, mm_benchmark, tmp_path):
    """``-i``/``-l`` mode (nnU-Net's preprocessor on raw files) gives the numbers of the preprocessed val data."""
    from nnunet_missingmod.env import enable_ext_trainers
    from nnunet_missingmod.evaluation.benchmark import benchmark_subsets, raw_test_cases, run_benchmark
    enable_ext_trainers()
    case = mm_benchmark.cases[-1]
    images = tmp_path / 'imagesTs'
    images.mkdir()
    for c in range(4):
        shutil.copy(nnunet_dataset.raw / 'imagesTr' / f'{case}_{c:04d}.nii.gz', images)
    predictor = MissingModalityPredictor(use_mirroring=False, device=torch.device('cpu'), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(nnunet_dataset.result_folder(TRAINER)), [0])
    subsets = benchmark_subsets(['T1', 'T1ce', 'T2', 'FLAIR'], 'paper', ['T1+T2'])
    rows = run_benchmark([(predictor, raw_test_cases(predictor, str(images), str(nnunet_dataset.raw / 'labelsTr')),
                           1)], subsets, dataset_regions(predictor.dataset_json), 4, progress=False)
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
