"""``nnUNetv2_mm_benchmark_cost`` (profiling/benchmark_cost.py) before and around the commands it times: input
checks, ``-o`` and ``--overwrite``, no stale input ever timed. The timed commands are replaced by a recorder, so the
tests run in this process in seconds on an untrained model (:mod:`inference.untrained_model`); the real commands
are timed in ``tests/e2e/test_benchmark_e2e.py``."""
from __future__ import annotations

import json
import os

import pytest

from inference.untrained_model import (BAD_KINDS, PROBLEM, same_tree, untrained_model, use_folders, write_bad_image,
                                       write_test_set)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return untrained_model(tmp_path_factory.mktemp('untrained'))


@pytest.fixture
def test_set(model, tmp_path, monkeypatch):
    use_folders(monkeypatch, model)
    return write_test_set(tmp_path)


@pytest.fixture
def timed(monkeypatch):
    """The commands the cost command would time, with the files of their ``-i`` folder (1 s each, nothing run)."""
    from nnunet_missingmod.profiling import benchmark_cost
    commands = []

    def record(cmd):
        source = cmd[cmd.index('-i') + 1]
        commands.append((cmd, sorted(os.listdir(source)), os.path.exists(cmd[cmd.index('-o') + 1])))
        return 1.0

    monkeypatch.setattr(benchmark_cost, '_timed', record)
    return commands


def cost(model, images, labels, out, *extra) -> int:
    from nnunet_missingmod.profiling.benchmark_cost import main
    return main([*model.args(), '-i', str(images), '-l', str(labels), '-o', str(out), '--subsets', 'T1ce', *extra])


def no_staging_left(out) -> bool:
    return not [p for p in out.parent.iterdir() if p.name.startswith(f'.{out.name}.')]


@pytest.mark.parametrize('kind', BAD_KINDS)
def test_bad_images_are_refused_by_name_before_anything_runs(kind, model, test_set, timed, tmp_path, capsys):
    images, labels = test_set
    bad = write_bad_image(images / 'b_0003.nii.gz', kind)
    out = tmp_path / 'out'
    assert cost(model, images, labels, out) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f'nnUNetv2_mm_benchmark_cost: error: case b: {bad}: {PROBLEM[kind]}')
    assert not timed and not out.exists() and no_staging_left(out)


def test_a_bad_reference_is_refused_before_anything_runs(model, test_set, timed, tmp_path, capsys):
    images, labels = test_set
    reference = write_bad_image(labels / 'b.nii.gz', 'truncated')
    assert cost(model, images, labels, tmp_path / 'out') == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f'nnUNetv2_mm_benchmark_cost: error: reference segmentation {reference}: {PROBLEM["truncated"]}')
    assert not timed and not (tmp_path / 'out').exists()


def test_a_non_empty_output_folder_needs_overwrite(model, test_set, timed, tmp_path, capsys):
    images, labels = test_set
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'cost.json').write_text('{"earlier": true}')
    assert cost(model, images, labels, out) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f'nnUNetv2_mm_benchmark_cost: error: output folder {out} is not empty (cost.json); use --overwrite')
    assert not timed and same_tree(out) == {'cost.json': b'{"earlier": true}'}


def test_overwrite_never_times_stale_inputs_and_keeps_other_files(model, test_set, timed, tmp_path):
    images, labels = test_set
    out = tmp_path / 'out'
    (out / 'inputs' / 'T1ce').mkdir(parents=True)
    (out / 'inputs' / 'T1ce' / 'stale_0000.nii.gz').write_bytes(b'an earlier run')
    (out / 'predictions' / 'FLAIR').mkdir(parents=True)
    (out / 'cost.json').write_text('{"earlier": true}')
    (out / 'notes.txt').write_text('mine')
    assert cost(model, images, labels, out, '--overwrite') == 0
    (benchmark, _, benchmark_out_existed), (predict, predicted_files, predict_out_existed) = timed
    assert benchmark[0] == 'nnUNetv2_mm_benchmark' and '--overwrite' not in benchmark and not benchmark_out_existed
    assert predict[0] == 'nnUNetv2_predict' and not predict_out_existed
    assert predicted_files == [f'{c}_{k:04d}.nii.gz' for c in 'ab' for k in range(4)], 'only this run\'s copies'
    result = json.loads((out / 'cost.json').read_text())
    assert result['predict_s_per_subset'] == {'T1ce': 1.0} and result['benchmark_s'] == 1.0
    assert sorted(os.listdir(out / 'inputs' / 'T1ce')) == predicted_files
    assert not (out / 'predictions').exists(), "the earlier run's predictions go with its other outputs"
    assert (out / 'notes.txt').read_text() == 'mine' and no_staging_left(out)
