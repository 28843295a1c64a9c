import math

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from nnunet_missingmod.evaluation.metrics import (HD95_PENALTY_MM, dice, empty_hd95_value, et_postprocess,
                                                  et_relabel_labelmap, evaluate_case, hd95, image_diagonal_mm,
                                                  region_masks)
from nnunet_missingmod.regions import dataset_regions, region_index, region_name_of_labels, region_short_name

BRATS_LABELS = {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': [3]}
BRATS_JSON = {'labels': BRATS_LABELS, 'regions_class_order': [1, 2, 3]}


def random_blob(rng, shape, n_seeds=3, radius=4):
    """A few random balls, slightly distorted: non-trivial surfaces."""
    seeds = np.zeros(shape, dtype=bool)
    for _ in range(n_seeds):
        seeds[tuple(rng.integers(radius, s - radius) for s in shape)] = True
    dist = ndimage.distance_transform_edt(~seeds)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return dist + 3 * noise < radius


@pytest.mark.parametrize('seed', range(6))
def test_dice_and_hd95_match_medpy_on_random_blobs_with_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    shape = (30, 36, 24)
    spacing = (1.0, 0.7, 2.5) if seed % 2 else (3.0, 1.0, 1.2)
    pred, ref = random_blob(rng, shape), random_blob(rng, shape)
    assert pred.any() and ref.any()
    assert dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-12)
    assert hd95(pred, ref, spacing) == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=spacing), abs=1e-9)
    # spacing matters: HD95 in mm is not HD95 in voxels
    assert hd95(pred, ref, spacing) != pytest.approx(hd95(pred, ref, (1, 1, 1)))


@pytest.mark.parametrize('seed', range(3))
def test_hd95_matches_medpy_for_scattered_masks_touching_the_image_border(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((20, 25, 30)) > 0.97
    b = rng.random((20, 25, 30)) > 0.97
    a[0, :3, :3] = True
    b[-1, -2:, :] = True
    spacing = (1.0, 0.5, 2.0)
    assert hd95(a, b, spacing) == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=spacing), abs=1e-9)


def test_hd95_is_symmetric_and_zero_for_identical_masks():
    rng = np.random.default_rng(7)
    a, b = random_blob(rng, (20, 20, 20)), random_blob(rng, (20, 20, 20))
    assert hd95(a, b, (1, 2, 3)) == pytest.approx(hd95(b, a, (1, 2, 3)))
    assert hd95(a, a, (1, 2, 3)) == 0.0
    assert dice(a, a) == 1.0


def test_hd95_known_value_for_shifted_cube():
    a = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b = np.roll(a, 3, axis=2)
    # every surface voxel of one cube is at most 3 voxels (x 2 mm) from the other's surface along axis 2
    assert hd95(a, b, (1, 1, 2)) == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=(1, 1, 2)))
    assert hd95(a, b, (1, 1, 2)) == pytest.approx(6.0)
    assert dice(a, b) == pytest.approx(2 * 50 / 250)


def test_both_empty_gives_dice_one_and_hd95_zero_for_every_convention():
    empty = np.zeros((8, 8, 8), bool)
    assert dice(empty, empty) == 1.0
    for convention in ('penalty', 'nan', 'max', 0, 1.0):
        assert hd95(empty, empty, (1, 1, 1), convention) == 0.0


@pytest.mark.parametrize('side', ['pred_empty', 'ref_empty'])
def test_one_side_empty_conventions(side):
    shape, spacing = (10, 20, 30), (2.0, 1.0, 0.5)
    full = np.zeros(shape, bool)
    full[2:5, 2:5, 2:5] = True
    empty = np.zeros(shape, bool)
    pred, ref = (empty, full) if side == 'pred_empty' else (full, empty)
    assert dice(pred, ref) == 0.0
    assert hd95(pred, ref, spacing) == HD95_PENALTY_MM == 373.13  # default convention
    assert HD95_PENALTY_MM == pytest.approx(math.sqrt(240 ** 2 + 240 ** 2 + 155 ** 2), abs=0.01)
    assert hd95(pred, ref, spacing, 'penalty') == 373.13
    assert math.isnan(hd95(pred, ref, spacing, 'nan'))
    assert hd95(pred, ref, spacing, 'max') == pytest.approx(math.sqrt(20 ** 2 + 20 ** 2 + 15 ** 2))
    assert hd95(pred, ref, spacing, 0) == 0.0
    assert hd95(pred, ref, spacing, 1) == 1.0
    assert hd95(pred, ref, spacing, '1') == 1.0  # numbers given as text (command line)
    assert hd95(pred, ref, spacing, '373') == 373.0  # --hd95-empty 373: the official brats-evaluation value


