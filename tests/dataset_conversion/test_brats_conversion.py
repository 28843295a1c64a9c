"""BraTS -> nnU-Net conversion: both layouts, split files, back-conversion and the bad-input policy."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_missingmod.dataset_conversion import brats
from nnunet_missingmod.dataset_conversion.brats import ConversionError, convert_brats
from nnunet_missingmod.dataset_conversion.synthetic_brats import generate_dataset

SHAPE = (24, 28, 20)


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob('*')):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp('brats_src')
    return {layout: generate_dataset(root / layout, 4, layout, seed=11, shape=SHAPE, progress=False)[0].parent
            for layout in ('brats2020', 'brats2023')}


@pytest.fixture
def env(tmp_path, monkeypatch):
    raw, pre = tmp_path / 'raw', tmp_path / 'pre'
    monkeypatch.setenv('nnUNet_raw', str(raw))
    monkeypatch.setenv('nnUNet_preprocessed', str(pre))
    return raw, pre


@pytest.fixture
def src(tmp_path, sources):
    """A private copy of the brats2020 source, free to break."""
    dst = tmp_path / 'src'
    shutil.copytree(sources['brats2020'], dst)
    return dst


def test_both_layouts_give_identical_datasets(sources, env):
    raw, _ = env
    hashes = {k: tree_hash(v) for k, v in sources.items()}
    out20 = convert_brats(sources['brats2020'], 901, progress=False)
    out23 = convert_brats(sources['brats2023'], 902, progress=False)
    assert out20 == raw / 'Dataset901_BraTS2020' and out23 == raw / 'Dataset902_BraTS2023'
    assert {k: tree_hash(v) for k, v in sources.items()} == hashes, 'source untouched'
    for out in (out20, out23):
        ds = json.loads((out / 'dataset.json').read_text())
        assert ds['channel_names'] == {'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'}
        assert ds['labels'] == {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3],
                                'enhancing tumor': 3}
        assert ds['regions_class_order'] == [1, 2, 3] and ds['file_ending'] == '.nii.gz' and ds['numTraining'] == 4
        assert not (out / 'imagesTs').exists()
    names20 = sorted(p.name for p in (out20 / 'labelsTr').iterdir())
    names23 = sorted(p.name for p in (out23 / 'labelsTr').iterdir())
    assert names20[0] == 'BraTS20_Training_001.nii.gz' and names23[0] == 'BraTS-GLI-00001-000.nii.gz'
    for n20, n23 in zip(names20, names23):
        lab20, lab23 = read(out20 / 'labelsTr' / n20), read(out23 / 'labelsTr' / n23)
        assert np.array_equal(lab20, lab23) and set(np.unique(lab20)) <= {0, 1, 2, 3}
        case20, case23 = n20[:-7], n23[:-7]
        for ch in range(4):
            assert np.array_equal(read(out20 / 'imagesTr' / f'{case20}_{ch:04d}.nii.gz'),
                                  read(out23 / 'imagesTr' / f'{case23}_{ch:04d}.nii.gz'))
        # label mapping (2020): oedema 2 -> 1, necrosis 1 -> 2, enhancing 4 -> 3; channel order T1, T1ce, T2, FLAIR
        seg_src = read(sources['brats2020'] / case20 / f'{case20}_seg.nii.gz')
        assert np.array_equal(lab20 == 1, seg_src == 2) and np.array_equal(lab20 == 2, seg_src == 1)
        assert np.array_equal(lab20 == 3, seg_src == 4)
        for ch, suffix in enumerate(('t1', 't1ce', 't2', 'flair')):
            assert np.array_equal(read(out20 / 'imagesTr' / f'{case20}_{ch:04d}.nii.gz'),
                                  read(sources['brats2020'] / case20 / f'{case20}_{suffix}.nii.gz'))
    assert 3 in np.unique(np.concatenate([read(p).ravel() for p in (out20 / 'labelsTr').iterdir()]))
    assert not [p for p in raw.iterdir() if p.name.startswith('.')], 'no temporary folder left'


def test_unlabelled_cases_go_to_imagesTs_and_overwrite(src, env):
    raw, _ = env
    (src / 'BraTS20_Training_004' / 'BraTS20_Training_004_seg.nii.gz').unlink()
    out = convert_brats(src, 903, 'Synth', progress=False)
    assert sorted(p.name for p in (out / 'imagesTs').iterdir()) == [f'BraTS20_Training_004_{c:04d}.nii.gz'
                                                                     for c in range(4)]
    assert len(list((out / 'labelsTr').iterdir())) == 3 and not (out / 'labelsTs').exists()
    assert json.loads((out / 'dataset.json').read_text())['numTraining'] == 3
    (out / 'stale.txt').write_text('old')
    with pytest.raises(ConversionError, match='already exists; use --overwrite'):
        convert_brats(src, 903, 'Synth', progress=False)
    assert (out / 'stale.txt').exists()
    with pytest.raises(ConversionError, match='already used by'):
        convert_brats(src, 903, 'Other', progress=False)
    convert_brats(src, 903, 'Synth', overwrite=True, num_processes=2, progress=False)
    assert not (out / 'stale.txt').exists() and (out / 'dataset.json').is_file()
    assert sorted(p.name for p in raw.iterdir()) == ['Dataset903_Synth']
    _break(src, 'label')  # errors from worker processes are collected as well
    with pytest.raises(ConversionError, match=f'{C2}_seg.nii.gz.*unexpected label value'):
        convert_brats(src, 903, 'Synth', overwrite=True, num_processes=2, progress=False)
    assert (out / 'dataset.json').is_file() and sorted(p.name for p in raw.iterdir()) == ['Dataset903_Synth']


def test_split_file(src, env, tmp_path):
    raw, pre = env
    before = tree_hash(src)
    split = tmp_path / 'split.json'
    split.write_text(json.dumps({'train': ['BraTS20_Training_001', 'BraTS20_Training_003'],
                                 'val': ['BraTS20_Training_002'], 'test': ['BraTS20_Training_004']}))
    out = convert_brats(src, 904, split=split, progress=False)
    assert sorted(p.name for p in (out / 'labelsTr').iterdir()) == [f'BraTS20_Training_00{i}.nii.gz' for i in (1, 2, 3)]
    assert sorted(p.name for p in (out / 'labelsTs').iterdir()) == ['BraTS20_Training_004.nii.gz']
    assert len(list((out / 'imagesTs').iterdir())) == 4 and len(list((out / 'imagesTr').iterdir())) == 12
    splits = json.loads((pre / 'Dataset904_BraTS2020' / 'splits_final.json').read_text())
    assert splits == [{'train': ['BraTS20_Training_001', 'BraTS20_Training_003'], 'val': ['BraTS20_Training_002']}]
    assert tree_hash(src) == before

    bad_splits = {
        'unknown': ({'train': ['BraTS20_Training_001', 'BraTS20_Training_009'], 'val': [],
                     'test': ['BraTS20_Training_002', 'BraTS20_Training_003', 'BraTS20_Training_004']},
                    'BraTS20_Training_009'),
        'twice': ({'train': ['BraTS20_Training_001', 'BraTS20_Training_002'], 'val': ['BraTS20_Training_002'],
                   'test': ['BraTS20_Training_003', 'BraTS20_Training_004']}, 'listed in "train" and in "val"'),
        'unlisted': ({'train': ['BraTS20_Training_001'], 'val': ['BraTS20_Training_002']}, 'in no list'),
        'key': ({'training': ['BraTS20_Training_001']}, 'unknown key'),
    }
    for i, (content, message) in enumerate(bad_splits.values()):
        path = tmp_path / f'bad{i}.json'
        path.write_text(json.dumps(content))
        with pytest.raises(ConversionError, match=message) as err:
            convert_brats(src, 905 + i, split=path, progress=False)
        assert str(path) in str(err.value)
    assert sorted(p.name for p in raw.iterdir()) == ['Dataset904_BraTS2020']
    assert sorted(p.name for p in pre.iterdir()) == ['Dataset904_BraTS2020']


@pytest.mark.parametrize('layout', ['brats2020', 'brats2023'])
def test_back_conversion_round_trip(sources, env, tmp_path, layout):
    out = convert_brats(sources[layout], 910, progress=False)
    back = tmp_path / 'back'
    brats.main(['--to-source', str(out / 'labelsTr'), str(back), '--layout', layout, '--quiet'])
    spec = brats.LAYOUTS[layout]
    files = sorted(back.iterdir())
    assert len(files) == 4
    for f in files:
        case = f.name[:-7]
        original = read(sources[layout] / case / spec.filename(case, 'seg'))
        assert np.array_equal(read(f), original)
    assert np.array_equal(brats.to_source_labels(np.array([0, 1, 2, 3]), layout),
                          [0, 2, 1, 4] if layout == 'brats2020' else [0, 2, 1, 3])
    bad = tmp_path / 'bad_pred'
    bad.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 4, 4), 5, np.uint8)), str(bad / 'x.nii.gz'))
    with pytest.raises(ConversionError, match='x.nii.gz.*unexpected label value'):
        brats.convert_predictions_to_source(bad, tmp_path / 'bad_out', layout, progress=False)
    assert not (tmp_path / 'bad_out').exists()


def _save_like(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _modify(path: Path, fn) -> None:
    img = nib.load(str(path))
    data, affine = fn(np.asanyarray(img.dataobj).copy(), img.affine.copy())
    path.unlink()
    _save_like(path, data, affine)


C1 = 'BraTS20_Training_001'
C2 = 'BraTS20_Training_002'


def _break(src: Path, kind: str) -> str:
    """Break the source in one way; returns the file (path fragment) the error must name."""
    case = src / C2
    t1ce, seg, flair = case / f'{C2}_t1ce.nii.gz', case / f'{C2}_seg.nii.gz', case / f'{C2}_flair.nii.gz'
    if kind == 'missing_modality':
        t1ce.unlink()
        return str(t1ce)
    if kind == 'extra_modality':
        shutil.copyfile(flair, case / f'{C2}_dwi.nii.gz')
        return f'{C2}_dwi.nii.gz'
    if kind == 'duplicate_modality':
        nib.save(nib.load(str(flair)), str(case / f'{C2}_flair.nii'))
        return f'{C2}_flair.nii'
    if kind == 'foreign_file':
        shutil.copyfile(flair, case / f'{C1}_flair.nii.gz')
        return f'{C1}_flair.nii.gz'
    if kind == 'label':
        def relabel(a, aff):
            a[0, 0, 0] = 3  # a BraTS 2023 label in a 2020 segmentation
            return a, aff
        _modify(seg, relabel)
        return str(seg)
    if kind == 'shape':
        _modify(t1ce, lambda a, aff: (a[:-1], aff))
        return str(t1ce)
    if kind == 'spacing':
        _modify(t1ce, lambda a, aff: (a, aff @ np.diag([1.0, 1.0, 1.5, 1.0])))
        return str(t1ce)
    if kind == 'affine':
        _modify(seg, lambda a, aff: (a, aff + np.array([[0, 0, 0, 3.0]] + [[0, 0, 0, 0]] * 3)))
        return str(seg)
    if kind in ('nan', 'inf'):  # written with SimpleITK: nibabel would turn NaN into 0 on saving
        img = sitk.ReadImage(str(flair))
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        a[SHAPE[2] // 2, SHAPE[1] // 2, SHAPE[0] // 2] = np.nan if kind == 'nan' else np.inf
        poisoned = sitk.GetImageFromArray(a)
        poisoned.CopyInformation(img)
        sitk.WriteImage(poisoned, str(flair))
        assert not np.all(np.isfinite(np.asanyarray(nib.load(str(flair)).dataobj)))
        return str(flair)
    if kind == 'no_modality':
        for p in case.iterdir():
            if not p.name.endswith('_seg.nii.gz'):
                p.unlink()
        return str(case)
    if kind == 'unreadable':
        t1ce.write_bytes(b'not a nifti file')
        return str(t1ce)
    if kind == 'truncated':  # SimpleITK zero-fills the missing voxels of a truncated stream
        data = t1ce.read_bytes()
        t1ce.write_bytes(data[:len(data) // 2])
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(t1ce))).shape == SHAPE[::-1]
        return str(t1ce)
    if kind == 'all_zero':
        for p in case.iterdir():
            if not p.name.endswith('_seg.nii.gz'):
                _modify(p, lambda a, aff: (np.zeros_like(a), aff))
        return str(case)
    if kind == 'empty_folder':
        for p in case.iterdir():
            p.unlink()
        return str(case)
    raise ValueError(kind)


BAD_KINDS = ['missing_modality', 'extra_modality', 'duplicate_modality', 'foreign_file', 'label', 'shape', 'spacing',
             'affine', 'nan', 'inf', 'no_modality', 'unreadable', 'truncated', 'all_zero', 'empty_folder']


@pytest.mark.parametrize('kind', BAD_KINDS)
def test_bad_input_names_the_file_and_writes_nothing(src, env, kind):
    raw, pre = env
    named = _break(src, kind)
    before = tree_hash(src)
    with pytest.raises(ConversionError) as err:
        convert_brats(src, 920, progress=False)
    message = str(err.value)
    assert named in message and C2 in message, message
    assert tree_hash(src) == before
    assert not raw.exists() or not any(raw.iterdir()), 'no data set and no temporary folder'
    assert not pre.exists()
    assert '\n' not in message, 'one line'


def test_stale_temporary_folders_of_dead_processes_are_removed(src, env):
    """A SIGKILLed run leaves its ``.DatasetXXX_*.tmp-<pid>`` behind; the next run removes those of dead processes
    (and leaves those of running ones)."""
    raw, _ = env
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True).stdout.strip()
    stale = [raw / f'.Dataset940_BraTS2020.tmp-{dead}', raw / f'.Dataset777_Other.old-{dead}']
    for p in stale:
        (p / 'imagesTr').mkdir(parents=True)
    running = raw / f'.Dataset778_Other.tmp-{__import__("os").getpid()}'
    running.mkdir()
    convert_brats(src, 940, progress=False)
    assert not any(p.exists() for p in stale) and running.is_dir()


def test_bad_targets(src, env, tmp_path, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ConversionError, match='empty'):
        convert_brats(empty, 930, progress=False)
    with pytest.raises(ConversionError, match='does not exist'):
        convert_brats(tmp_path / 'nope', 930, progress=False)
    before = tree_hash(src)
    for raw in (src, src / 'nnUNet_raw'):  # output equal to / inside the source
        monkeypatch.setenv('nnUNet_raw', str(raw))
        with pytest.raises(ConversionError, match='inside'):
            convert_brats(src, 930, progress=False)
    assert tree_hash(src) == before
    monkeypatch.setenv('nnUNet_raw', str(tmp_path))
    nested = tmp_path / 'Dataset931_X' / 'src'
    shutil.copytree(src, nested)
    with pytest.raises(ConversionError, match='inside the output folder'):
        convert_brats(nested, 931, 'X', overwrite=True, progress=False)
    assert (nested / C1 / f'{C1}_seg.nii.gz').is_file()
    monkeypatch.setenv('nnUNet_raw', str(tmp_path / 'raw2'))
    other = tmp_path / 'src23'
    shutil.copytree(src, other)
    (other / C1).rename(other / 'BraTS-GLI-00001-000')
    for p in (other / 'BraTS-GLI-00001-000').iterdir():
        suffix = {'t1': 't1n', 't1ce': 't1c', 't2': 't2w', 'flair': 't2f', 'seg': 'seg'}[p.name[len(C1) + 1:-7]]
        p.rename(p.with_name(f'BraTS-GLI-00001-000-{suffix}.nii.gz'))
    with pytest.raises(ConversionError, match='mixes layouts'):
        convert_brats(other, 932, progress=False)
    assert not (tmp_path / 'raw2').exists()


def test_nested_hgg_lgg_folders_and_cli(src, env, tmp_path):
    raw, _ = env
    nested = tmp_path / 'MICCAI_BraTS_2018_Data_Training'
    for i, group in enumerate(('HGG', 'HGG', 'LGG', 'LGG'), start=1):
        shutil.copytree(src / f'BraTS20_Training_00{i}', nested / group / f'BraTS20_Training_00{i}')
    (nested / 'name_mapping.csv').write_text('a,b\n')  # top-level metadata files are ignored
    result = subprocess.run([sys.executable, '-m', 'nnunet_missingmod.dataset_conversion.Dataset218_BraTS2018',
                             '-i', str(nested), '--quiet'], capture_output=True, text=True, timeout=300,
                            env={**__import__('os').environ, 'nnUNet_raw': str(raw)})
    assert result.returncode == 0, result.stderr
    out = raw / 'Dataset218_BraTS2018'
    assert len(list((out / 'labelsTr').iterdir())) == 4 and len(list((out / 'imagesTr').iterdir())) == 16
    again = subprocess.run([sys.executable, '-m', 'nnunet_missingmod.dataset_conversion.brats', '-i', str(nested),
                            '-d', '218', '-n', 'BraTS2018', '--quiet'], capture_output=True, text=True, timeout=300,
                           env={**__import__('os').environ, 'nnUNet_raw': str(raw)})
    assert again.returncode == 1 and 'already exists; use --overwrite' in again.stderr


# ------------------------------------------------------------------- --to-source: a used OUT_DIR, whole or nothing
def _to_source(pred: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(['nnUNetv2_mm_convert_brats', '--to-source', str(pred), str(out), '--layout', 'brats2020',
                           '--quiet', *extra], capture_output=True, text=True, timeout=300)


def _predictions(folder: Path, names=('c1.nii.gz', 'c2.nii.gz')) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 4, 4), i % 4, np.uint8)), str(folder / name))
    return folder


def test_to_source_refuses_a_non_empty_output_without_overwrite(tmp_path):
    """--to-source replaced same-named files of OUT_DIR silently; now a non-empty OUT_DIR needs --overwrite, which
    replaces the converted files and leaves the others alone."""
    pred, out = _predictions(tmp_path / 'pred'), tmp_path / 'out'
    out.mkdir()
    (out / 'c1.nii.gz').write_bytes(b'my own segmentation')
    (out / 'notes.txt').write_text('mine')
    result = _to_source(pred, out)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('nnUNetv2_mm_convert_brats: error: '), result.stderr
    assert f'output folder {out} is not empty' in lines[0] and '--overwrite' in lines[0], lines[0]
    assert (out / 'c1.nii.gz').read_bytes() == b'my own segmentation'
    assert sorted(p.name for p in out.iterdir()) == ['c1.nii.gz', 'notes.txt']
    again = _to_source(pred, out, '--overwrite')
    assert again.returncode == 0, again.stderr
    assert read(out / 'c1.nii.gz').max() == 0 and read(out / 'c2.nii.gz').max() == 2  # nnU-Net 1 -> BraTS 2
    assert (out / 'notes.txt').read_text() == 'mine'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out', 'pred'], 'no temporary folder left'


def test_to_source_writes_all_files_or_none(tmp_path, monkeypatch):
    pred = _predictions(tmp_path / 'pred', ('c1.nii.gz', 'c2.nii.gz', 'c3.nii.gz'))
    real_write, calls = sitk.WriteImage, []

    def failing_write(image, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError('disk full')
        return real_write(image, path, *args, **kwargs)
    monkeypatch.setattr(sitk, 'WriteImage', failing_write)
    with pytest.raises(RuntimeError, match='disk full'):
        brats.convert_predictions_to_source(pred, tmp_path / 'out', 'brats2020', progress=False)
    assert len(calls) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ['pred'], 'nothing of the output left'
    out = tmp_path / 'used'
    out.mkdir()
    (out / 'c1.nii.gz').write_bytes(b'earlier')
    calls.clear()
    with pytest.raises(RuntimeError, match='disk full'):
        brats.convert_predictions_to_source(pred, out, 'brats2020', progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ['c1.nii.gz'] and (out / 'c1.nii.gz').read_bytes() == b'earlier'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['pred', 'used']


def test_to_source_refuses_two_predictions_with_one_output_name(tmp_path):
    """``x.nii`` and ``x.nii.gz`` would both be written as ``x.nii.gz``: refused before anything is written."""
    pred = _predictions(tmp_path / 'pred', ('x.nii', 'x.nii.gz'))
    result = _to_source(pred, tmp_path / 'out')
    assert result.returncode == 1 and 'x.nii.gz' in result.stderr and 'both' in result.stderr, result.stderr
    assert not (tmp_path / 'out').exists()
