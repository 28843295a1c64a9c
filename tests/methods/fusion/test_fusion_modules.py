"""Multi-encoder fusion networks: SMSN re-ordering, shapes under every mask, masking, gradients, determinism, DDP."""
import functools
import itertools
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from conftest import free_port
from nnunet_missingmod.modalities import all_subsets, subset_to_mask
from nnunet_missingmod.networks.transformer import _num_heads
from nnunet_missingmod.methods.fusion.modules import AttentionFusion, ConcatFusion
from nnunet_missingmod.methods.smsn.fusion import SMSNFusion
from nnunet_missingmod.networks.masking import masked_mean
from nnunet_missingmod.networks.multi_encoder import MultiEncoderFusionUNet
from nnunet_missingmod.networks.plans import resolve_arch_kwargs, scale_widths

torch.set_num_threads(1)

PLANS_KWARGS = {
    "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
PATCH = (8, 8, 8)
FUSIONS = {'concat': ConcatFusion, 'attention': AttentionFusion, 'smsn': SMSNFusion}
BLOCK = {'conv_op': torch.nn.Conv3d}


def build(fusion='smsn', num_modalities=4, deep_supervision=True, seed=0, **fusion_kwargs):
    torch.manual_seed(seed)
    kwargs = resolve_arch_kwargs(PLANS_KWARGS, REQUIRES_IMPORT)
    factory = functools.partial(FUSIONS[fusion], **fusion_kwargs)
    return MultiEncoderFusionUNet(num_modalities, 3, kwargs, factory, 0.5, deep_supervision)


def masks_of(num_modalities):
    return [torch.from_numpy(subset_to_mask(s, num_modalities)) for s in all_subsets(num_modalities)]


# ------------------------------------------------------------------ SMSN re-ordering
def smsn_fusion(order_mode='random', m=4, **kw):
    return SMSNFusion(m, 8, BLOCK, [3, 3, 3], order_mode=order_mode, **kw)


def test_random_order_first_available_and_every_permutation_reachable():
    fusion = smsn_fusion().train()
    fusion.rng = np.random.default_rng(0)
    for mask in ([True] * 4, [False, True, False, True], [False, False, True, False]):
        availability = torch.tensor([mask] * 3000)
        order = fusion.draw_order(availability)
        first = order[:, 0]
        assert availability[torch.arange(3000), first].all()
        seen = {tuple(o) for o in order.tolist()}
        present = {i for i, a in enumerate(mask) if a}
        expected = {p for p in itertools.permutations(range(4)) if p[0] in present}
        assert seen == expected
        assert all(sorted(o) == [0, 1, 2, 3] for o in seen)


def test_random_only_reaches_missing_first():
    fusion = smsn_fusion('random_only').train()
    fusion.rng = np.random.default_rng(0)
    availability = torch.tensor([[False, True, False, False]] * 2000)
    seen = {tuple(o) for o in fusion.draw_order(availability).tolist()}
    assert seen == set(itertools.permutations(range(4)))


def test_fixed_none_and_eval_orders():
    availability = torch.tensor([[True, False, True, True], [False, True, False, False]])
    fixed = smsn_fusion('fixed')
    fixed.set_order([2, 1, 3, 0])                      # e.g. Table 8 "Fixed 2" on some channel layout
    for mode in (True, False):
        fixed.train(mode)
        assert fixed.draw_order(availability).tolist() == [[2, 1, 3, 0]] * 2
        assert smsn_fusion('none').train(mode).draw_order(availability).tolist() == [[0, 1, 2, 3]] * 2
    random = smsn_fusion('random').eval()
    assert random.draw_order(availability).tolist() == [[0, 2, 3, 1], [1, 0, 2, 3]]
    random.set_order([3, 2, 1, 0])
    assert random.draw_order(availability).tolist() == [[3, 2, 0, 1], [1, 3, 2, 0]]
    # Table 8 compares training-time orderings: "Random only" infers with the paper's present-first order
    random_only = smsn_fusion('random_only').eval()
    assert random_only.draw_order(availability).tolist() == [[0, 2, 3, 1], [1, 0, 2, 3]]
    random_only.set_order([3, 2, 1, 0])
    assert random_only.draw_order(availability).tolist() == [[3, 2, 0, 1], [1, 3, 2, 0]]
    with pytest.raises(ValueError, match='permutation'):
        fixed.set_order([0, 0, 1, 2])
    with pytest.raises(ValueError, match='order_mode'):
        smsn_fusion('sorted')
    with pytest.raises(ValueError, match='at least 2'):
        smsn_fusion(m=1)
    with pytest.raises(ValueError, match='use_specific'):
        smsn_fusion(use_specific=False)


def test_order_draws_come_from_the_numpy_generator():
    """Same generator state -> same orders (torch's global seed plays no part); other state -> other orders."""
    availability = torch.tensor([[True, False, True, True], [False, True, True, False]] * 8)
    for mode in ('random', 'random_only'):
        fusion = smsn_fusion(mode).train()
        assert isinstance(fusion.rng, np.random.Generator)
        draws = []
        for seed, torch_seed in ((0, 1), (0, 2), (1, 1)):
            fusion.rng = np.random.default_rng(seed)
            torch.manual_seed(torch_seed)
            draws.append(fusion.draw_order(availability).tolist())
        assert draws[0] == draws[1] and draws[0] != draws[2]


def test_fixed_order_is_saved_with_the_state_dict():
    fusion = smsn_fusion('fixed')
    fusion.set_order([3, 0, 2, 1])
    restored = smsn_fusion('fixed')
    restored.load_state_dict(fusion.state_dict())
    assert restored.order.tolist() == [3, 0, 2, 1]


def test_smsn_fusion_uses_the_drawn_order():
    """Stage I takes the first two modalities of the order, stage II the rest: swapping within either changes
    the fused features."""
    torch.manual_seed(0)
    fusion = smsn_fusion('fixed', use_reconstruction=False).eval()
    for head in (fusion.stage1, fusion.stage2):        # the heads start at the prior (mu = 0): give them weights
        torch.nn.init.normal_(head[-1].weight, std=0.3)
    features = torch.randn(1, 4, 8, 2, 2, 2)
    availability = torch.ones(1, 4, dtype=torch.bool)
    fusion.set_order([0, 1, 2, 3])
    a, *_ = fusion(features, availability)
    fusion.set_order([1, 0, 2, 3])
    b, *_ = fusion(features, availability)
    fusion.set_order([0, 1, 3, 2])
    c, *_ = fusion(features, availability)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_head_count_divides_width_and_keeps_heads_wide():
    assert [_num_heads(c, 8) for c in (160, 128, 64, 48, 16, 8)] == [8, 8, 4, 3, 1, 1]


def test_masked_mean_ignores_missing_entries():
    features = torch.arange(2 * 3 * 1 * 2, dtype=torch.float).reshape(2, 3, 1, 2)
    availability = torch.tensor([[True, False, True], [False, True, False]])
    out = masked_mean(features, availability)
    assert torch.equal(out[0], (features[0, 0] + features[0, 2]) / 2)
    assert torch.equal(out[1], features[1, 1])


# ------------------------------------------------------------------ the networks
def test_build_from_plans_widths():
    net = build('concat')
    assert scale_widths([8, 16, 32], 0.5) == [8, 8, 16]          # no stage narrower than min(plans width, 8)
    assert [s[0].output_channels for s in net.encoders[2].stages] == [8, 8, 16]
    assert len(net.encoders) == 4 and isinstance(net.encoders[0].stages[0][0].convs[0].norm, torch.nn.InstanceNorm3d)
    with pytest.raises(ImportError, match='cannot be imported'):
        resolve_arch_kwargs(dict(PLANS_KWARGS, conv_op='torch.nn.NoSuchConv'), REQUIRES_IMPORT)


@pytest.mark.parametrize('fusion', sorted(FUSIONS))
def test_every_mask_gives_finite_outputs_of_the_right_shapes(fusion):
    net = build(fusion).train()
    x = torch.randn(len(masks_of(4)), 4, *PATCH)
    availability = torch.stack(masks_of(4))
    seg, losses, extras = net(x * availability[:, :, None, None, None], availability, full_output=True)
    assert [tuple(s.shape) for s in seg] == [(15, 3, 8, 8, 8), (15, 3, 4, 4, 4)]
    assert all(torch.isfinite(s).all() for s in seg)
    assert set(losses) == ({'kl', 'recon', 'orth'} if fusion == 'smsn' else set())
    assert all(v.ndim == 0 and torch.isfinite(v) and v.item() >= 0 for v in losses.values())
    for mask in masks_of(4):                            # each mask alone as the whole batch
        seg = net(x[:1] * mask[None, :, None, None, None], mask[None])
        assert all(torch.isfinite(s).all() for s in seg) and seg[0].shape == (1, 3, 8, 8, 8)


@pytest.mark.parametrize('fusion', sorted(FUSIONS))
def test_missing_modality_contributes_nothing(fusion):
    """Whatever sits in a missing channel, the prediction is the same (its encoder output is multiplied by 0)."""
    net = build(fusion).eval()
    net.set_deep_supervision_enabled(False)
    x = torch.randn(2, 4, *PATCH)
    availability = torch.tensor([[True, False, True, False], [False, False, False, True]])
    with torch.no_grad():
        clean = net(x * availability[:, :, None, None, None], availability)
        noisy = net(x, availability)
        detected = net(x * availability[:, :, None, None, None])   # mask derived from the all-zero channels
    assert clean.shape == (2, 3, 8, 8, 8)
    assert torch.allclose(clean, noisy, atol=1e-6)
    assert torch.allclose(clean, detected, atol=1e-6)


@pytest.mark.parametrize('fusion', sorted(FUSIONS))
def test_eval_is_deterministic_and_returns_no_losses(fusion):
    net = build(fusion).eval()
    net.set_deep_supervision_enabled(False)
    x = torch.randn(3, 4, *PATCH)
    availability = torch.tensor([[True, True, False, True], [False, True, False, False], [True] * 4])
    x = x * availability[:, :, None, None, None]
    with torch.no_grad():
        first, losses, extras = net(x, availability, full_output=True)
        torch.manual_seed(123)
        second = net(x, availability)
    assert isinstance(first, torch.Tensor) and first.shape == (3, 3, 8, 8, 8)
    assert losses == {} and extras == {}
    assert torch.equal(first, second)


def test_smsn_training_is_stochastic():
    net = build('smsn').train()
    x = torch.randn(2, 4, *PATCH)
    availability = torch.ones(2, 4, dtype=torch.bool)
    a = net(x, availability)[0]
    b = net(x, availability)[0]
    assert not torch.allclose(a, b)


def _grad_norm(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters())


@pytest.mark.parametrize('fusion', sorted(FUSIONS))
def test_gradients_reach_only_the_parameters_that_should_get_them(fusion):
    net = build(fusion).train()
    availability = torch.tensor([[True, False, True, False], [True, False, False, False]])
    x = torch.randn(2, 4, *PATCH) * availability[:, :, None, None, None]
    seg, losses, extras = net(x, availability, full_output=True)
    (sum(s.square().mean() for s in seg) + sum(losses.values())).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert _grad_norm(net.encoders[1]) == 0.0 and _grad_norm(net.encoders[3]) == 0.0
    assert _grad_norm(net.encoders[0]) > 0 and _grad_norm(net.encoders[2]) > 0
    decoder_own = [p for n, p in net.decoder.named_parameters() if not n.startswith('encoder.')]
    assert sum(float(p.grad.abs().sum()) for p in decoder_own) > 0
    assert _grad_norm(net.fusion) > 0


def test_smsn_reconstruction_gets_no_gradient_from_missing_targets():
    """Fixed order (0, 1, 2, 3) with modalities 2 and 3 missing: the stage-II reconstruction decoder learns
    nothing, the stage-I one does."""
    net = build('smsn', order_mode='fixed', use_specific=False, use_orthogonality=False).train()
    availability = torch.tensor([[True, True, False, False]] * 2)
    x = torch.randn(2, 4, *PATCH) * availability[:, :, None, None, None]
    _, losses, extras = net(x, availability, full_output=True)
    losses['recon'].backward()
    assert _grad_norm(net.fusion.reconstruct2) == 0.0
    assert _grad_norm(net.fusion.reconstruct1) > 0


def test_smsn_ablation_switches():
    no_recon = build('smsn', use_reconstruction=False).train()
    no_specific = build('smsn', use_specific=False, use_orthogonality=False).train()
    no_orth = build('smsn', use_orthogonality=False).train()
    x = torch.randn(1, 4, *PATCH)
    availability = torch.ones(1, 4, dtype=torch.bool)
    assert set(no_recon(x, availability, full_output=True).losses) == {'kl', 'orth'}
    assert not hasattr(no_recon.fusion, 'reconstruct1')
    assert set(no_specific(x, availability, full_output=True).losses) == {'kl', 'recon'}
    assert not hasattr(no_specific.fusion, 'specific')
    assert set(no_orth(x, availability, full_output=True).losses) == {'kl', 'recon'}
    assert hasattr(no_orth.fusion, 'specific')


def test_smsn_starts_at_the_prior_with_sane_losses():
    """Gaussian heads end in zero layers (also after the network's He init): mu = 0, logvar = 0, KL = 0 exactly;
    the reconstruction of unit-variance images starts at O(1) nats per voxel (it was ~1e7 with He-initialised
    heads, and the KL ~1e10 nats per sample)."""
    net = build('smsn').train()
    for head in (net.fusion.stage1, net.fusion.stage2):
        assert torch.all(head[-1].weight == 0) and torch.all(head[-1].bias == 0)
    availability = torch.tensor([[True] * 4, [True, False, True, False]])
    x = torch.randn(2, 4, *PATCH) * availability[:, :, None, None, None]
    _, losses, extras = net(x, availability, full_output=True)
    assert losses['kl'].item() == 0.0
    assert 0.1 < losses['recon'].item() < 10.0


def _recon_fusion(m=4):
    torch.manual_seed(0)
    block = dict(conv_op=torch.nn.Conv3d, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                 norm_op_kwargs={'eps': 1e-5, 'affine': True}, nonlin=torch.nn.LeakyReLU,
                 nonlin_kwargs={'inplace': True})
    return SMSNFusion(m, 8, block, [3, 3, 3], order_mode='fixed', use_specific=False, use_orthogonality=False,
                      strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]]).train()


