"""``nnUNetv2_mm_predict`` refuses bad input files by name, and its report is one per part and survives an
interruption; on an untrained model (:mod:`inference.untrained_model`), in this process, in seconds.

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
    assert report['complete'] is True


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


def test_parallel_parts_write_one_report_each(model, tmp_path, monkeypatch):
    use_folders(monkeypatch, model)
    images, out = tmp_path / 'in', tmp_path / 'out'
    for seed, case in enumerate(('a', 'b', 'c')):
        write_case(images, case, seed=seed)
    for part in (0, 1):
        assert _predict(model, images, out, '-num_parts', '2', '-part_id', str(part)) == 0
    reports = {p.name: json.loads(p.read_text()) for p in out.glob('missing_modalities*.json')}
    assert sorted(reports) == ['missing_modalities.part0of2.json', 'missing_modalities.part1of2.json']
    assert list(reports['missing_modalities.part0of2.json']['cases']) == ['a', 'c']
    assert list(reports['missing_modalities.part1of2.json']['cases']) == ['b']
    assert all(r['complete'] and r['part']['num_parts'] == 2 for r in reports.values())
    assert sorted(p.name for p in out.glob('*.nii.gz')) == ['a.nii.gz', 'b.nii.gz', 'c.nii.gz']


def test_interrupted_predict_replaces_the_old_report_with_the_cases_done(model, tmp_path, monkeypatch, capsys):
    from nnunet_missingmod.inference.predict import MissingModalityPredictor
    use_folders(monkeypatch, model)
    images, out = tmp_path / 'in', tmp_path / 'out'
    write_case(images, 'a', seed=1)
    write_case(images, 'b', seed=2)
    out.mkdir()
    (out / 'missing_modalities.json').write_text('{"cases": {"old": {}}}')
    (out / 'b.nii.gz').write_bytes(b'an older prediction')   # there before; this run does not get to b
    original = MissingModalityPredictor.predict_logits_from_preprocessed_data
    calls = []

    def ctrl_c_at_the_second_case(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MissingModalityPredictor, 'predict_logits_from_preprocessed_data', ctrl_c_at_the_second_case)
    assert _predict(model, images, out) == 130
    report = json.loads((out / 'missing_modalities.json').read_text())
    assert report['complete'] is False
    assert list(report['cases']) == ['a'] and report['not_predicted'] == ['b']
    assert 'stopped after 1 of 2 case(s)' in capsys.readouterr().err
    assert (out / 'b.nii.gz').read_bytes() == b'an older prediction'
    assert not [p for p in out.iterdir() if p.name.startswith('.')], 'no temporary file left'
