"""Unit tests of the CIML network, its CIG module, task maps and losses (small tensors, CPU)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from nnunet_missingmod.modalities import all_subsets, subset_to_mask
from nnunet_missingmod.methods.ciml.losses import SegmentorRegionLoss
from nnunet_missingmod.losses.gaussian import reparameterised_sample_with_kl
from nnunet_missingmod.methods.ciml.gates import CIGModule
from nnunet_missingmod.methods.ciml.network import BRATS_TASK_MAP, CIMLNetwork, check_task_map, resolve_task_map
from nnunet_missingmod.networks.plans import PlansArchitecture
from nnunet_missingmod.regions import region_names

ARCH = 'dynamic_network_architectures.architectures.unet.PlainConvUNet'
REQ = ['conv_op', 'norm_op', 'dropout_op', 'nonlin']
ARCH_KWARGS = dict(n_stages=3, features_per_stage=[8, 16, 32], conv_op='torch.nn.modules.conv.Conv3d',
                   kernel_sizes=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                   n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1], conv_bias=True,
                   norm_op='torch.nn.modules.instancenorm.InstanceNorm3d',
                   norm_op_kwargs={'eps': 1e-5, 'affine': True}, dropout_op=None, dropout_op_kwargs=None,
                   nonlin='torch.nn.LeakyReLU', nonlin_kwargs={'inplace': True})
BRATS_JSON = {'channel_names': {'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'},
              'labels': {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': 3},
              'regions_class_order': [1, 2, 3]}
#: the default map in BRATS_JSON channel order (T1, T1ce, T2, FLAIR) and region order (WT, TC, ET)
BRATS_INDEX_MAP = [[1], [1, 2], [0, 1], [0]]
PATCH = 8


PLANS = PlansArchitecture(ARCH, ARCH_KWARGS, tuple(REQ))


def make_network(fusion='attention_vi', deep_supervision=True, task_map=BRATS_INDEX_MAP, width=0.5, seed=0):
    torch.manual_seed(seed)
    return CIMLNetwork.from_plans(PLANS, 4, 3, width_factor=width, deep_supervision=deep_supervision,
                                  task_map=task_map, message_fusion=fusion)


def all_subset_masks() -> torch.Tensor:
    return torch.from_numpy(np.stack([subset_to_mask(s, 4) for s in all_subsets(4)]))


# ------------------------------------------------------------------------------------------------ CIG
@pytest.mark.parametrize('fusion', ['plain', 'attention', 'vi', 'attention_vi'])
def test_cig_output_shapes(fusion):
    torch.manual_seed(0)
    cig = CIGModule(6, 3, torch.nn.Conv3d, [3, 3, 3], torch.nn.InstanceNorm3d, {'affine': True},
                    torch.nn.LeakyReLU, {}, fusion)
    local = torch.randn(2, 6, 4, 5, 6)
    messages = [torch.randn(2, 6, 4, 5, 6) for _ in range(3)]
    out = cig(local, messages, torch.ones(2, 3))
    assert out.shape == local.shape and torch.isfinite(out).all()
    if fusion != 'plain':
        assert cig.last['attention'].shape == (2, 3, 4, 5, 6)
        assert len(cig.last['representations']) == 3
        assert all(r.shape == (2, 6, 4, 5, 6) for r in cig.last['representations'])
    if 'vi' in fusion:
        assert cig.last['mu'].shape == cig.last['logvar'].shape == (2, 3, 6, 4, 5, 6)


def test_cig_kl_closed_form_nats_per_sample():
    cig = CIGModule(2, 2, torch.nn.Conv3d, [3, 3, 3], torch.nn.InstanceNorm3d, {'affine': True},
                    torch.nn.LeakyReLU, {}, 'attention_vi')
    # (B=2, K=2, C=2, 2, 2, 1): every (sample, message) holds the four values below in each of its 2 channels
    mu = torch.tensor([1.0, 0.0, -2.0, 0.5]).reshape(1, 1, 1, 2, 2, 1).expand(2, 2, 2, 2, 2, 1).contiguous()
    logvar = torch.tensor([0.0, math.log(2.0), 0.0, -1.0]).reshape(1, 1, 1, 2, 2, 1).expand(2, 2, 2, 2, 2, 1)
    _, kl = reparameterised_sample_with_kl(mu, logvar.contiguous(), torch.randn_like(mu), start_dim=2)
    cig.last = {'kl': kl}
    # per element 0.5 * (mu^2 + var - 1 - logvar), summed over 2 channels x 4 voxels x present messages
    four = 0.5 * 1 + 0.5 * (2 - 1 - math.log(2)) + 0.5 * 4 + 0.5 * (0.25 + math.exp(-1) - 1 + 1)
    full = cig.kl_per_sample(torch.ones(2, 2))
    assert full.dtype == torch.float32 and full.shape == (2,)
    assert full.tolist() == pytest.approx([4 * four, 4 * four], rel=1e-6)
    # masked messages do not count, even with huge values; nothing present -> exactly 0
    cig.last['kl'] = kl.clone()
    cig.last['kl'][0, 1] = 1e30
    assert cig.kl_per_sample(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).tolist() == pytest.approx([2 * four, 4 * four],
                                                                                                rel=1e-6)
    assert cig.kl_per_sample(torch.zeros(2, 2)).tolist() == [0.0, 0.0]
    # the gate's own training forward stores the KL of its messages; an inference forward stores none
    local, messages = torch.randn(2, 2, 4, 4, 4), [torch.randn(2, 2, 4, 4, 4) for _ in range(2)]
    cig.train()(local, messages, torch.ones(2, 2))
    assert cig.last['kl'].shape == (2, 2) and bool((cig.last['kl'] > 0).all())
    cig.eval()(local, messages, torch.ones(2, 2))
    with pytest.raises(RuntimeError, match='training forward'):
        cig.kl_per_sample(torch.ones(2, 2))


def test_network_kl_is_nats_per_sample_and_rescaled_per_output_element():
    net = make_network().train()
    x = torch.randn(3, 4, PATCH, PATCH, PATCH)
    availability = torch.tensor([[True, True, True, True], [True, False, True, False], [False, True, True, True]])
    _, losses, extras = net(x * availability[:, :, None, None, None], availability, full_output=True)
    nats, term = 0.0, 0.0
    for m, task in enumerate(BRATS_INDEX_MAP):
        others = [j for j in range(4) if j != m]
        per_sample = torch.zeros(3)
        for cig in net.cigs[m]:
            mu, logvar = cig.last['mu'].detach().double(), cig.last['logvar'].detach().double()
            element = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)                     # (B, K, C, ...)
            per_sample += (element.flatten(2).sum(-1) * availability[:, others]).sum(1).float()
        receivers = availability[:, m]
        kl_m = per_sample[receivers].mean()                                           # samples where m present
        nats += kl_m
        term += kl_m / (PATCH ** 3 * len(task))
    assert extras['kl_nats_per_sample'].item() == pytest.approx(float(nats), rel=1e-4)
    assert losses['kl'].item() == pytest.approx(float(term), rel=1e-4)
    assert extras['kl_nats_per_sample'].item() > 100 * losses['kl'].item()
    net.eval()
    with torch.no_grad():
        _, losses, extras = net(x, availability, full_output=True)
    assert 'kl' not in losses and 'kl_nats_per_sample' not in extras


def test_missing_messages_have_zero_attention_and_contribution():
    torch.manual_seed(0)
    cig = CIGModule(4, 3, torch.nn.Conv3d, [3, 3, 3], torch.nn.InstanceNorm3d, {'affine': True},
                    torch.nn.LeakyReLU, {}, 'attention_vi').train()
    local = torch.randn(2, 4, 4, 4, 4)
    messages = [torch.randn(2, 4, 4, 4, 4) for _ in range(3)]
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    cig(local, messages, mask)
    att, reps = cig.last['attention'], cig.last['representations']
    assert torch.count_nonzero(att[0, 1]) == 0 and torch.count_nonzero(att[1, :2]) == 0
    assert torch.count_nonzero(reps[1][0]) == 0 and torch.count_nonzero(reps[0][1]) == 0
    assert torch.count_nonzero(reps[1][1]) == 0
    assert torch.count_nonzero(reps[0][0]) > 0 and torch.count_nonzero(att[0, 0]) > 0


@pytest.mark.parametrize('fusion', ['none', 'plain', 'attention', 'vi', 'attention_vi'])
def test_output_independent_of_missing_modality_input(fusion):
    net = make_network(fusion).eval()
    x = torch.randn(2, 4, PATCH, PATCH, PATCH)
    availability = torch.tensor([[True, False, True, False], [False, True, False, False]])
    changed = x.clone()
    changed[0, 1] = torch.randn(PATCH, PATCH, PATCH) * 5
    changed[0, 3] = 3.0
    changed[1, [0, 2, 3]] = torch.randn(3, PATCH, PATCH, PATCH)
    with torch.no_grad():
        a, losses_a, extras_a = net(x, availability, full_output=True)
        b, losses_b, extras_b = net(changed, availability, full_output=True)
    for ya, yb in zip(a, b):
        assert torch.equal(ya, yb)
    # and the present modalities do matter
    changed[0, 0] += 1.0
    with torch.no_grad():
        c = net(changed, availability)
    assert not torch.equal(a[0], c[0])


# ------------------------------------------------------------------------------------------------ network
def test_every_region_predicted_under_all_subsets():
    net = make_network().eval()
    masks = all_subset_masks()
    x = torch.randn(len(masks), 4, PATCH, PATCH, PATCH) * masks[:, :, None, None, None]
    with torch.no_grad():
        seg, losses, extras = net(x, masks, full_output=True)
    assert len(seg) == 2
    assert seg[0].shape == (15, 3, PATCH, PATCH, PATCH) and seg[1].shape == (15, 3, PATCH // 2, PATCH // 2,
                                                                            PATCH // 2)
    assert all(torch.isfinite(s).all() for s in seg)
    weights = extras['combination_weights']
    assert torch.allclose(weights.sum(1), torch.ones(15, 3))
    assert torch.count_nonzero(weights * ~masks[:, :, None]) == 0       # missing segmentors never count
    primary = torch.tensor([[0, 1, 0], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    for b, mask in enumerate(masks):
        for r in range(3):
            owners = mask & primary[:, r]
            expected = owners if owners.any() else mask                 # fallback: all available segmentors
            assert torch.allclose(weights[b, :, r], expected.float() / expected.sum())
    # the fused output is the weighted average of the segmentor logits
    outs = torch.stack([o[0] for o in extras['segmentor_outputs']], 1)
    assert torch.allclose(seg[0], (outs * weights[..., None, None, None]).sum(1), atol=1e-6)
    # T1 alone: WT from T1's fallback head, TC from T1's primary head
    t1_only = all_subsets(4).index((0,))
    assert torch.equal(seg[0][t1_only], outs[t1_only, 0])


def test_deterministic_inference_and_no_deep_supervision():
    net = make_network(deep_supervision=False).eval()
    x = torch.randn(2, 4, PATCH, PATCH, PATCH)
    x[1, 2] = 0
    with torch.no_grad():
        a, b = net(x), net(x)
    assert isinstance(a, torch.Tensor) and a.shape == (2, 3, PATCH, PATCH, PATCH)
    assert torch.equal(a, b)
    net.set_deep_supervision_enabled(True)
    with torch.no_grad():
        ds = net(x)
    assert isinstance(ds, list) and torch.equal(ds[0], a)


def test_training_mode_samples_and_every_parameter_gets_a_gradient():
    net = make_network().train()
    x = torch.randn(2, 4, PATCH, PATCH, PATCH)
    availability = torch.tensor([[True, False, False, False], [False, False, True, True]])
    seg, losses, extras = net(x * availability[:, :, None, None, None], availability, full_output=True)
    assert losses['kl'].ndim == 0 and losses['kl'].item() > 0
    seg2 = net(x * availability[:, :, None, None, None], availability)
    assert not torch.equal(seg[0], seg2[0])                              # reparameterised sampling
    loss = sum(o.sum() for outs in extras['segmentor_outputs'] for o in outs) + losses['kl']
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_width_factor_scales_segmentors():
    net = make_network(width=0.5)
    # [8, 16, 32] x 0.5, no stage narrower than min(plans width, 8) (issue #18)
    assert [s.encoder.output_channels for s in net.segmentors] == [[8, 8, 16]] * 4
    assert make_network(width=1.0).segmentors[0].encoder.output_channels == [8, 16, 32]
    assert len(net.cigs) == 4 and len(net.cigs[0]) == 2
    assert len(make_network(fusion='none').cigs) == 0


# ------------------------------------------------------------------------------------------------ task maps
def test_default_task_map_resolves_brats_names():
    assert region_names(BRATS_JSON) == ['WT', 'TC', 'ET']
    assert resolve_task_map(None, BRATS_JSON) == BRATS_INDEX_MAP
    assert resolve_task_map(BRATS_TASK_MAP, BRATS_JSON) == BRATS_INDEX_MAP
    own_names = {'flair': ['Whole Tumor'], 't1ce': ['enhancing tumor', 'tumor core']}
    assert resolve_task_map(own_names, BRATS_JSON) == [[], [1, 2], [], [0]]


def test_all_to_all_task_map_is_asked_for_by_name():
    """A data set without BraTS's names gets every region from every segmentor when asked with 'all' (the default
    map on it is an error: tests/methods/ciml/test_ciml_mechanism.py)."""
    other = {'channel_names': {'0': 'CT', '1': 'PET'}, 'labels': {'background': 0, 'lesion': [1], 'core': 2},
             'regions_class_order': [1, 2]}
    assert resolve_task_map('all', other) == [[0, 1], [0, 1]]


@pytest.mark.parametrize('task_map, message', [
    ({'FLAIR': ['WT'], 'T3': ['TC', 'ET']}, "unknown modality 'T3'"),
    ({'FLAIR': ['WT'], 'T1ce': ['TC', 'necrosis']}, "unknown region 'necrosis'"),
    ({'FLAIR': ['WT'], 'T1ce': ['TC']}, r"regions \['ET'\] without a segmentor"),
])
def test_task_map_validation_errors(task_map, message):
    with pytest.raises(ValueError, match=message):
        resolve_task_map(task_map, BRATS_JSON)


def test_index_task_map_checks():
    with pytest.raises(ValueError, match='each of the 4'):
        check_task_map([[0], [1]], 4, 3)
    with pytest.raises(ValueError, match='outside'):
        check_task_map([[0], [1], [2], [3]], 4, 3)
    with pytest.raises(ValueError, match='without a segmentor'):
        CIMLNetwork.from_plans(PLANS, 4, 3, width_factor=1.0, task_map=[[0], [0], [1], []])


# ------------------------------------------------------------------------------------------------ losses
def _nnunet_region_loss(batch_dice: bool, ignore: bool = False):
    """nnU-Net's region loss exactly as nnUNetTrainer._build_loss builds it (no DDP)."""
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    return DC_and_BCE_loss({}, {'batch_dice': batch_dice, 'do_bg': True, 'smooth': 1e-5, 'ddp': False},
                           use_ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss)


