"""Synthetic BraTS-like generator: determinism, layouts, intensity model and the information each modality carries."""
from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from nnunet_missingmod.dataset_conversion import synthetic_brats as sb
from nnunet_missingmod.dataset_conversion.brats_layouts import LAYOUTS

SMALL = (40, 48, 32)


@pytest.fixture(scope='module')
def cases():
    """Twelve small cases of seed 7 (cases 1-5 train, 6-12 test in the information test)."""
    return [sb.generate_case(sb.case_rng(7, i), SMALL) for i in range(1, 13)]


def test_generate_case_is_deterministic_and_seed_dependent():
    a = sb.generate_case(sb.case_rng(3, 1), SMALL)
    b = sb.generate_case(sb.case_rng(3, 1), SMALL)
    c = sb.generate_case(sb.case_rng(4, 1), SMALL)
    for name in sb.MODALITIES:
        assert a['images'][name].dtype == np.int16 and a['images'][name].shape == SMALL
        assert a['images'][name].tobytes() == b['images'][name].tobytes()
        assert not np.array_equal(a['images'][name], c['images'][name])
    assert a['seg'].dtype == np.uint8 and a['seg'].tobytes() == b['seg'].tobytes()
    assert not np.array_equal(a['seg'], c['seg'])


def test_case_structure(cases):
    for case in cases:
        brain, seg = case['brain'], case['seg']
        assert 0.2 < brain.mean() < 0.35  # an ellipsoid filling ~80 % of each axis
        for name in sb.MODALITIES:
            img = case['images'][name]
            assert np.all(img[~brain] == 0), 'skull-stripped: zero background'
            assert np.all(img[brain] >= 0) and (img[brain] > 0).mean() > 0.99
        assert set(np.unique(seg)) <= {0, 1, 2, 3}
        assert np.all(brain[seg > 0]), 'tumour lies inside the brain'
        assert (seg == sb.ED).sum() > 0 and (seg == sb.NCR).sum() + (seg == sb.ET).sum() > 0
        tissue = case['tissue']
        normal = brain & (seg == 0)
        fractions = [(tissue[normal] == t).mean() for t in (sb.CSF, sb.GM, sb.WM)]
        assert 0.08 < fractions[0] < 0.3 and 0.15 < fractions[1] < 0.45 and fractions[2] > 0.35
    kinds = [c['info']['kind'] for c in cases]
    assert 'no_et' in kinds and 'regular' in kinds and 'small_et' in kinds
    et_volumes = [int((c['seg'] == sb.ET).sum()) for c in cases]
    assert min(et_volumes) == 0 and max(et_volumes) > 100
    wt = [int((c['seg'] > 0).sum()) for c in cases]
    assert max(wt) > 2 * min(wt), 'tumour sizes vary'


def _means(case, name):
    img = case['images'][name].astype(np.float64)
    seg, brain, tissue = case['seg'], case['brain'], case['tissue']
    normal = brain & (seg == 0)
    # core of each region (eroded) so that partial volume at the borders does not blur the comparison
    core = lambda m: ndimage.binary_erosion(m) if ndimage.binary_erosion(m).sum() > 10 else m
    regions = {'normal': normal, 'csf': normal & (tissue == sb.CSF), 'gm': normal & (tissue == sb.GM),
               'wm': normal & (tissue == sb.WM), 'ed': core(seg == sb.ED), 'ncr': core(seg == sb.NCR),
               'et': core(seg == sb.ET)}
    means = {k: img[m].mean() if m.sum() > 10 else np.nan for k, m in regions.items()}
    means['normal_std'] = img[normal].std()
    return means


def test_intensity_relations(cases):
    for case in cases:
        flair, t1ce, t2, t1 = (_means(case, n) for n in ('FLAIR', 'T1ce', 'T2', 'T1'))
        # oedema bright on FLAIR, and FLAIR suppresses CSF
        assert flair['ed'] > 1.3 * flair['normal'] and flair['ed'] > 1.3 * max(flair['gm'], flair['wm'])
        assert flair['csf'] < 0.6 * flair['gm']
        # on T2 oedema is bright too, but so is CSF: T2 alone does not tell them apart
        assert t2['ed'] > 1.05 * t2['normal'] and t2['csf'] > 0.8 * t2['ed']
        # white matter brighter than grey matter brighter than CSF on T1
        assert t1['wm'] > t1['gm'] > t1['csf']
        # FLAIR's oedema contrast (in units of normal-brain spread) is far larger than T1's
        d_flair = (flair['ed'] - flair['normal']) / flair['normal_std']
        d_t1 = abs(t1['ed'] - t1['normal']) / t1['normal_std']
        assert d_flair > 1.5 and d_t1 < 0.5 * d_flair
        if not np.isnan(t1ce['et']):
            assert t1ce['et'] > 1.4 * t1ce['ed']
            if (case['seg'] == sb.ET).sum() >= 100:  # tiny patches are blurred by partial volume
                assert t1ce['et'] > 1.3 * t1ce['wm']
            # without contrast agent the rim is unremarkable
            assert abs(t1['et'] - t1['ed']) < 0.2 * t1['ed']
            if not np.isnan(t1ce['ncr']):
                assert t1ce['et'] > 1.4 * t1ce['ncr']
        if not np.isnan(t2['ncr']):
            assert t2['ncr'] > 1.2 * t2['normal']  # necrosis bright on T2