def test_smsn_reconstruction_rebuilds_the_present_input_modalities():
    """psi_0(z_1) and psi_1(z_2) give one map per modality (channel order) at the patch resolution; L_r scores
    psi_0's maps of the first two modalities of the order and psi_1's of the others, present ones only."""
    fusion = _recon_fusion()
    fusion.set_order([2, 0, 3, 1])
    features = torch.randn(2, 4, 8, 2, 2, 2)
    image = torch.randn(2, 4, 8, 8, 8)
    availability = torch.tensor([[True, True, True, False], [True, False, True, True]])

    def recon(img):
        torch.manual_seed(1)                            # same reparameterisation noise
        return fusion(features, availability, img)[1]['recon']

    base = recon(image)
    other = image.clone()
    other[0, 3] = torch.randn(8, 8, 8) * 100             # missing in sample 0
    other[1, 1] = torch.randn(8, 8, 8) * 100             # missing in sample 1
    assert recon(other).item() == base.item()
    for channel in (2, 0, 1):                            # present in sample 0 (stage I: 2, 0; stage II: 1)
        changed = image.clone()
        changed[0, channel] += 1.0
        assert recon(changed).item() != base.item()
    # by hand: beta * NLL of psi_0's maps 2, 0 + gamma * NLL of psi_1's maps 3, 1, each against its own modality
    torch.manual_seed(1)
    z1, _, _ = fusion._sample(fusion.stage1, features[:, [2, 0]].flatten(1, 2))
    z2, _, _ = fusion._sample(fusion.stage2, torch.cat([z1, features[:, [3, 1]].flatten(1, 2)], 1))
    p1, p2 = fusion.reconstruct1(z1), fusion.reconstruct2(z2)
    assert p1.shape == (2, 4, 8, 8, 8) and p2.shape == (2, 4, 8, 8, 8)
    nll = lambda p, channels: (0.5 * (p[:, channels] - image[:, channels]).square()).mean((2, 3, 4)) \
        * availability[:, channels].float()
    expected = 0.7 * nll(p1, [2, 0]).sum(1).mean() + 0.3 * nll(p2, [3, 1]).sum(1).mean()
    assert base.item() == pytest.approx(expected.item(), rel=1e-5)