def _loss_batch(seed=0, batch=3, ignore=False):
    torch.manual_seed(seed)
    outputs = [torch.randn(batch, 3, 6, 6, 6, requires_grad=True), torch.randn(batch, 3, 3, 3, 3, requires_grad=True)]
    targets = [(torch.rand(batch, 3 + ignore, 6, 6, 6) > 0.6).float(),
               (torch.rand(batch, 3 + ignore, 3, 3, 3) > 0.6).float()]
    return outputs, targets


@pytest.mark.parametrize('batch_dice', [True, False])
@pytest.mark.parametrize('regions', [[1, 2], [0], [0, 2], [2, 0]])
def test_segmentor_loss_equals_nnunet_loss_on_the_sub_batch(batch_dice, regions):
    outputs, targets = _loss_batch()
    weights = [2 / 3, 1 / 3]
    loss = SegmentorRegionLoss(batch_dice=batch_dice, ddp=False, deep_supervision_weights=weights)
    present = torch.tensor([True, False, True])
    masked = loss(outputs, targets, regions, present)
    reference = _nnunet_region_loss(batch_dice)       # independent: nnU-Net's loss called on the true sub-batch
    expected = sum(w * reference(o[present][:, regions], t[present][:, regions])
                   for w, o, t in zip(weights, outputs, targets))
    assert masked.item() == pytest.approx(expected.item(), rel=1e-5)
    grads = torch.autograd.grad(masked, outputs)
    expected_grads = torch.autograd.grad(expected, outputs)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, atol=1e-7)
    assert torch.count_nonzero(grads[0][1]) == 0                          # masked sample
    others = [r for r in range(3) if r not in regions]
    assert torch.count_nonzero(grads[0][:, others]) == 0                  # regions outside the task
    assert torch.count_nonzero(grads[0][0, regions]) > 0
    # every sample present: nnU-Net's loss of the whole batch
    full = loss(outputs, targets, regions, torch.ones(3, dtype=torch.bool))
    assert full.item() == pytest.approx(sum(w * reference(o[:, regions], t[:, regions]) for w, o, t in
                                            zip(weights, outputs, targets)).item(), rel=1e-5)