def test_empty_convention_errors_and_diagonal():
    assert image_diagonal_mm((240, 240, 155), (1, 1, 1)) == pytest.approx(373.13, abs=0.01)
    assert empty_hd95_value('max', (3, 4), (1, 1)) == 5.0
    with pytest.raises(ValueError, match='unknown hd95_empty'):
        empty_hd95_value('worst', (3, 4), (1, 1))
    with pytest.raises(ValueError, match='shape'):
        hd95(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_region_names_and_regions_come_from_dataset_json():
    assert dataset_regions(BRATS_JSON) == [('WT', (1, 2, 3)), ('TC', (2, 3)), ('ET', (3,))]
    assert [region_short_name(n) for n in ('Whole_Tumor', 'tumour core', 'Enhancing-Tumor', 'edema')] == \
        ['WT', 'TC', 'ET', 'edema']
    # other label values (e.g. the BraTS 2023 convention 1 NCR, 2 ED, 3 ET) are read, not assumed
    other = {'labels': {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [1, 3], 'enhancing tumor': 3}}
    assert dataset_regions(other) == [('WT', (1, 2, 3)), ('TC', (1, 3)), ('ET', (3,))]
    # label-based data set: one "region" per foreground label, named by the data set
    labels = {'labels': {'background': 0, 'liver': 1, 'tumour': 2, 'ignore': 3}}
    assert dataset_regions(labels) == [('liver', (1,)), ('tumour', (2,))]
    with pytest.raises(ValueError, match='labels'):
        dataset_regions({'channel_names': {}})


def test_region_lookup_by_name_and_by_nnunet_summary_key():
    assert [region_index(BRATS_JSON, n) for n in ('wt', 'Tumor Core', 'enhancing_tumor', 'ET')] == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown region 'necrosis'"):
        region_index(BRATS_JSON, 'necrosis')
    # nnU-Net's evaluation summary.json keys regions by their label tuple (or the label for one-label regions)
    assert [region_name_of_labels(BRATS_JSON, k) for k in ('(1, 2, 3)', '(2, 3)', '(3,)', '3', [3, 2])] == \
        ['WT', 'TC', 'ET', 'ET', 'TC']
    assert region_name_of_labels(BRATS_JSON, '(1, 2)') == '(1, 2)'


def test_region_masks_and_evaluate_case():
    seg = np.array([[0, 1, 2], [3, 3, 0]])
    masks = region_masks(seg, dataset_regions(BRATS_JSON))
    assert masks['WT'].sum() == 4 and masks['TC'].sum() == 3 and masks['ET'].sum() == 2
    ref = np.array([[0, 1, 2], [3, 0, 0]])
    result = evaluate_case(seg, ref, dataset_regions(BRATS_JSON), (1.0, 1.0))
    assert result['WT']['Dice'] == pytest.approx(2 * 3 / 7)
    assert result['ET']['Dice'] == pytest.approx(2 * 1 / 3)
    assert result['ET']['HD95'] == pytest.approx(medpy_binary.hd95(seg == 3, ref == 3))


def brats_like_prediction(et_voxels: int):
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[2:10, 2:10, 2:10] = 1  # edema
    seg[4:8, 4:8, 4:8] = 2  # necrosis / core
    et = np.argwhere(seg == 2)[:et_voxels]
    seg[tuple(et.T)] = 3
    return seg


@pytest.mark.parametrize('mode', ['remove', 'relabel'])
def test_et_postprocess_small_et(mode):
    regions = dataset_regions(BRATS_JSON)
    masks = region_masks(brats_like_prediction(5), regions)
    out = et_postprocess(masks, 10, mode)
    assert out['ET'].sum() == 0
    # BraTS regions are nested: TC and WT keep the voxels (removed for the ET score / relabelled to necrosis)
    np.testing.assert_array_equal(out['TC'], masks['TC'])
    np.testing.assert_array_equal(out['WT'], masks['WT'])
    assert masks['ET'].sum() == 5  # input untouched
    # large enough ET, or post-processing off: unchanged
    for kept in (et_postprocess(masks, 5, mode), et_postprocess(masks, 0, mode)):
        np.testing.assert_array_equal(kept['ET'], masks['ET'])


def test_et_postprocess_modes_differ_when_et_is_not_inside_the_core():
    et = np.zeros((6, 6), bool)
    et[0, 0:2] = True
    core = np.zeros((6, 6), bool)
    core[3:5, 3:5] = True
    whole = core | et
    masks = {'WT': whole, 'TC': core, 'ET': et}
    removed = et_postprocess(masks, 3, 'remove')
    relabelled = et_postprocess(masks, 3, 'relabel')
    assert removed['ET'].sum() == relabelled['ET'].sum() == 0
    np.testing.assert_array_equal(removed['TC'], core)
    np.testing.assert_array_equal(relabelled['TC'], core | et)  # relabelled to necrosis = joins the core
    np.testing.assert_array_equal(relabelled['WT'], whole)
    with pytest.raises(ValueError, match='mode'):
        et_postprocess(masks, 3, 'drop')
    with pytest.raises(ValueError, match='core'):
        et_postprocess({'ET': et}, 3, 'relabel')


def test_et_relabel_labelmap_uses_the_core_label_from_dataset_json():
    regions = dataset_regions(BRATS_JSON)
    seg = brats_like_prediction(5)
    out = et_relabel_labelmap(seg, regions, 10)
    assert (out == 3).sum() == 0
    assert (out == 2).sum() == (seg == 2).sum() + 5
    np.testing.assert_array_equal(et_relabel_labelmap(seg, regions, 5), seg)


def test_evaluate_case_with_et_postprocessing_scores_empty_et():
    regions = dataset_regions(BRATS_JSON)
    pred = brats_like_prediction(4)
    ref = pred.copy()
    ref[ref == 3] = 2  # reference has no ET: the small predicted ET is a false positive
    plain = evaluate_case(pred, ref, regions, (1, 1, 1))
    assert plain['ET']['Dice'] == 0.0 and plain['ET']['HD95'] == HD95_PENALTY_MM
    for mode in ('remove', 'relabel'):
        post = evaluate_case(pred, ref, regions, (1, 1, 1), et_min_voxels=10, et_mode=mode)
        assert post['ET'] == {'Dice': 1.0, 'HD95': 0.0}
        assert post['TC'] == plain['TC'] and post['WT'] == plain['WT']