def test_smsn_reconstruction_needs_the_image_and_matching_strides():
    fusion = _recon_fusion()
    features = torch.randn(1, 4, 8, 2, 2, 2)
    availability = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match='image'):
        fusion(features, availability)
    with pytest.raises(ValueError, match='strides'):
        fusion(features, availability, torch.randn(1, 4, 16, 16, 16))
    fusion.eval()
    assert fusion(features, availability)[1] == {}       # eval mode: no losses, no image needed


@pytest.mark.parametrize('m', [2, 3, 5])
def test_smsn_generalises_to_m_modalities(m):
    net = build('smsn', num_modalities=m, bottleneck_ratios=(0.5, 1.5)).train()
    assert net.fusion.stage1[0].in_channels == 2 * 16
    assert net.fusion.stage2[0].in_channels == 8 + (m - 2) * 16
    assert (net.fusion.reconstruct2 is None) == (m == 2)
    availability = torch.stack(masks_of(m))
    x = torch.randn(len(availability), m, *PATCH) * availability[:, :, None, None, None]
    seg, losses, extras = net(x, availability, full_output=True)
    assert seg[0].shape == (len(availability), 3, 8, 8, 8)
    assert all(torch.isfinite(v) for v in losses.values()) and set(losses) == {'kl', 'recon', 'orth'}