@pytest.mark.parametrize('batch_dice', [True, False])
def test_segmentor_loss_with_ignore_label_equals_nnunet_loss_on_the_sub_batch(batch_dice):
    outputs, targets = _loss_batch(seed=1, ignore=True)                  # last target channel: ignore
    loss = SegmentorRegionLoss(batch_dice=batch_dice, ddp=False, deep_supervision_weights=[1.0, 0.5],
                               has_ignore_label=True)
    present = torch.tensor([False, True, True])
    masked = loss(outputs, targets, [0, 2], present)
    reference = _nnunet_region_loss(batch_dice, ignore=True)
    expected = sum(w * reference(o[present][:, [0, 2]], t[present][:, [0, 2, 3]])
                   for w, o, t in zip([1.0, 0.5], outputs, targets))
    assert masked.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize('batch_dice', [True, False])
def test_segmentor_loss_of_an_empty_sub_batch_is_zero_with_zero_gradient(batch_dice):
    outputs, targets = _loss_batch()
    loss = SegmentorRegionLoss(batch_dice=batch_dice, ddp=False, deep_supervision_weights=[2 / 3, 1 / 3])
    value = loss(outputs, targets, [0, 1], torch.zeros(3, dtype=torch.bool))
    assert value.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in torch.autograd.grad(value, outputs))


