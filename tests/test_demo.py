"""``nnUNetv2_mm_demo -o DIR``: it removes only what an earlier demo run wrote there (listed in the marker file
``DIR/.nnunet_missingmod_demo``) and refuses any other content of DIR in one line, before any work.

None of these tests runs the demo's pipeline: the refusals happen before the first step, and the in-process tests
stop the demo at its first step (``_step`` replaced by a function that raises).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nnunet_missingmod import demo

PROG = 'nnUNetv2_mm_demo'
OURS = demo.DATASET_NAME  # Dataset900_SyntheticBraTS


def _env(tmp_path: Path) -> dict:
    """The environment of the demo subprocess, with stubs of nnU-Net's planning, training and prediction commands
    first on PATH that fail at once: a demo that got past its checks stops at planning instead of training."""
    stubs = tmp_path / 'stub_bin'
    stubs.mkdir(exist_ok=True)
    for name in ('nnUNetv2_plan_and_preprocess', 'nnUNetv2_train', 'nnUNetv2_predict'):
        (stubs / name).write_text('#!/bin/sh\necho "stub: the test does not train" >&2\nexit 3\n')
        (stubs / name).chmod(0o755)
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=os.pathsep.join([str(stubs), os.environ.get('PATH', '')]))
    env.pop('NNUNET_MM_TRACEBACK', None)
    return env


def _run_demo(args, tmp_path):
    return subprocess.run([shutil.which(PROG), *map(str, args)], capture_output=True, text=True, env=_env(tmp_path),
                          timeout=300)


def _populate_unrelated(work: Path) -> dict:
    """An nnU-Net tree with the user's own Dataset220 (raw, preprocessed, a trained model) next to a Dataset900
    folder; returns {path: content} of the user's files."""
    files = {
        work / 'nnUNet_raw' / 'Dataset220_BraTS2020' / 'dataset.json': '{"mine": 1}',
        work / 'nnUNet_preprocessed' / 'Dataset220_BraTS2020' / 'nnUNetPlans.json': '{"plans": 1}',
        work / 'nnUNet_results' / 'Dataset220_BraTS2020' / 'nnUNetTrainer__nnUNetPlans__3d_fullres' / 'fold_0' /
        'checkpoint_final.pth': 'weights',
        work / 'notes.txt': 'my notes',
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


class _Stop(Exception):
    pass


@pytest.fixture
def stop_at_first_step(monkeypatch):
    """The demo stops (raises :class:`_Stop`) at its first pipeline step; the steps it reached are recorded."""
    reached = []

    def step(title, cmd, env):
        reached.append(title)
        raise _Stop(title)
    monkeypatch.setattr(demo, '_step', step)
    return reached


def test_demo_refuses_a_folder_with_an_unmarked_dataset900_and_deletes_nothing(tmp_path):
    """The reported loss: ``DIR/nnUNet_raw/Dataset900_*`` made the demo remove the whole nnU-Net tree of DIR,
    including the user's Dataset220 and its trained model. Now: one line, exit 1, every file still there."""
    work = tmp_path / 'work'
    files = _populate_unrelated(work)
    (work / 'nnUNet_raw' / OURS).mkdir(parents=True)
    (work / 'nnUNet_raw' / OURS / 'dataset.json').write_text('{}')
    result = _run_demo(['-o', work, '-n', '3', '--test-cases', '1', '--val-cases', '1'], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f'{PROG}: error: '), result.stderr
    assert str(work) in lines[0] and demo.MARKER in lines[0], lines[0]
    assert 'Traceback' not in result.stderr
    for path, text in files.items():
        assert path.read_text() == text, f'{path} was changed or removed'
    assert (work / 'nnUNet_raw' / OURS / 'dataset.json').read_text() == '{}'
    assert not (work / demo.MARKER).exists()


def test_demo_refuses_any_non_empty_unmarked_folder(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'thesis.tex').write_text('precious')
    result = _run_demo(['-o', work, '-n', '3', '--test-cases', '1', '--val-cases', '1'], tmp_path)
    assert result.returncode == 1 and f'{PROG}: error: ' in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert 'is not empty' in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ['thesis.tex']


def test_demo_replaces_only_what_its_marker_lists(tmp_path, stop_at_first_step):
    """An earlier demo run (marker present) is replaced: the demo's own folders go, the user's Dataset220 (added
    later into the same nnU-Net folders) and other files stay."""
    work = tmp_path / 'work'
    files = _populate_unrelated(work)
    ours = [work / 'nnUNet_raw' / OURS / 'dataset.json', work / 'nnUNet_preprocessed' / OURS / 'x.json',
            work / 'nnUNet_results' / OURS / 'model.pth', work / 'brats_source' / 'case' / 'a.nii.gz',
            work / 'predictions' / 'p.nii.gz', work / 'benchmark' / 'summary.json', work / 'split.json']
    for path in ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('old demo')
    demo.write_marker(work)
    with pytest.raises(_Stop):
        demo.main.__wrapped__(['-o', str(work)])
    assert stop_at_first_step == ['synthetic BraTS-like data']
    for path in ours:
        assert not path.exists(), f'{path} of the earlier demo run is still there'
    for path, text in files.items():
        assert path.read_text() == text, f'{path} was changed or removed'
    marker = json.loads((work / demo.MARKER).read_text())
    assert marker['written_by'] == PROG and f'nnUNet_raw/{OURS}' in marker['paths']


def test_demo_refuses_a_marked_folder_with_a_foreign_dataset900(tmp_path, stop_at_first_step):
    """Another Dataset900_* (not the demo's) would collide with the demo's data set id: refused, kept."""
    work = tmp_path / 'work'
    work.mkdir()
    demo.write_marker(work)
    foreign = work / 'nnUNet_results' / 'Dataset900_Other' / 'model.pth'
    foreign.parent.mkdir(parents=True)
    foreign.write_text('weights')
    with pytest.raises(demo.CommandError, match='Dataset900_Other'):
        demo.main.__wrapped__(['-o', str(work)])
    assert foreign.read_text() == 'weights' and stop_at_first_step == []


def test_demo_refuses_a_marker_that_lists_foreign_paths(tmp_path, stop_at_first_step):
    work = tmp_path / 'work'
    (work / 'elsewhere').mkdir(parents=True)
    (work / 'elsewhere' / 'keep.txt').write_text('keep')
    (work / demo.MARKER).write_text(json.dumps({'written_by': PROG, 'paths': ['elsewhere', '../x']}))
    with pytest.raises(demo.CommandError, match='not one of the demo'):
        demo.main.__wrapped__(['-o', str(work)])
    assert (work / 'elsewhere' / 'keep.txt').read_text() == 'keep' and stop_at_first_step == []


def test_demo_in_a_new_folder_writes_its_marker_first(tmp_path, stop_at_first_step):
    work = tmp_path / 'new'
    with pytest.raises(_Stop):
        demo.main.__wrapped__(['-o', str(work)])
    assert (work / demo.MARKER).is_file()
    assert set(json.loads((work / demo.MARKER).read_text())['paths']) == set(demo.DEMO_PATHS)