# ------------------------------------------------------------------ DDP
def _ddp_worker(rank, world_size, port, result_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        # rank 0: modality 1 and 3 missing in the whole local batch; rank 1: only modality 1 present
        masks = {0: [[True, False, True, False], [True, False, False, False]],
                 1: [[False, True, False, False], [False, True, False, False]]}
        sums = {}
        for fusion in sorted(FUSIONS):
            net = DistributedDataParallel(build(fusion, seed=0).train(), find_unused_parameters=False)
            optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
            torch.manual_seed(rank)
            for step in range(2):
                availability = torch.tensor(masks[(rank + step) % 2])
                x = torch.randn(2, 4, *PATCH) * availability[:, :, None, None, None]
                optimizer.zero_grad()
                seg, losses, extras = net(x, availability, full_output=True)
                (sum(s.square().mean() for s in seg) + sum(losses.values())).backward()
                optimizer.step()
            sums[fusion] = sum(float(p.detach().double().sum()) for p in net.parameters())
        torch.save(sums, os.path.join(result_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_ddp_without_unused_parameter_search(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pt') for r in range(2))
    assert set(rank0) == set(FUSIONS)
    for fusion in FUSIONS:                                  # replicas stayed in sync through the all-reduce
        assert rank0[fusion] == pytest.approx(rank1[fusion], rel=1e-9, abs=1e-9)