@pytest.mark.parametrize('batch_dice', [True, False])
def test_segmentor_loss_gradient_of_a_masked_sample_stays_finite_in_float16(batch_dice):
    """A masked sample's Dice has derivative -1/smooth with respect to its (zero) sums: in float16 at the gradient
    scaler's 2^16 that is inf, and inf times the mask's 0 NaN (every CIML step with a missing modality was skipped
    under a GPU's autocast). The loss's gradient stays finite, the masked sample's is exactly 0, the value is the
    float32 one."""
    outputs, targets = _loss_batch()
    loss = SegmentorRegionLoss(batch_dice=batch_dice, ddp=False, deep_supervision_weights=[2 / 3, 1 / 3])
    present = torch.tensor([True, False, True])
    reference = loss(outputs, targets, [0, 1, 2], present)
    half = [o.detach().half().requires_grad_() for o in outputs]
    with torch.autocast('cpu', dtype=torch.float16):
        value = loss(half, targets, [0, 1, 2], present)
    grads = torch.autograd.grad(2.0 ** 16 * value, half)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(torch.count_nonzero(g[1]) == 0 for g in grads) and torch.count_nonzero(grads[0][0]) > 0
    assert value.item() == pytest.approx(reference.item(), rel=1e-3)


def test_network_gradients_with_missing_modalities_stay_finite_under_float16_autocast():
    """The whole network under float16 autocast (nnU-Net's GPU training, here on the CPU), each segmentor's loss
    masked to the samples that have its modality, scaled by the gradient scaler's initial 2^16: every parameter's
    gradient is finite."""
    net = make_network().train()
    x = torch.randn(2, 4, 16, 16, 16)
    availability = torch.tensor([[True, False, False, False], [False, True, True, True]])
    loss = SegmentorRegionLoss(batch_dice=False, ddp=False, deep_supervision_weights=[2 / 3, 1 / 3, 0.0])
    with torch.autocast('cpu', dtype=torch.float16):
        _, losses, extras = net(x * availability[:, :, None, None, None], availability, full_output=True)
        outputs = extras['segmentor_outputs']
        assert outputs[0][0].dtype == torch.float16                       # the autocast precision reached them
        targets = [(torch.rand(o.shape) > 0.7).float() for o in outputs[0]]
        total = losses['kl'] + sum(loss(outputs[m], targets, [0, 1, 2], availability[:, m]) for m in range(4))
    (2.0 ** 16 * total).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# ------------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, world: int, port: int, results):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        net = torch.nn.parallel.DistributedDataParallel(make_network(), find_unused_parameters=False)
        masks = [torch.tensor([[True, False, False, False], [False, False, False, True]]),
                 torch.tensor([[False, True, True, False], [True, True, True, True]])][rank]
        for step in range(2):
            torch.manual_seed(10 * rank + step)
            x = torch.randn(2, 4, PATCH, PATCH, PATCH) * masks[:, :, None, None, None]
            net.zero_grad()
            seg, losses, extras = net(x, masks, full_output=True)
            # every deep-supervision level counts, as in nnU-Net's DDP loss (lowest weight 1e-6, not 0)
            loss = sum(o.square().mean() for outs in extras['segmentor_outputs'] for o in outs) + 0.5 * losses['kl']
            loss.backward()
        grads = torch.cat([p.grad.flatten() for p in net.parameters()])
        results[rank] = (all(p.grad is not None for p in net.parameters()), grads)
    finally:
        dist.destroy_process_group()