def _features(case, modalities):
    """Per-voxel features inside the brain: z-scored intensity, 3x3x3 mean and Gaussian(1) mean per modality."""
    brain = case['brain']
    out = []
    for name in modalities:
        img = case['images'][name].astype(np.float32)
        img = (img - img[brain].mean()) / img[brain].std()
        img[~brain] = 0
        out += [img, ndimage.uniform_filter(img, 3), ndimage.gaussian_filter(img, 1.0)]
    return np.stack([o[brain] for o in out], 1)


def _pooled_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2 * float((pred & truth).sum()) / max(1.0, float(pred.sum() + truth.sum()))


def test_information_each_modality_carries(cases):
    """A per-voxel logistic regression shows where the information is: FLAIR for the whole tumour, T1ce for ET."""
    from sklearn.linear_model import LogisticRegression
    train, test = cases[:5], cases[5:]
    dice = {}
    for without in (None, 'FLAIR', 'T1ce', 'T2', 'T1'):
        mods = [m for m in sb.MODALITIES if m != without]
        x_tr = np.concatenate([_features(c, mods) for c in train])
        x_te = np.concatenate([_features(c, mods) for c in test])
        y_tr = np.concatenate([c['seg'][c['brain']] for c in train])
        y_te = np.concatenate([c['seg'][c['brain']] for c in test])
        for region, fn in (('WT', lambda y: y > 0), ('ET', lambda y: y == sb.ET)):
            clf = LogisticRegression(max_iter=300).fit(x_tr, fn(y_tr))
            dice[without, region] = _pooled_dice(clf.predict(x_te).astype(bool), fn(y_te))
    print({f'{k[1]} without {k[0]}': round(v, 3) for k, v in dice.items()})
    assert dice[None, 'WT'] > 0.85 and dice[None, 'ET'] > 0.75
    assert dice[None, 'WT'] - dice['FLAIR', 'WT'] > 0.25, 'FLAIR must carry the oedema information'
    assert dice['T1ce', 'ET'] < 0.3 and dice[None, 'ET'] - dice['T1ce', 'ET'] > 0.5, 'only T1ce shows ET'
    for other in ('T2', 'T1'):  # the other modalities are not indispensable
        assert dice[other, 'WT'] > dice[None, 'WT'] - 0.05 and dice[other, 'ET'] > dice[None, 'ET'] - 0.1


@pytest.mark.parametrize('layout', ['brats2020', 'brats2023'])
def test_generate_dataset_layout(tmp_path, layout):
    spec = LAYOUTS[layout]
    folders = sb.generate_dataset(tmp_path / 'out', 3, layout, seed=5, shape=(24, 28, 20), progress=False)
    names = [f.name for f in folders]
    assert names == [spec.synthetic_case_name(i) for i in (1, 2, 3)]
    if layout == 'brats2020':
        assert names[0] == 'BraTS20_Training_001'
        expected = {'BraTS20_Training_001_' + s + '.nii.gz' for s in ('flair', 't1', 't1ce', 't2', 'seg')}
    else:
        assert names[0] == 'BraTS-GLI-00001-000'
        expected = {'BraTS-GLI-00001-000-' + s + '.nii.gz' for s in ('t1n', 't1c', 't2w', 't2f', 'seg')}
    assert {p.name for p in folders[0].iterdir()} == expected
    labels = set()
    for i, folder in enumerate(folders, start=1):
        case = sb.generate_case(sb.case_rng(5, i), (24, 28, 20))
        seg_img = nib.load(str(folder / spec.filename(folder.name, 'seg')))
        seg = np.asanyarray(seg_img.dataobj)
        assert seg.dtype == np.uint8
        labels |= set(np.unique(seg).tolist())
        np.testing.assert_allclose(seg_img.affine, sb.affine_for((24, 28, 20), 2.0))
        assert np.allclose(np.diag(seg_img.affine)[:3], [-2.0, -2.0, 2.0])
        for name in sb.MODALITIES:
            img = np.asanyarray(nib.load(str(folder / spec.filename(folder.name, name))).dataobj)
            assert img.dtype == np.int16 and np.array_equal(img, case['images'][name])
    et = 4 if layout == 'brats2020' else 3
    assert labels == {0, 1, 2, et}
    marker = json.loads((tmp_path / 'out' / sb.MARKER).read_text())
    assert marker['cases'] == names and marker['seed'] == 5


