"""``nnUNetv2_mm_predict`` refuses bad input files by name; on an untrained model (:mod:`inference.untrained_model`),
in this process, in seconds.

nnU-Net's SimpleITK reader reads a NaN or Inf voxel of a NIfTI file as 0 and zero-fills a truncated ``.nii.gz``, so
these files look fine to a check of the array it returns (a NaN-only T1 would even pass as an absent modality).
"""
from __future__ import annotations

import json

import pytest

from inference.untrained_model import BAD_KINDS, PROBLEM, untrained_model, use_folders, write_bad_image, write_case


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return untrained_model(tmp_path_factory.mktemp('untrained'))


def _predict(model, images, out, *extra):
    from nnunet_missingmod.inference.predict import main
    return main(['-i', str(images), '-o', str(out), *model.args(), '-npp', '0', '-nps', '0',
                 '--disable_progress_bar', *extra])


@pytest.mark.parametrize('kind', BAD_KINDS)
def test_predict_refuses_nan_inf_and_truncated_files_by_name(kind, model, tmp_path, monkeypatch, capsys):
    use_folders(monkeypatch, model)
    images, out = tmp_path / 'in', tmp_path / 'out'
    write_case(images, 'good')
    write_case(images, 'bad', channels=(0, 2, 3))
    bad = write_bad_image(images / 'bad_0001.nii.gz', kind)
    assert _predict(model, images, out) == 1
    err = capsys.readouterr().err
    assert f'case bad: {bad}: {PROBLEM[kind]}' in err
    assert err.strip().splitlines()[-1].startswith('nnUNetv2_mm_predict: error: 1 case(s) refused: bad ')
    assert (out / 'good.nii.gz').is_file() and not (out / 'bad.nii.gz').exists()
    report = json.loads((out / 'missing_modalities.json').read_text())
    assert list(report['cases']) == ['good'] and str(bad) in report['refused']['bad']


def test_predict_refuses_an_all_nan_modality_instead_of_taking_it_as_missing(model, tmp_path, monkeypatch, capsys):
    import numpy as np

    from inference.untrained_model import SHAPE, write_image
    use_folders(monkeypatch, model)
    images, out = tmp_path / 'in', tmp_path / 'out'
    write_case(images, 'case', channels=(1, 2, 3))
    nan = write_image(images / 'case_0000.nii.gz', np.full(SHAPE, np.nan))
    assert _predict(model, images, out) == 1
    assert f'case case: {nan}: {np.prod(SHAPE)} NaN/Inf voxel(s)' in capsys.readouterr().err
    assert not (out / 'case.nii.gz').exists()