def _ddp_loss_worker(rank: int, world: int, port: int, results):
    import datetime
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        outputs, targets = _loss_batch(seed=0, batch=2)
        outputs = [o[rank:rank + 1].detach().clone().requires_grad_() for o in outputs]     # one sample per rank
        targets = [t[rank:rank + 1] for t in targets]
        present = torch.tensor([[True], [False]])[rank]                   # rank 1: empty sub-batch
        loss = SegmentorRegionLoss(batch_dice=True, ddp=True, deep_supervision_weights=[2 / 3, 1 / 3])
        value = loss(outputs, targets, [1, 2], present)
        grads = torch.autograd.grad(value, outputs)
        results[rank] = (value.item(), float(sum(g.abs().sum() for g in grads)))
    finally:
        dist.destroy_process_group()


def test_ddp_batch_dice_loss_with_an_empty_sub_batch_on_one_rank():
    results = mp.Manager().dict()
    mp.spawn(_ddp_loss_worker, args=(2, free_port(), results), nprocs=2, join=True)
    outputs, targets = _loss_batch(seed=0, batch=2)
    reference = _nnunet_region_loss(True)
    # the global sub-batch is rank 0's sample: rank 0 gets its full loss, rank 1 only its (global) Dice part
    expected = sum(w * reference(o[:1, [1, 2]], t[:1, [1, 2]]) for w, o, t in zip([2 / 3, 1 / 3], outputs, targets))
    dice = sum(w * reference.dc(o[:1, [1, 2]], t[:1, [1, 2]]) for w, o, t in zip([2 / 3, 1 / 3], outputs, targets))
    assert results[0][0] == pytest.approx(expected.item(), rel=1e-5)
    assert results[1][0] == pytest.approx(dice.item(), rel=1e-5)
    assert results[0][1] > 0 and results[1][1] == 0.0