def test_layouts_hold_the_same_case(tmp_path):
    a = sb.generate_dataset(tmp_path / 'a', 2, 'brats2020', seed=1, shape=(24, 28, 20), progress=False)
    b = sb.generate_dataset(tmp_path / 'b', 2, 'brats2023', seed=1, shape=(24, 28, 20), progress=False)
    for fa, fb in zip(a, b):
        sa = np.asanyarray(nib.load(str(fa / f'{fa.name}_seg.nii.gz')).dataobj)
        sb_ = np.asanyarray(nib.load(str(fb / f'{fb.name}-seg.nii.gz')).dataobj)
        assert np.array_equal(np.where(sa == 4, 3, sa), sb_)
        for s20, s23 in (('flair', 't2f'), ('t1', 't1n'), ('t1ce', 't1c'), ('t2', 't2w')):
            x = np.asanyarray(nib.load(str(fa / f'{fa.name}_{s20}.nii.gz')).dataobj)
            y = np.asanyarray(nib.load(str(fb / f'{fb.name}-{s23}.nii.gz')).dataobj)
            assert np.array_equal(x, y)


def test_output_folder_rules(tmp_path):
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'patient.nii.gz').write_bytes(b'x')
    with pytest.raises(ValueError, match='not a previous synthetic output'):
        sb.generate_dataset(foreign, 1, shape=(16, 16, 16), progress=False)
    assert [p.name for p in foreign.iterdir()] == ['patient.nii.gz']
    out = tmp_path / 'out'
    sb.generate_dataset(out, 3, seed=0, shape=(16, 16, 16), progress=False)
    (out / 'notes.txt').write_text('kept')
    sb.generate_dataset(out, 2, seed=1, shape=(16, 16, 16), progress=False)  # replaces only its own cases
    assert sorted(p.name for p in out.iterdir()) == ['BraTS20_Training_001', 'BraTS20_Training_002', 'notes.txt',
                                                     sb.MARKER]


def test_own_foregrounds_per_modality():
    """``foregrounds='own'``: FLAIR on the brain eroded by one 3 mm voxel, T2 without the top 30 % of z, T1/T1ce
    on the brain; labels and every kept voxel as in the shared-foreground case of the same seed."""
    shared = sb.generate_case(sb.case_rng(2, 1), SMALL, 3.0)
    own = sb.generate_case(sb.case_rng(2, 1), SMALL, 3.0, foregrounds='own')
    brain = shared['brain']
    expected = {'T1': brain, 'T1ce': brain, 'FLAIR': ndimage.binary_erosion(brain, iterations=1),
                'T2': brain & (np.arange(SMALL[2]) < SMALL[2] - round(0.3 * SMALL[2]))[None, None, :]}
    assert np.array_equal(own['seg'], shared['seg'])
    for name in sb.MODALITIES:
        kept = expected[name]
        assert np.array_equal(own['images'][name][kept], shared['images'][name][kept])
        assert not own['images'][name][~kept].any()
    assert expected['FLAIR'].sum() < 0.85 * brain.sum() and expected['T2'].sum() < 0.9 * brain.sum()
    with pytest.raises(ValueError, match="unknown foregrounds 'none'"):
        sb.generate_case(sb.case_rng(2, 1), SMALL, foregrounds='none')


def test_cli(tmp_path):
    out = tmp_path / 'cli'
    result = subprocess.run([sys.executable, '-m', 'nnunet_missingmod.dataset_conversion.synthetic_brats', '-o',
                             str(out), '-n', '2', '--seed', '3', '--layout', 'brats2023', '--shape', '20', '24', '16'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ['BraTS-GLI-00001-000', 'BraTS-GLI-00002-000']
    img = np.asanyarray(nib.load(str(out / 'BraTS-GLI-00002-000' / 'BraTS-GLI-00002-000-t1c.nii.gz')).dataobj)
    assert np.array_equal(img, sb.generate_case(sb.case_rng(3, 2), (20, 24, 16))['images']['T1ce'])
    bad = subprocess.run([sys.executable, '-m', 'nnunet_missingmod.dataset_conversion.synthetic_brats', '-o',
                          str(out), '-n', '1', '--layout', 'brats1999'], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and 'unknown BraTS layout' in bad.stderr
