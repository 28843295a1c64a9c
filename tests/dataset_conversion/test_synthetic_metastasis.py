"""Metastasis-like synthetic cases: several small enhancing cores in wide oedema, same contrasts as the gliomas."""
import numpy as np
import pytest
from scipy import ndimage

from nnunet_missingmod.dataset_conversion.synthetic_brats import ED, ET, NCR, WM, case_rng, generate_case

SHAPE = (48, 56, 40)


@pytest.fixture(scope='module')
def cases():
    return [generate_case(case_rng(7, i), SHAPE, 3.0, 'metastasis') for i in range(1, 7)]


def test_several_small_cores_in_wide_oedema(cases):
    for case in cases:
        seg = case['seg']
        assert set(np.unique(seg)) <= {0, NCR, ED, ET}
        core = np.isin(seg, (NCR, ET))
        assert ndimage.label(core)[1] >= 2                       # several lesions
        assert (seg == ED).sum() > 5 * core.sum()                # vasogenic oedema much larger than the cores
        assert (seg == ET).sum() > 0 and not (seg[~case['brain']] > 0).any()
    gliomas = [generate_case(case_rng(7, i), SHAPE, 3.0) for i in range(1, 7)]
    assert all(ndimage.label(np.isin(g['seg'], (NCR, ET)))[1] == 1 for g in gliomas)


def test_enhancing_cores_show_on_t1ce_oedema_on_flair(cases):
    """The missing-modality effect carries over: the enhancing cores stand out from their oedema only on T1ce, the
    oedema from normal white matter most on FLAIR."""
    et_vs_oedema = {m: [] for m in ('T1', 'T1ce', 'T2', 'FLAIR')}
    oedema_vs_wm = {m: [] for m in et_vs_oedema}
    for case in cases:
        wm = (case['tissue'] == WM) & (case['seg'] == 0)
        for m, image in case['images'].items():
            img = image.astype(float)
            oedema = img[case['seg'] == ED].mean()
            et_vs_oedema[m].append(img[case['seg'] == ET].mean() / oedema)
            oedema_vs_wm[m].append(oedema / img[wm].mean())
    et = {m: float(np.mean(v)) for m, v in et_vs_oedema.items()}
    ed = {m: float(np.mean(v)) for m, v in oedema_vs_wm.items()}
    assert et['T1ce'] > 1.2 and et['T1ce'] > max(et['T1'], et['T2'], et['FLAIR']) + 0.2, et
    assert ed['FLAIR'] > 1.3 and ed['FLAIR'] == max(ed.values()), ed


def test_deterministic_and_unknown_pathology():
    a = generate_case(case_rng(3, 1), SHAPE, 3.0, 'metastasis')
    b = generate_case(case_rng(3, 1), SHAPE, 3.0, 'metastasis')
    assert np.array_equal(a['seg'], b['seg']) and np.array_equal(a['images']['T1ce'], b['images']['T1ce'])
    with pytest.raises(ValueError, match='pathology'):
        generate_case(case_rng(3, 1), SHAPE, 3.0, 'lymphoma')
