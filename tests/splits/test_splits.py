"""The published BraTS splits shipped as package data, and ``nnUNetv2_mm_convert_brats --split`` with them."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from nnunet_missingmod.dataset_conversion.synthetic_brats import generate_dataset
from nnunet_missingmod.splits import available_splits, source_case_name, split_file

M2FTRANS = 'https://github.com/Jun-Jie-Shi/M2FTrans'
M2FTRANS_COMMIT = '03a0b28ae03ad1a7dea5fb874c7b47c1439caa34'
#: name -> (train, val, test) counts as published, the lists' folder in the M2FTrans repository, the split's number
PUBLISHED = {'rfnet2018-1': ((199, 29, 57), 'BRATS2018_Training_none_npy', '1'),
             'rfnet2018-2': ((199, 29, 57), 'BRATS2018_Training_none_npy', '2'),
             'rfnet2018-3': ((199, 29, 57), 'BRATS2018_Training_none_npy', '3'),
             'rfnet2020': ((219, 50, 100), 'BRATS2020_Training_none_npy', ''),
             'm2ftrans2021': ((876, 125, 250), 'BRATS2021_Training_none_npy', '')}


def load(name: str) -> dict:
    return json.loads(split_file(name).read_text())


def test_names_resolve_to_package_data_with_the_published_counts_and_sources():
    assert available_splits() == sorted(PUBLISHED)
    for name, ((n_train, n_val, n_test), folder, k) in PUBLISHED.items():
        path = split_file(name)
        assert path.parent.name == 'splits' and path.parent.parent.name == 'nnunet_missingmod'
        split = load(name)
        assert [len(split[key]) for key in ('train', 'val', 'test')] == [n_train, n_val, n_test], name
        cases = split['train'] + split['val'] + split['test']
        assert len(set(cases)) == n_train + n_val + n_test, f'{name}: a case is listed twice'
        source = split['source']
        assert source['repository'] == M2FTRANS and source['commit'] == M2FTRANS_COMMIT
        assert source['paths'] == {key: f'BraTS/{folder}/{key}{k}.txt' for key in ('train', 'val', 'test')}
    # the three BraTS 2018 splits cover the same 285 cases with three different test sets
    splits18 = [load(f'rfnet2018-{i}') for i in (1, 2, 3)]
    assert all({*s['train'], *s['val'], *s['test']} == {*splits18[0]['train'], *splits18[0]['val'],
                                                         *splits18[0]['test']} for s in splits18)
    assert len({frozenset(s['test']) for s in splits18}) == 3
    assert splits18[0]['test'][:2] == ['Brats18_TCIA04_149_1', 'Brats18_TCIA04_343_1']
    assert all(c.startswith('Brats18_') for s in splits18 for c in s['train'] + s['val'] + s['test'])
    # BraTS 2020 names carry RFNet's grade prefix: HG_ for cases 1-259 and 336-369, LG_ for 260-335
    split20 = load('rfnet2020')
    for case in split20['train'] + split20['val'] + split20['test']:
        number = int(case.rsplit('_', 1)[1])
        assert case == f'{"HG" if number <= 259 or number >= 336 else "LG"}_BraTS20_Training_{number:03d}'
    assert {int(c.rsplit('_', 1)[1]) for key in ('train', 'val', 'test') for c in split20[key]} == set(range(1, 370))
    split21 = load('m2ftrans2021')
    assert split21['test'][:2] == ['BraTS2021_00000', 'BraTS2021_00003']


def test_published_names_map_to_source_case_folders():
    source = {'BraTS20_Training_001', 'BraTS20_Training_260', 'Brats18_CBICA_ABY_1'}
    assert source_case_name('HG_BraTS20_Training_001', source) == 'BraTS20_Training_001'
    assert source_case_name('LG_BraTS20_Training_260', source) == 'BraTS20_Training_260'
    assert source_case_name('Brats18_CBICA_ABY_1', source) == 'Brats18_CBICA_ABY_1'
    assert source_case_name('HG_BraTS20_Training_002', source) is None
    assert source_case_name('XX_BraTS20_Training_001', source) is None


def test_split_path_is_a_file_or_a_name(tmp_path):
    path = tmp_path / 'mine.json'
    path.write_text('{}')
    assert split_file(path) == path and split_file(str(path)) == path
    with pytest.raises(ValueError, match="unknown split 'rfnet2019': neither a file nor a shipped split"):
        split_file('rfnet2019')


@pytest.fixture
def env(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        (tmp_path / name).mkdir()
        env[name] = str(tmp_path / name)
    env.pop('NNUNET_MM_TRACEBACK', None)
    return env


@pytest.fixture(scope='module')
def source(tmp_path_factory) -> Path:
    """Five synthetic cases BraTS20_Training_001 ... 005 in the BraTS 2020 layout."""
    root = tmp_path_factory.mktemp('split_src') / 'src'
    generate_dataset(root, 5, 'brats2020', seed=3, shape=(24, 28, 20), progress=False)
    return root


def convert(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(['nnUNetv2_mm_convert_brats', *map(str, args), '--quiet'], capture_output=True, text=True,
                          env=env, timeout=300)


def test_conversion_with_a_split_file_puts_the_cases_in_train_and_test_and_writes_the_fold(env, source, tmp_path):
    split = tmp_path / 'split.json'  # published-style names: RFNet's HG_/LG_ prefixes on some of them
    split.write_text(json.dumps({'train': ['HG_BraTS20_Training_004', 'BraTS20_Training_001'],
                                 'val': ['LG_BraTS20_Training_003'],
                                 'test': ['BraTS20_Training_002', 'HG_BraTS20_Training_005']}))
    result = convert(env, '-i', source, '-d', 931, '--split', split)
    assert result.returncode == 0, result.stderr
    out = Path(env['nnUNet_raw']) / 'Dataset931_BraTS2020'

    def cases(folder, n_channels):
        names = sorted(p.name for p in (out / folder).iterdir())
        return sorted({n[:-12] if n_channels else n[:-7] for n in names}), len(names)

    assert cases('imagesTr', 4) == (['BraTS20_Training_001', 'BraTS20_Training_003', 'BraTS20_Training_004'], 12)
    assert cases('labelsTr', 0) == (['BraTS20_Training_001', 'BraTS20_Training_003', 'BraTS20_Training_004'], 3)
    assert cases('imagesTs', 4) == (['BraTS20_Training_002', 'BraTS20_Training_005'], 8)
    assert cases('labelsTs', 0) == (['BraTS20_Training_002', 'BraTS20_Training_005'], 2)
    assert json.loads((out / 'dataset.json').read_text())['numTraining'] == 3
    fold = [{'train': ['BraTS20_Training_004', 'BraTS20_Training_001'], 'val': ['BraTS20_Training_003']}]
    preprocessed = Path(env['nnUNet_preprocessed']) / 'Dataset931_BraTS2020' / 'splits_final.json'
    assert json.loads((out / 'splits_final.json').read_text()) == fold
    assert json.loads(preprocessed.read_text()) == fold
    # nnU-Net's planner copies the raw data set's splits_final.json and asserts that an existing copy agrees
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import _maybe_copy_splits_file
    _maybe_copy_splits_file(str(out / 'splits_final.json'), str(preprocessed))


@pytest.mark.parametrize('split, fragment', [
    ('rfnet2019', "unknown split 'rfnet2019': neither a file nor a shipped split (m2ftrans2021, rfnet2018-1"),
    ('rfnet2018-1', 'split rfnet2018-1: 285 listed case(s) not in the source folder'),
    ('FILE', 'listed case(s) not in the source folder'),
])
def test_bad_split_is_one_line_and_writes_nothing(env, source, tmp_path, split, fragment):
    if split == 'FILE':
        split = tmp_path / 'split.json'
        split.write_text(json.dumps({'train': ['BraTS20_Training_001', 'BraTS20_Training_002', 'BraTS20_Training_003'],
                                     'val': ['BraTS20_Training_004', 'BraTS20_Training_999'],
                                     'test': ['BraTS20_Training_005', 'HG_BraTS20_Training_998']}))
        fragment = (f'split file {split}: 2 listed case(s) not in the source folder {source}: BraTS20_Training_999, '
                    f'HG_BraTS20_Training_998')
    result = convert(env, '-i', source, '-d', 932, '--split', split)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('nnUNetv2_mm_convert_brats: error: ') and fragment in lines[0], \
        result.stderr
    assert not any(Path(env['nnUNet_raw']).iterdir()) and not any(Path(env['nnUNet_preprocessed']).iterdir())


def test_shipped_splits_resolve_against_the_official_case_folder_names(tmp_path):
    """The official BraTS 2020 folders (BraTS20_Training_001 ... 369) take rfnet2020 with its HG_/LG_ names; the
    BraTS 2018 and 2021 lists are folder names already."""
    from nnunet_missingmod.dataset_conversion.brats_layouts import SourceCase
    from nnunet_missingmod.dataset_conversion.brats_splits import read_split

    def folders(names):
        return {n: SourceCase(n, tmp_path / n, {'seg': tmp_path / n / f'{n}_seg.nii.gz'}) for n in names}

    names20 = [f'BraTS20_Training_{i:03d}' for i in range(1, 370)]
    split = read_split('rfnet2020', folders(names20), tmp_path)
    assert [len(split[k]) for k in ('train', 'val', 'test')] == [219, 50, 100]
    assert sorted(split['train'] + split['val'] + split['test']) == names20
    assert split['test'][0] == 'BraTS20_Training_001' and split['train'][0] == 'BraTS20_Training_002'
    published18 = load('rfnet2018-2')
    names18 = published18['train'] + published18['val'] + published18['test']
    split = read_split('rfnet2018-2', folders(names18), tmp_path)
    assert {k: split[k] for k in ('train', 'val', 'test')} == {k: published18[k] for k in ('train', 'val', 'test')}
