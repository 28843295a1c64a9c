"""``nnUNetv2_mm_benchmark`` on an untrained model (:mod:`inference.untrained_model`), in this process: its settings
object, its outputs, and what it does with bad input and with an earlier benchmark in ``-o``."""
from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from inference.untrained_model import untrained_model, use_folders, write_case, write_labels

SUBSETS = ['T1ce', 'FLAIR+T1ce+T1+T2']


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return untrained_model(tmp_path_factory.mktemp('untrained'))


@pytest.fixture
def test_set(model, tmp_path, monkeypatch):
    """Two complete cases and their label maps; nnU-Net pointed at the untrained model."""
    use_folders(monkeypatch, model)
    images, labels = tmp_path / 'images', tmp_path / 'labels'
    for seed, case in enumerate(('a', 'b')):
        write_case(images, case, seed=seed)
        write_labels(labels, case)
    return images, labels


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
