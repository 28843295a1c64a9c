"""``nnUNetv2_mm_benchmark`` on an untrained model (:mod:`inference.untrained_model`), in this process: its settings
object, its outputs, and what it does with bad input and with an earlier benchmark in ``-o``."""
from __future__ import annotations

import csv
import dataclasses
import json
import os

import pytest

from inference.untrained_model import (BAD_KINDS, PROBLEM, same_tree, untrained_model, use_folders, write_bad_image,
                                       write_case, write_labels, write_test_set)

SUBSETS = ['T1ce', 'FLAIR+T1ce+T1+T2']


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return untrained_model(tmp_path_factory.mktemp('untrained'))


@pytest.fixture
def test_set(model, tmp_path, monkeypatch):
    """Two complete cases and their label maps; nnU-Net pointed at the untrained model."""
    use_folders(monkeypatch, model)
    return write_test_set(tmp_path)


def benchmark(model, images, labels, out, *extra) -> int:
    from nnunet_missingmod.evaluation.benchmark import main
    return main([*model.args(), '-i', str(images), '-l', str(labels), '-o', str(out), '--subsets', *SUBSETS,
                 '--disable_progress_bar', *extra])


def rows_of(path) -> list[dict]:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_benchmark_settings_are_one_frozen_checked_object():
    from nnunet_missingmod.evaluation.benchmark import BenchmarkSettings
    settings = BenchmarkSettings([['T1', [0]]], [('WT', [1, 2, 3])], 4)
    assert settings.subsets == (('T1', (0,)),) and settings.regions == (('WT', (1, 2, 3)),)
    assert (settings.hd95_empty, settings.et_min_voxels, settings.et_mode, settings.save_predictions,
            settings.progress, settings.lesion_wise) == ('penalty', 0, 'remove', None, True, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.progress = False
    with pytest.raises(ValueError, match="et_mode must be 'remove' or 'relabel'"):
        BenchmarkSettings([], [], 4, et_mode='drop')


def test_benchmark_writes_every_case_subset_and_region(model, test_set, tmp_path):
    images, labels = test_set
    out = tmp_path / 'out'
    assert benchmark(model, images, labels, out, '--save_predictions') == 0
    rows = rows_of(out / 'per_case.csv')
    assert [(r['case'], r['subset']) for r in rows[::3]] == [(c, s) for c in 'ab' for s in SUBSETS]
    assert [r['region'] for r in rows[:3]] == ['WT', 'TC', 'ET']
    assert json.loads((out / 'summary.json').read_text())['subsets'] == SUBSETS
    predictions = out / 'predictions'
    assert sorted(p.relative_to(predictions).as_posix() for p in predictions.rglob('*.nii.gz')) == \
        [f'{s}/{c}.nii.gz' for s in sorted(SUBSETS) for c in 'ab']


def test_every_report_reaches_the_output_folder(model, test_set, tmp_path):
    """All 15 subsets: every report :func:`write_reports` writes (the Shapley table included) ends up in ``-o``."""
    from nnunet_missingmod.evaluation.benchmark import main
    from nnunet_missingmod.evaluation.tables import REPORT_NAMES
    images, labels = test_set
    out = tmp_path / 'out'
    assert main([*model.args(), '-i', str(images), '-l', str(labels), '-o', str(out), '--disable_progress_bar']) == 0
    assert sorted(os.listdir(out)) == sorted(n for n in REPORT_NAMES if 'lesion' not in n)
    assert len(rows_of(out / 'per_case.csv')) == 2 * 15 * 3


# ----------------------------------------------------------------------------------------------- earlier results
def earlier_benchmark(out):
    """``-o`` as an earlier benchmark (with --lesionwise and predictions) left it, plus a file of the user's."""
    (out / 'predictions' / 'T1').mkdir(parents=True)
    (out / 'predictions' / 'T1' / 'old.nii.gz').write_bytes(b'old prediction')
    for name in ('per_case.csv', 'summary.json', 'table_dice.md', 'table_lesionwise.md', 'per_case.partial.csv'):
        (out / name).write_text(f'earlier {name}\n')
    (out / 'notes.txt').write_text('mine\n')
    return same_tree(out)


def no_staging_left(out) -> bool:
    return not [p for p in out.parent.iterdir() if p.name.startswith(f'.{out.name}.')]


def test_overwrite_replaces_the_earlier_outputs_at_the_end_and_only_them(model, test_set, tmp_path):
    images, labels = test_set
    out = tmp_path / 'out'
    earlier_benchmark(out)
    assert benchmark(model, images, labels, out, '--overwrite', '--save_predictions') == 0
    assert (out / 'notes.txt').read_text() == 'mine\n'
    assert len(rows_of(out / 'per_case.csv')) == 2 * 2 * 3
    assert not (out / 'table_lesionwise.md').exists(), "the earlier run's output this run does not write"
    assert not (out / 'per_case.partial.csv').exists()
    assert not (out / 'predictions' / 'T1').exists() and (out / 'predictions' / 'T1ce' / 'a.nii.gz').is_file()
    assert no_staging_left(out)


def test_a_non_empty_output_folder_needs_overwrite(model, test_set, tmp_path, capsys):
    images, labels = test_set
    out = tmp_path / 'out'
    before = earlier_benchmark(out)
    assert benchmark(model, images, labels, out) == 1
    assert 'use --overwrite to replace an earlier benchmark there' in capsys.readouterr().err
    assert same_tree(out) == before


def _bad_second_case(images, kind):
    """Case b's T1ce (or T2) made bad; returns the file and the expected message after ``case b: ``."""
    if kind in BAD_KINDS:
        return write_bad_image(images / 'b_0001.nii.gz', kind), PROBLEM[kind]
    path = images / 'b_0002.nii.gz'
    if kind == 'shape':
        write_case(images, 'b', seed=1, channels=(2,), shape=(10, 12, 16))
        return path, f'has shape (10, 12, 16), {images / "b_0000.nii.gz"} has (10, 12, 14)'
    write_case(images, 'b', seed=1, channels=(2,), spacing=(1.0, 1.0, 2.0))
    return path, f'has spacing (2.0, 1.0, 1.0), {images / "b_0000.nii.gz"} has (1.0, 1.0, 1.0)'


@pytest.mark.parametrize('kind', [*BAD_KINDS, 'shape', 'spacing'])
def test_bad_images_are_refused_before_the_first_prediction_and_the_earlier_results_stay(
        kind, model, test_set, tmp_path, monkeypatch, capsys):
    """A bad image of the last case: one line naming it, nothing predicted, the earlier benchmark untouched."""
    from nnunet_missingmod.evaluation import benchmark as module
    images, labels = test_set
    bad, problem = _bad_second_case(images, kind)
    out = tmp_path / 'out'
    before = earlier_benchmark(out)
    predicted = []
    original = module.predict_subset
    monkeypatch.setattr(module, 'predict_subset', lambda *a: predicted.append(1) or original(*a))
    assert benchmark(model, images, labels, out, '--overwrite') == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f'nnUNetv2_mm_benchmark: error: case b: {bad}') and problem in last
    assert not predicted
    assert same_tree(out) == before and no_staging_left(out)


