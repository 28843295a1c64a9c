from collections import Counter

import numpy as np
import pytest
import torch

from nnunet_missingmod.modalities import (all_subsets, case_availability, channel_order, detect_availability,
                                          draw_availability, mask_to_subset, modality_index, modality_names,
                                          parse_subset, resolve_availability, subset_name, subset_to_mask,
                                          zero_missing)

BRATS_JSON = {'channel_names': {'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'}}
NAMES = ['T1', 'T1ce', 'T2', 'FLAIR']


def test_modality_names_in_channel_order_and_v1_fallback():
    assert modality_names(BRATS_JSON) == NAMES
    assert modality_names({'modality': {'1': 'b', '0': 'a', '10': 'c'}}) == ['a', 'b', 'c']
    with pytest.raises(ValueError, match='channel_names'):
        modality_names({'labels': {}})


def test_modality_index_is_case_insensitive_and_rejects_unknown_names():
    assert modality_index(BRATS_JSON, 'flair') == 3
    with pytest.raises(ValueError, match="unknown modality 'PD'.*FLAIR"):
        modality_index(BRATS_JSON, 'PD')


def test_fifteen_subsets_in_paper_order():
    order = channel_order(NAMES, 'paper')
    subsets = all_subsets(4, order)
    names = [subset_name(s, NAMES, order) for s in subsets]
    assert len(subsets) == 15 == len(set(subsets))
    assert names[:4] == ['FLAIR', 'T1ce', 'T1', 'T2']
    assert names[4:10] == ['FLAIR+T1ce', 'FLAIR+T1', 'FLAIR+T2', 'T1ce+T1', 'T1ce+T2', 'T1+T2']
    assert names[-1] == 'FLAIR+T1ce+T1+T2'
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)
    assert all(list(s) == sorted(s) for s in subsets)


def test_t1_first_order_and_unknown_names_keep_dataset_order():
    assert [NAMES[c] for c in channel_order(NAMES, 't1_first')] == ['T1', 'T1ce', 'T2', 'FLAIR']
    assert channel_order(['CT', 'PET'], 'paper') == [0, 1]
    assert len(all_subsets(2)) == 3 and len(all_subsets(5)) == 31
    with pytest.raises(ValueError):
        channel_order(NAMES, 'alphabetical')


def test_subset_names_round_trip_and_masks():
    for subset in all_subsets(4):
        assert parse_subset(subset_name(subset, NAMES), NAMES) == subset
        assert mask_to_subset(subset_to_mask(subset, 4)) == subset
    assert parse_subset('flair, t1ce', NAMES) == (1, 3)
    with pytest.raises(ValueError, match='PD'):
        parse_subset('FLAIR+PD', NAMES)


def test_detect_availability_per_sample_and_all_zero_patch_is_fully_available():
    x = torch.zeros(3, 4, 5, 5, 5)
    x[0, 1, 2, 2, 2] = -0.3
    x[1] = 1.0
    expected = torch.tensor([[False, True, False, False], [True] * 4, [True] * 4])
    assert torch.equal(detect_availability(x), expected)


def test_resolve_availability_validates_given_masks():
    x = torch.ones(2, 4, 3, 3, 3)
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(resolve_availability(x, mask), mask)
    with pytest.raises(ValueError, match='shape'):
        resolve_availability(x, mask[:, :3])
    with pytest.raises(ValueError, match='no modality'):
        resolve_availability(x, torch.zeros(2, 4, dtype=torch.bool))


def test_zero_missing_zeroes_exactly_the_missing_channels():
    x = torch.randn(2, 4, 3, 3, 3)
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    y = zero_missing(x, mask)
    assert torch.equal(y[0, 1], torch.zeros(3, 3, 3)) and torch.equal(y[1, 0], torch.zeros(3, 3, 3))
    assert torch.equal(y[0, 0], x[0, 0]) and torch.equal(y[1, 3], x[1, 3])
    assert (case_availability(y[0]) == np.array([True, False, False, True])).all()
    assert (case_availability(y[1].numpy()) == np.array([False, True, True, True])).all()


def test_dropout_is_uniform_over_the_fifteen_subsets():
    rng = np.random.default_rng(0)
    n = 30000
    counts = Counter(mask_to_subset(draw_availability(np.ones(4, bool), rng)) for _ in range(n))
    assert set(counts) == set(all_subsets(4))
    expected = n / 15
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 36.1  # 14 degrees of freedom, p = 0.001


def test_dropout_respects_present_channels_and_full_set_probability():
    rng = np.random.default_rng(1)
    present = np.array([True, False, True, True])
    draws = [draw_availability(present, rng) for _ in range(3000)]
    assert all(d.any() and not (d & ~present).any() for d in draws)
    assert len({mask_to_subset(d) for d in draws}) == 7
    assert all((draw_availability(present, rng, full_set_probability=1.0) == present).all() for _ in range(100))
    share = np.mean([(draw_availability(present, rng, 0.5) == present).all() for _ in range(4000)])
    assert abs(share - (0.5 + 0.5 / 7)) < 0.03
    with pytest.raises(ValueError, match='no modality'):
        draw_availability(np.zeros(4, bool), rng)
