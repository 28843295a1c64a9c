"""CIML trainers' loss terms and gradients on one batch (CPU, initialized trainers from ``conftest.small_plans``).

* every ablation / option trainer's loss gradient differs from ``nnUNetTrainerCIML``'s on the same batch, by a
  clear margin, while a second copy of the default gives ~0 (so the check can tell "the same model");
* message passing carries gradients into the other present segmentors' encoders, never into missing ones;
* the trainer's terms follow the base trainer's one rule, with the weights and units the docstrings state.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import copy_matching_weights, loss_gradients, make_trainer, relative_gradient_difference, \
    small_plans
from nnunet_missingmod.methods.ciml.network import ABSENT_LOGIT
from nnunet_missingmod.methods.ciml import trainers as ct

PATCH = 16
#: ``||g_variant - g_default|| / ||g_default||`` must exceed this. Measured (CPU, widths floored at 8): NoMessage
#: 0.80, Message 0.79, MessageAttention 0.83, MessageVI 0.53, TaskMap1 0.92, TaskMap2 0.66, TaskMap3 0.73,
#: TaskMap4 0.33, paper 0.090 (only the fallback loss, weight 0.1, is gone), budget 0.93 (plans 8-64)
MARGIN = 0.05
#: a second copy of the default must stay below this
SAME = 1e-5

#: ``_budget`` is tested on wider plans (below): on ``small_plans()`` (4, 8, 16) its 3/16 widths floor to the
#: default's (4, 8, 8), so the two networks are the same there
VARIANTS = ['nnUNetTrainerCIML_NoMessage', 'nnUNetTrainerCIML_Message', 'nnUNetTrainerCIML_MessageAttention',
            'nnUNetTrainerCIML_MessageVI', 'nnUNetTrainerCIML_TaskMap1', 'nnUNetTrainerCIML_TaskMap2',
            'nnUNetTrainerCIML_TaskMap3', 'nnUNetTrainerCIML_TaskMap4', 'nnUNetTrainerCIML_paper']


def batch(seed: int = 0, levels: int = 2):
    """Data, deep-supervision targets (one per decoder output: 2 for the 3-stage small plans) and availability."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(2, 4, PATCH, PATCH, PATCH, generator=g)
    target = [(torch.rand(2, 3, PATCH // 2 ** i, PATCH // 2 ** i, PATCH // 2 ** i, generator=g) > 0.5).float()
              for i in range(levels)]
    availability = torch.tensor([[True, True, True, True], [True, False, True, True]])   # T1ce missing in sample 1
    return data * availability[:, :, None, None, None], target, availability


@pytest.fixture(scope='module')
def default(tmp_path_factory):
    trainer = make_trainer(ct.nnUNetTrainerCIML, tmp_path_factory.mktemp('ciml_default'))
    data, target, availability = batch()
    return trainer, loss_gradients(trainer, data, target, availability)


def test_a_second_copy_of_the_default_gives_the_same_gradient(default, tmp_path):
    trainer, reference = default
    twin = make_trainer(ct.nnUNetTrainerCIML, tmp_path, seed=1)         # other initial weights, then copied
    shared = copy_matching_weights(trainer.network, twin.network)
    assert shared == {n for n, _ in trainer.network.named_parameters()}
    data, target, availability = batch()
    diff = relative_gradient_difference(loss_gradients(twin, data, target, availability), reference, shared)
    print(f'default vs copy: {diff:.2e}')
    assert diff < SAME
    # and another noise draw is already visible, so the check is sharp
    other_noise = relative_gradient_difference(loss_gradients(twin, data, target, availability, seed=1), reference, shared)
    assert other_noise > 10 * SAME


@pytest.mark.parametrize('name', VARIANTS)
def test_variant_gradient_differs_from_the_default(name, default, tmp_path):
    trainer, reference = default
    variant = make_trainer(getattr(ct, name), tmp_path)
    shared = copy_matching_weights(trainer.network, variant.network)
    shared = {n for n in shared if n in reference}
    assert shared, f'{name} shares no parameter with nnUNetTrainerCIML'
    data, target, availability = batch()
    diff = relative_gradient_difference(loss_gradients(variant, data, target, availability), reference, shared)
    print(f'{name}: relative gradient difference {diff:.3f} over {len(shared)} shared parameters')
    assert diff > MARGIN


def test_budget_gradient_differs_from_the_default_where_its_widths_differ(tmp_path):
    plans = small_plans((8, 16, 32, 64))                      # default (8, 8, 8, 16), budget (8, 8, 8, 12)
    default = make_trainer(ct.nnUNetTrainerCIML, tmp_path / 'default', plans=plans)
    budget = make_trainer(ct.nnUNetTrainerCIML_budget, tmp_path / 'budget', plans=plans)
    assert budget.bare_network.segmentors[0].encoder.output_channels == [8, 8, 8, 12]
    shared = copy_matching_weights(default.network, budget.network)
    data, target, availability = batch(levels=3)
    reference = loss_gradients(default, data, target, availability)
    diff = relative_gradient_difference(loss_gradients(budget, data, target, availability), reference, shared)
    print(f'nnUNetTrainerCIML_budget (plans 8-64): relative gradient difference {diff:.3f} over {len(shared)} '
          f'shared parameters')
    assert diff > MARGIN
    # and on small_plans() the two are one network: same widths, same gradient
    same = make_trainer(ct.nnUNetTrainerCIML_budget, tmp_path / 'same')
    assert [s.encoder.output_channels for s in same.bare_network.segmentors] == [[4, 8, 8]] * 4


@pytest.mark.parametrize('name', ['nnUNetTrainerCIML_budget_NoMessage', 'nnUNetTrainerCIML_budget_MessageAttention',
                                  'nnUNetTrainerCIML_budget_DetachedMessage'])
def test_budget_ablation_keeps_the_budget_widths_and_changes_the_gradient(tmp_path, name):
    plans = small_plans((8, 16, 32, 64))
    budget = make_trainer(ct.nnUNetTrainerCIML_budget, tmp_path / 'budget', plans=plans)
    ablation = make_trainer(getattr(ct, name), tmp_path / 'ablation', plans=plans, seed=1)
    assert [s.encoder.output_channels for s in ablation.bare_network.segmentors] == [[8, 8, 8, 12]] * 4
    shared = copy_matching_weights(budget.network, ablation.network)
    data, target, availability = batch(levels=3)
    reference = loss_gradients(budget, data, target, availability)
    diff = relative_gradient_difference(loss_gradients(ablation, data, target, availability), reference, shared)
    print(f'{name} against _budget: relative gradient difference {diff:.3f}')
    assert diff > MARGIN


def test_width1_segmentors_have_the_plans_widths(tmp_path):
    plans = small_plans((8, 16, 32))
    wide = make_trainer(ct.nnUNetTrainerCIML_width1, tmp_path / 'wide', plans=plans)
    default = make_trainer(ct.nnUNetTrainerCIML, tmp_path / 'default', plans=plans)
    assert [s.encoder.output_channels for s in wide.bare_network.segmentors] == [[8, 16, 32]] * 4
    assert [s.encoder.output_channels for s in default.bare_network.segmentors] == [[8, 8, 8]] * 4


# ------------------------------------------------------------------------------------------------ message passing
def _segmentor_term_gradient_norms(trainer, term: str, availability) -> dict:
    """``{modality: ||d term / d encoder_m||}`` for one segmentor's loss term."""
    data, target, _ = batch()
    data = data * availability[:, :, None, None, None]
    torch.manual_seed(0)
    trainer.network.train()
    _, terms = trainer.forward_loss(data, target, availability)
    net = trainer.bare_network
    norms = {}
    for m, name in enumerate(trainer.modality_names):
        params = list(net.segmentors[m].encoder.parameters())
        grads = torch.autograd.grad(terms[term], params, retain_graph=True, allow_unused=True)
        norms[name] = float(sum(g.square().sum() for g in grads if g is not None)) ** 0.5
    return norms


def test_segmentor_loss_reaches_the_encoders_that_send_it_messages(default):
    trainer, _ = default
    # FLAIR missing in both samples; T1's loss reaches its own encoder and those of T1ce and T2 (messages)
    availability = torch.tensor([[True, True, True, False], [True, True, True, False]])
    norms = _segmentor_term_gradient_norms(trainer, 'seg_T1', availability)
    assert norms['T1'] > 0 and norms['T1ce'] > 0 and norms['T2'] > 0
    assert norms['FLAIR'] == 0.0                                          # a missing modality sends nothing


def test_without_messages_a_segmentor_loss_stays_in_its_own_segmentor(tmp_path):
    trainer = make_trainer(ct.nnUNetTrainerCIML_NoMessage, tmp_path)
    norms = _segmentor_term_gradient_norms(trainer, 'seg_T1', torch.ones(2, 4, dtype=torch.bool))
    assert norms['T1'] > 0
    assert norms['T1ce'] == norms['T2'] == norms['FLAIR'] == 0.0


def test_detached_messages_keep_the_output_and_each_loss_in_its_own_encoder(tmp_path):
    budget = make_trainer(ct.nnUNetTrainerCIML_budget, tmp_path / 'budget')
    detached = make_trainer(ct.nnUNetTrainerCIML_budget_DetachedMessage, tmp_path / 'detached', seed=1)
    assert copy_matching_weights(budget.network, detached.network) == {n for n, _ in budget.network.named_parameters()}
    data, _, availability = batch()
    for net in (budget.network, detached.network):
        net.eval()
    with torch.no_grad():                     # the same weights hear the same messages: the same prediction
        torch.testing.assert_close(detached.network(data, availability)[0], budget.network(data, availability)[0])
    everyone = torch.ones(2, 4, dtype=torch.bool)
    norms = _segmentor_term_gradient_norms(detached, 'seg_T1', everyone)
    assert norms['T1'] > 0
    assert norms['T1ce'] == norms['T2'] == norms['FLAIR'] == 0.0
    gates = detached.bare_network.cigs[detached.modality_names.index('T1')]
    data, target, _ = batch()
    detached.network.train()
    _, terms = detached.forward_loss(data, target, everyone)
    gate_grads = torch.autograd.grad(terms['seg_T1'], list(gates.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in gate_grads if g is not None) > 0     # the messages are still heard


# ------------------------------------------------------------------------------------------------ terms and weights
def test_terms_follow_the_one_rule_with_fallback_and_kl_weights(default):
    trainer, _ = default
    assert not hasattr(trainer, 'ciml_fallback_weight')
    assert trainer.aux_loss_weights['kl'] == 0.5 and trainer.aux_loss_weights['fallback'] == 0.1
    assert trainer.loss_term_units['kl_per_sample'] == 'nats/sample'
    data, target, availability = batch()
    torch.manual_seed(0)
    loss, terms = trainer.forward_loss(data, target, availability)
    assert set(terms) == {'seg_T1', 'seg_T1ce', 'seg_T2', 'seg_FLAIR', 'fallback', 'kl', 'kl_per_sample'}
    expected = sum(terms[f'seg_{m}'] for m in ('T1', 'T1ce', 'T2', 'FLAIR')) + 0.1 * terms['fallback'] + \
        0.5 * terms['kl']
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not terms['kl_per_sample'].requires_grad and terms['kl_per_sample'] > 100 * terms['kl']
    # each segmentor term is nnU-Net's loss of its sub-batch (T1ce is missing in sample 1)
    torch.manual_seed(0)                                                  # the same forward again
    output, losses, extras = trainer.network(data, availability, full_output=True)
    seg_t1ce = trainer.loss([o[:1, [1, 2]] for o in extras['segmentor_outputs'][1]], [t[:1, [1, 2]] for t in target])
    assert terms['seg_T1ce'].item() == pytest.approx(seg_t1ce.item(), rel=1e-5)
    shares = trainer.gradient_shares(terms)
    assert set(shares) == {'seg_T1', 'seg_T1ce', 'seg_T2', 'seg_FLAIR', 'fallback', 'kl'}
    print('gradient shares, first step of nnUNetTrainerCIML:', {k: round(v, 3) for k, v in shares.items()},
          f"kl {terms['kl'].item():.4f} nats/(voxel*region), {terms['kl_per_sample'].item():.1f} nats/sample")
    assert 0.01 < shares['kl'] < 0.9                                      # neither vanishing nor dominating


def test_paper_trainer_has_no_fallback_loss_and_predicts_uncovered_regions_absent(tmp_path):
    trainer = make_trainer(ct.nnUNetTrainerCIML_paper, tmp_path)
    assert trainer.modality_dropout is False and 'fallback' not in trainer.aux_loss_weights
    assert trainer.aux_loss_weights['kl'] == 0.5
    data, target, availability = batch()
    torch.manual_seed(0)
    loss, terms = trainer.forward_loss(data, target, availability)
    assert set(terms) == {'seg_T1', 'seg_T1ce', 'seg_T2', 'seg_FLAIR', 'kl', 'kl_per_sample'}
    assert loss.item() == pytest.approx(sum(terms[f'seg_{m}'] for m in ('T1', 'T1ce', 'T2', 'FLAIR')).item() +
                                        0.5 * terms['kl'].item(), rel=1e-6)
    # channels outside each segmentor's task get no gradient at all
    net = trainer.bare_network
    torch.manual_seed(0)
    loss, _ = trainer.forward_loss(data, target, availability)
    seg_layer = net.segmentors[3].decoder.seg_layers[-1]                 # FLAIR: task WT (channel 0) only
    grad = torch.autograd.grad(loss, seg_layer.weight)[0]
    assert torch.count_nonzero(grad[1:]) == 0 and torch.count_nonzero(grad[0]) > 0
    # ET is T1ce's only: without T1ce it is predicted absent; WT and TC still come from their segmentors
    net.eval()
    only = torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        seg = net(data[:1] * only[:, :, None, None, None], only)
    assert torch.all(seg[0][0, 2] == ABSENT_LOGIT)
    assert not torch.all(seg[0][0, :2] == ABSENT_LOGIT)


def test_default_trainer_keeps_fallback_heads_for_uncovered_regions(default):
    trainer, _ = default
    net = trainer.bare_network.eval()
    data, _, _ = batch()
    only = torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        seg, losses, extras = net(data[:1] * only[:, :, None, None, None], only, full_output=True)
    assert not torch.any(seg[0][0, 2] == ABSENT_LOGIT)
    assert torch.allclose(extras['combination_weights'][0, :, 2], torch.tensor([1 / 3, 0, 1 / 3, 1 / 3]))
    net.train()


def test_fallback_trainer_without_a_fallback_weight_is_an_error(tmp_path):
    class NoWeight(ct.nnUNetTrainerCIML):
        aux_loss_weights = {'kl': 0.5}
    with pytest.raises(KeyError, match='fallback'):
        make_trainer(NoWeight, tmp_path)


def test_batch_availability_of_the_paper_trainer_is_the_present_channels(tmp_path):
    trainer = make_trainer(ct.nnUNetTrainerCIML_paper, tmp_path)
    trainer._present_channels = {'a': np.array([True, True, False, True]), 'b': np.ones(4, dtype=bool)}
    for _ in range(5):
        assert trainer.draw_batch_availability(['a', 'b']).tolist() == [[True, True, False, True], [True] * 4]