def test_a_reference_of_another_shape_is_refused_before_the_first_prediction(model, test_set, tmp_path, capsys):
    images, labels = test_set
    reference = write_labels(labels, 'b', shape=(10, 12, 15))
    assert benchmark(model, images, labels, tmp_path / 'out') == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'nnUNetv2_mm_benchmark: error: case b: reference {reference} has shape (10, 12, 15), '
        f'{images / "b_0000.nii.gz"} has (10, 12, 14)')
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('stop, status', [(KeyboardInterrupt, 130), (RuntimeError('out of memory'), 1)])
def test_a_stopped_benchmark_keeps_the_rows_it_measured_and_the_earlier_results(
        stop, status, model, test_set, tmp_path, monkeypatch, capsys):
    from nnunet_missingmod.evaluation import benchmark as module
    images, labels = test_set
    out = tmp_path / 'out'
    before = earlier_benchmark(out)
    calls = []
    original = module.predict_subset

    def stop_at_the_second_case(*args):
        calls.append(1)
        if len(calls) > len(SUBSETS):
            raise stop
        return original(*args)

    monkeypatch.setattr(module, 'predict_subset', stop_at_the_second_case)
    assert benchmark(model, images, labels, out, '--overwrite', '--save_predictions') == status
    partial = rows_of(out / 'per_case.partial.csv')
    assert [(r['case'], r['subset'], r['region']) for r in partial] == \
        [('a', s, r) for s in SUBSETS for r in ('WT', 'TC', 'ET')]
    assert all(0 <= float(r['Dice']) <= 1 for r in partial)
    assert f'stopped after 1 of 2 cases; their 6 rows are in {out / "per_case.partial.csv"}' in \
        capsys.readouterr().err
    after = same_tree(out)
    assert after.pop('per_case.partial.csv') != before.pop('per_case.partial.csv')
    assert after == before and no_staging_left(out)


def test_preprocessed_validation_cases_are_checked_for_nan(tmp_path):
    import numpy as np
    from types import SimpleNamespace

    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

    from nnunet_missingmod.evaluation.benchmark_cases import check_preprocessed_cases
    data_folder = tmp_path / 'nnUNetPlans_3d_fullres'
    data_folder.mkdir()
    for key, value in (('a', 1.0), ('b', np.nan)):
        data = np.ones((4, 3, 3, 3), np.float32)
        data[1, 1, 1, 1] = value
        nnUNetDatasetNumpy.save_case(data, np.zeros((1, 3, 3, 3), np.int8), {}, str(data_folder / key))
    predictor = SimpleNamespace(configuration_manager=SimpleNamespace(data_identifier='nnUNetPlans_3d_fullres'))
    check_preprocessed_cases(predictor, str(tmp_path), ['a'])
    with pytest.raises(ValueError, match=f"^case b: 1 NaN/Inf value\\(s\\) in its preprocessed data in {data_folder}$"):
        check_preprocessed_cases(predictor, str(tmp_path), ['a', 'b'])


def test_a_knockout_the_network_does_not_have_is_refused_as_a_command(model, test_set, tmp_path):
    """nnU-Net's own network has no information path: the real command says so in one line, exit status 1, and
    writes nothing."""
    import subprocess
    images, labels = test_set
    out = tmp_path / 'out'
    result = subprocess.run(['nnUNetv2_mm_benchmark', *model.args(), '-i', str(images), '-l', str(labels), '-o',
                             str(out), '--knockout', 'messages', '--disable_progress_bar'],
                            env={**os.environ, **model.env}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == ('nnUNetv2_mm_benchmark: error: --knockout: PlainConvUNet has no '
                                                      'information path messages to knock out (it has: none)')
    assert not out.exists()


def test_summary_records_the_knockout(model, test_set, tmp_path):
    images, labels = test_set
    assert benchmark(model, images, labels, tmp_path / 'out') == 0
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['evaluation']['knockout'] == []