def test_ddp_different_masks_per_rank_find_unused_parameters_false():
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, free_port(), results), nprocs=2, join=True)
    assert results[0][0] and results[1][0]
    assert torch.allclose(results[0][1], results[1][1])                   # all-reduced gradients agree
    assert torch.count_nonzero(results[0][1]) > 0


# ------------------------------------------------------------------------------------------------ Grad-CAM
def test_complementary_information_weights_follow_eq16():
    from nnunet_missingmod.methods.ciml.gradcam import complementary_information
    net = make_network()
    x = torch.randn(1, 4, PATCH, PATCH, PATCH)
    availability = torch.tensor([[True, True, False, True]])
    x = x * availability[:, :, None, None, None]
    names = ['T1', 'T1ce', 'T2', 'FLAIR']
    pairs = complementary_information(net, x, availability, ['WT', 'TC', 'ET'], names)
    assert [(p['primary'], p['region']) for p in pairs] == [('T1', 'TC'), ('T1ce', 'TC'), ('T1ce', 'ET'),
                                                            ('FLAIR', 'WT')]   # T2 missing: no T2 pairs
    for p in pairs:
        assert set(p['weights']) == set(names) - {p['primary']}
        sums = {n: float(h.sum()) for n, h in p['heatmaps'].items()}
        assert all(h.shape == (PATCH // 2,) * 3 and (h >= 0).all() for h in p['heatmaps'].values())
        assert sums['T2'] == 0.0 and p['weights']['T2'] == 0.0       # missing auxiliary: no information
        total = sum(sums.values())
        if total > 0:
            assert sum(p['weights'].values()) == pytest.approx(1.0)
            assert all(p['weights'][n] == pytest.approx(s / total) for n, s in sums.items())
    assert any(sum(p['weights'].values()) > 0 for p in pairs)


# ------------------------------------------------------------------------------------------------ trainer class
def test_build_network_architecture_reads_task_map_from_configuration():
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    from nnunet_missingmod.networks.plans import scale_widths
    from nnunet_missingmod.methods.ciml.trainers import (nnUNetTrainerCIML, nnUNetTrainerCIML_budget,
                                                         nnUNetTrainerCIML_Message, nnUNetTrainerCIML_NoMessage,
                                                         nnUNetTrainerCIML_paper)
    config = {'architecture': {'network_class_name': ARCH, 'arch_kwargs': ARCH_KWARGS, '_kw_requires_import': REQ},
              'patch_size': [PATCH] * 3, 'ciml_task_map': BRATS_INDEX_MAP}
    net = nnUNetTrainerCIML.build_network_architecture(None, ConfigurationManager(config), 4, 3, False)
    assert isinstance(net, CIMLNetwork) and net.task_map == BRATS_INDEX_MAP and net.message_fusion == 'attention_vi'
    assert net.fallback is True
    paper = nnUNetTrainerCIML_paper.build_network_architecture(None, ConfigurationManager(config), 4, 3, False)
    assert paper.fallback is False and paper.message_fusion == 'attention_vi'
    assert net.segmentors[0].encoder.output_channels == [8, 8, 8]          # 0.25 x [8, 16, 32], floor 8
    assert nnUNetTrainerCIML_NoMessage.build_network_architecture(None, ConfigurationManager(config), 4, 3,
                                                                  False).message_fusion == 'none'
    assert nnUNetTrainerCIML_Message.build_network_architecture(None, ConfigurationManager(config), 4, 3,
                                                                False).message_fusion == 'plain'
    budget = nnUNetTrainerCIML_budget.build_network_architecture(None, ConfigurationManager(config), 4, 3, False)
    assert budget.segmentors[0].encoder.output_channels == scale_widths(ARCH_KWARGS['features_per_stage'], 0.1875)
    del config['ciml_task_map']
    with pytest.raises(ValueError, match='ciml_task_map'):
        nnUNetTrainerCIML.build_network_architecture(None, ConfigurationManager(config), 4, 3, False)


def test_gradcam_patch_crop_is_centred_and_zero_padded():
    from nnunet_missingmod.methods.ciml.gradcam import _crop
    data = np.zeros((2, 10, 12, 6), dtype=np.float32)
    data[:, 2:6, 3:9, 1:5] = 1.0
    patch, start = _crop(data, (4, 8, 8), None)
    assert patch.shape == (2, 4, 8, 8) and start == [1, 1, -2]          # bounding-box centre (3, 5, 2)
    assert np.array_equal(patch[:, :, :, :2], np.zeros((2, 4, 8, 2)))   # padded beyond the border
    assert np.array_equal(patch[0, 1:4, 2:8, 3:7], np.ones((3, 6, 4)))     # z 2..4 of 2..5 fit
    assert patch.sum() == 2 * 3 * 6 * 4
    with pytest.raises(ValueError, match='3 coordinates'):
        _crop(data, (4, 8, 8), [1, 2])


@pytest.mark.parametrize('regions', [[1, 2], [0, 2]])
def test_segmentor_loss_has_no_host_synchronising_ops(regions):
    """No advanced indexing (on a GPU a Python-list index is copied from the host), no nonzero/item: the loss of a
    training step never waits for the GPU."""
    from torch.profiler import ProfilerActivity, profile
    outputs, targets = _loss_batch()
    loss = SegmentorRegionLoss(batch_dice=False, ddp=False, deep_supervision_weights=[2 / 3, 1 / 3])
    present = torch.tensor([True, False, True])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss(outputs, targets, regions, present).backward()
    ops = {e.key for e in prof.key_averages()}
    assert not ops & {'aten::index', 'aten::nonzero', 'aten::item', 'aten::_local_scalar_dense', 'aten::is_nonzero'}
    assert 'aten::binary_cross_entropy_with_logits' in ops  # the profile did see the loss


def test_residual_encoder_segmentors_run_one_after_the_other():
    """nnU-Net's ResEnc plans: the segmentors' encoders cannot be grouped, CIML runs them one segmentor after the
    other and still gives every segmentor's logits and gradients into every present segmentor's encoder."""
    kwargs = {k: v for k, v in ARCH_KWARGS.items() if k != 'n_conv_per_stage'}
    kwargs['n_blocks_per_stage'] = [1, 1, 1]
    arch = PlansArchitecture('dynamic_network_architectures.architectures.unet.ResidualEncoderUNet', kwargs,
                             tuple(REQ))
    torch.manual_seed(0)
    net = CIMLNetwork.from_plans(arch, 4, 3, width_factor=0.5, deep_supervision=True, task_map=BRATS_INDEX_MAP)
    assert type(net.segmentors[0].encoder).__name__ == 'ResidualEncoder'
    availability = torch.tensor([[True, True, False, True], [False, True, True, True]])
    seg, losses, extras = net(torch.randn(2, 4, PATCH, PATCH, PATCH), availability, full_output=True)
    assert [tuple(s.shape) for s in seg] == [(2, 3, 8, 8, 8), (2, 3, 4, 4, 4)]
    assert len(extras['segmentor_outputs']) == 4 and extras['segmentor_outputs'][2][0].shape == (2, 3, 8, 8, 8)
    (sum(s.square().mean() for s in seg) + losses['kl']).backward()
    for m in range(4):
        grad = net.segmentors[m].encoder.stem.convs[0].conv.weight.grad
        assert grad is not None and grad.abs().sum() > 0
