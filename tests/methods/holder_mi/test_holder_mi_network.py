"""Shared-backbone network, dynamic combination, nnUNetTrainerHolderMI losses, DDP and the nnU-Net round trip."""
import inspect
import subprocess

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from conftest import assert_learned, free_port, make_trainer, small_plans
from nnunet_missingmod.profiling.perf import saved_for_backward_bytes
from nnunet_missingmod.methods.holder_mi.divergences import divergence_loss
from nnunet_missingmod.modalities import all_subsets, subset_to_mask
from nnunet_missingmod.methods.holder_mi.network import SharedBackboneNetwork, combine_pairs
from nnunet_missingmod.methods.holder_mi import trainers as hm

M = 4


def configuration(features=(4, 8, 16)) -> ConfigurationManager:
    return ConfigurationManager(small_plans(features)['configurations']['3d_fullres'])


def network(deep_supervision=True, **kwargs) -> SharedBackboneNetwork:
    torch.manual_seed(0)
    return SharedBackboneNetwork.from_plans(configuration(), M, 3, width_factor=1.0, deep_supervision=deep_supervision,
                                            **kwargs)


def masks(*rows):
    return torch.tensor(rows, dtype=torch.bool)


# --------------------------------------------------------------------------- network
def test_widths_and_mi_levels_from_plans():
    net = SharedBackboneNetwork.from_plans(configuration((16, 32, 64)), M, 3, width_factor=0.25,
                                           deep_supervision=True, mi_num_levels=2, mi_gamma0=0.1)
    # 16 * 0.25 = 4 is raised to the floor min(16, 8) = 8; 32 * 0.25 = 8; 64 * 0.25 = 16
    assert [s[0].convs[0].conv.out_channels for s in net.backbone.encoder.stages] == [8, 8, 16]
    assert net.channel_encoders[0].groups == M and net.channel_encoders[0].out_channels == M * 8
    assert net.mi_stages == (1, 2)
    assert net.mi.gammas == pytest.approx((0.1, 0.2))  # gamma_k = gamma0 * k, k = 1..K over the used levels
    assert SharedBackboneNetwork.from_plans(configuration(), M, 3, width_factor=1.0, deep_supervision=True,
                                            mi_num_levels=0).mi is None


def test_combine_pairs_is_mean_over_subset_members():
    values = torch.randn(5, 2, 3)
    pair_index = torch.tensor([[0, 0], [0, 2], [0, 3], [1, 1], [1, 2]])
    subsets = masks([[1, 0, 1, 1], [0, 1, 1, 0]], [[1, 0, 0, 0], [0, 0, 1, 0]])
    out = combine_pairs(values, pair_index, subsets)
    torch.testing.assert_close(out[0, 0], values[:3].mean(0))
    torch.testing.assert_close(out[0, 1], values[3:].mean(0))
    torch.testing.assert_close(out[1, 0], values[0])
    torch.testing.assert_close(out[1, 1], values[4])
    empty = combine_pairs(values, pair_index, masks([[0, 1, 0, 0], [0, 1, 0, 0]]))   # not checked: no host sync
    assert torch.equal(empty[0, 0], torch.zeros(2, 3))


def test_prediction_averages_exactly_the_available_modalities():
    net = network(deep_supervision=False).eval()
    x = torch.randn(1, M, 8, 8, 8)
    with torch.no_grad():
        single = {i: net(x, torch.from_numpy(subset_to_mask([i], M))[None]) for i in range(M)}
        for subset in [(0, 2), (1, 2, 3), (0, 1, 2, 3)]:
            combined = net(x, torch.from_numpy(subset_to_mask(subset, M))[None])
            torch.testing.assert_close(combined, sum(single[i] for i in subset) / len(subset), rtol=1e-4, atol=1e-5)
    # a missing modality's content is irrelevant: only available ones reach the backbone
    x2 = x.clone()
    x2[:, 1] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(net(x2, masks([1, 0, 1, 1])), net(x, masks([1, 0, 1, 1])))


def test_backbone_passes_scale_with_available_modalities():
    net = network().eval()
    seen = []
    net.backbone.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    x = torch.randn(2, M, 8, 8, 8)
    with torch.no_grad():
        for k in range(1, M + 1):
            net(x, masks([True] * k + [False] * (M - k), [True] + [False] * (M - 1)))
        # no mask: availability from all-zero channels (modalities 1 and 3 missing in both samples)
        x[:, [1, 3]] = 0
        net(x)
    assert seen == [k + 1 for k in range(1, M + 1)] + [4]
    assert net.backbone.encoder.stages[0][0].convs[0].conv.in_channels == net.common_channels


def test_finite_outputs_and_losses_under_all_15_masks():
    net = network().train()
    x = torch.randn(1, M, 8, 8, 8)
    for subset in all_subsets(M):
        availability = torch.from_numpy(subset_to_mask(subset, M))[None]
        seg, losses, extras = net(x, availability, full_output=True)
        assert len(seg) == 2 and seg[0].shape == (1, 3, 8, 8, 8) and seg[1].shape == (1, 3, 4, 4, 4)
        assert all(torch.isfinite(s).all() for s in seg)
        assert extras['subset_outputs'][0].shape == (15, 1, 3, 8, 8, 8)    # every code; the unused ones weigh 0
        assert extras['subset_weights'].sum() == 2 ** len(subset) - 1
        assert all(torch.isfinite(o).all() for o in extras['subset_outputs'])
        assert torch.isfinite(losses['mi']) and float(losses['mi'].detach()) != 0.0


def test_training_subsets_enumerate_or_draw_within_availability():
    net = network()
    full, weights = net.training_subsets(masks([1, 1, 1, 1], [1, 1, 1, 1]))
    assert full.shape == (15, 2, M) and bool((weights == 1).all())
    assert {tuple(np.flatnonzero(m)) for m in full[:, 0].numpy()} == set(all_subsets(M))
    two, weights = net.training_subsets(masks([1, 0, 1, 0], [0, 1, 0, 1]))
    two = two[weights > 0]
    assert {tuple(np.flatnonzero(m)) for m in two[:, 0].numpy()} == {(0,), (2,), (0, 2)}
    assert {tuple(np.flatnonzero(m)) for m in two[:, 1].numpy()} == {(1,), (3,), (1, 3)}
    # uneven availability: every subset stays inside the sample's available set and is never empty
    uneven, weights = net.training_subsets(masks([1, 1, 1, 0], [0, 0, 1, 0]))
    assert weights.tolist() == [1.0] * 7 + [0.0] * 8
    assert bool((uneven[:, 0] & ~masks([1, 1, 1, 0])[0]).sum() == 0)
    assert bool((uneven[:, 1] == masks([0, 0, 1, 0])).all())
    net.subsets_per_step = 5
    availability = masks([1, 1, 0, 1], [0, 1, 1, 0])
    drawn, weights = net.training_subsets(availability)
    assert drawn.shape == (5, 2, M) and bool((weights == 1).all())
    assert bool((drawn & ~availability).sum() == 0) and bool(drawn.any(-1).all())


# --------------------------------------------------------------------------- trainer
def test_build_network_architecture_is_a_classmethod_with_nnunet_signature():
    params = inspect.signature(hm.nnUNetTrainerHolderMI.build_network_architecture).parameters
    assert list(params)[:2] == ['plans_manager', 'configuration_manager']
    net = hm.nnUNetTrainerHolderMI.build_network_architecture(None, configuration(), M, 3, True)
    assert isinstance(net, SharedBackboneNetwork) and net.mi is not None and net.subsets_per_step is None
    assert hm.nnUNetTrainerHolderMI_noMI.build_network_architecture(None, configuration(), M, 3, True).mi is None
    budget = hm.nnUNetTrainerHolderMI_budget.build_network_architecture(None, configuration((64, 128, 256)), M, 3,
                                                                        False)
    assert budget.common_channels == round(64 * hm.nnUNetTrainerHolderMI_budget.width_factor)
    assert budget.subsets_per_step == hm.nnUNetTrainerHolderMI_budget.holder_subsets_per_step


def numpy_voxel_holder(logits: np.ndarray, labels: np.ndarray, alpha: float = 1.1) -> float:
    """Eq. 1 as printed: mean over samples, regions and voxels of Eq. 2 between the Bernoulli pairs (p, 1 - p) and
    (y, 1 - y), the label's zeros clamped at 1e-7 as the loss does."""
    beta = alpha / (alpha - 1)
    prob = 1 / (1 + np.exp(-logits))
    p = np.stack([prob, 1 - prob], -1)
    q = np.clip(np.stack([labels, 1 - labels], -1), 1e-7, None)
    inner = (p * q).sum(-1)
    norms = (p ** alpha).sum(-1) ** (1 / alpha) * (q ** beta).sum(-1) ** (1 / beta)
    return float(np.mean(-np.log(inner / norms)))


def numpy_soft_dice(logits: np.ndarray, labels: np.ndarray, smooth: float = 1e-5) -> float:
    """nnU-Net's MemoryEfficientSoftDiceLoss (batch_dice False, background included): -mean_{b,r} Dice."""
    p = 1 / (1 + np.exp(-logits))
    axes = tuple(range(2, p.ndim))
    dice = (2 * (p * labels).sum(axes) + smooth) / np.clip(p.sum(axes) + labels.sum(axes) + smooth, 1e-8, None)
    return float(-dice.mean())


@pytest.mark.parametrize('cls', [hm.nnUNetTrainerHolderMI, hm.nnUNetTrainerHolderMI_noHD,
                                 hm.nnUNetTrainerHolderMI_DiceOnly])
def test_total_loss_is_eq_7_over_all_subsets(cls, tmp_path):
    """Algorithm 1 / Eq. 7 against an independent numpy computation: plain soft Dice (no BCE) + lambda_1 L_MI +
    lambda_2 L_HD (per voxel, the default), averaged over the 15 subsets, deep supervision weights 2/3, 1/3, 0;
    L_MI is a per-sample term, scaled by 1 / (voxels x regions) of the patch."""
    trainer = make_trainer(cls, tmp_path, small_plans(features=(4, 8, 16, 32)))
    x = torch.randn(2, M, 16, 16, 16)
    availability = masks([1, 1, 1, 1], [1, 1, 1, 1])
    target = [(torch.rand(2, 3, 16 // 2 ** i, 16 // 2 ** i, 16 // 2 ** i) > 0.6).float() for i in range(3)]
    trainer.network.train()
    output = trainer.network(x, availability, full_output=True)
    seg, losses, extras = output
    total, terms = trainer.compute_loss(output, target, availability)
    values = {k: float(v.detach()) for k, v in terms.items()}
    outs = [o.detach().double().numpy() for o in extras['subset_outputs']]
    labels = [t.double().numpy() for t in target]
    weights = (2 / 3, 1 / 3, 0.0)
    dice = np.mean([sum(w * numpy_soft_dice(o[s], y) for w, o, y in zip(weights, outs, labels)) for s in range(15)])
    assert values['seg'] == pytest.approx(dice, rel=1e-4)
    expected = dice + cls.aux_loss_weights['mi'] / (16 ** 3 * 3) * values.get('mi', 0.0)
    assert ('mi' in terms) == (cls.aux_loss_weights['mi'] > 0)
    if cls.aux_loss_weights['hd'] > 0:
        hd = np.mean([sum(w * numpy_voxel_holder(o[s], y) for w, o, y in zip(weights[:2], outs, labels))
                      for s in range(15)])
        assert values['hd'] == pytest.approx(hd, rel=1e-4)
        expected += cls.aux_loss_weights['hd'] * hd
    else:
        assert 'hd' not in terms
    assert float(total.detach()) == pytest.approx(expected, rel=1e-4)
    total.backward()
    # every parameter but the lowest-resolution head (deep supervision weight 0 in nnU-Net) is trained
    no_grad = {n for n, p in trainer.network.named_parameters() if p.grad is None}
    assert no_grad == {'backbone.decoder.seg_layers.0.weight', 'backbone.decoder.seg_layers.0.bias'}, no_grad


def test_modality_specific_norm_has_one_affine_per_modality(tmp_path):
    """The backbone's convolutions are shared, its norms' scale/shift are per modality: changing modality 2's
    affine changes only predictions that use modality 2."""
    net = network(deep_supervision=False).eval()
    assert len(net.modality_affines) == sum(isinstance(m, torch.nn.InstanceNorm3d) for m in net.backbone.modules())
    assert all(a.weight.shape[0] == M for a in net.modality_affines)
    assert all(m.weight is None for m in net.backbone.modules() if isinstance(m, torch.nn.InstanceNorm3d))
    x = torch.randn(1, M, 8, 8, 8)
    with torch.no_grad():
        before = {i: net(x, torch.from_numpy(subset_to_mask([i], M))[None]) for i in range(M)}
        for a in net.modality_affines:
            a.bias[2] += 0.5
        after = {i: net(x, torch.from_numpy(subset_to_mask([i], M))[None]) for i in range(M)}
    assert all(torch.equal(before[i], after[i]) for i in (0, 1, 3))
    assert not torch.allclose(before[2], after[2])
    shared = SharedBackboneNetwork.from_plans(configuration(), M, 3, width_factor=1.0, deep_supervision=False,
                                              modality_specific_norm=False)
    assert shared.modality_affines == []


@pytest.mark.parametrize('norm_op', [torch.nn.InstanceNorm3d, torch.nn.GroupNorm])
def test_modality_norm_equals_one_norm_per_modality(norm_op):
    """Every row is normalised as by its own modality's norm with affine (written out with torch's layers), in
    value and in gradient; the instance norm with its per-modality affine keeps for backward no more than one plain
    instance norm does (no second copy of the normalised tensor)."""
    from nnunet_missingmod.methods.holder_mi.modality_norm import make_norms_modality_specific
    torch.manual_seed(0)
    channels, rows = 6, torch.tensor([2, 0, 2, 1])
    make = (lambda: torch.nn.InstanceNorm3d(channels, affine=True)) if norm_op is torch.nn.InstanceNorm3d else \
        (lambda: torch.nn.GroupNorm(3, channels))
    holder = torch.nn.Sequential(make())
    make_norms_modality_specific(holder, norm_op, 3)
    norm = holder[0].double()
    with torch.no_grad():
        norm[1].weight.copy_(torch.rand(3, channels, dtype=torch.float64) + 0.5)
        norm[1].bias.copy_(torch.randn(3, channels, dtype=torch.float64))
    references = [make().double() for _ in range(3)]
    for m, ref in enumerate(references):
        with torch.no_grad():
            ref.weight.copy_(norm[1].weight[m])
            ref.bias.copy_(norm[1].bias[m])
    x = torch.randn(4, channels, 5, 4, 3, dtype=torch.float64) * 3 + 1
    x_ref = x.clone().requires_grad_(True)
    x.requires_grad_(True)
    norm[1].rows = rows
    out = norm(x)
    expected = torch.cat([references[m](x_ref[i:i + 1]) for i, m in enumerate(rows.tolist())])
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for m, ref in enumerate(references):
        torch.testing.assert_close(norm[1].weight.grad[m], ref.weight.grad)
        torch.testing.assert_close(norm[1].bias.grad[m], ref.bias.grad)
    if norm_op is torch.nn.InstanceNorm3d:
        plain = torch.nn.InstanceNorm3d(channels, affine=True).double()
        # the same as the plain norm, plus the rows' modality index that the affine's gather keeps
        assert saved_for_backward_bytes(lambda: norm(x * 1)) == saved_for_backward_bytes(lambda: plain(x * 1)) + \
            rows.nbytes


def test_holder_loss_softmax_labels_with_ignore():
    trainer = object.__new__(hm.nnUNetTrainerHolderMI)   # only what holder_loss needs
    trainer.label_manager = LabelManager({'background': 0, 'a': 1, 'b': 2, 'ignore': 3}, None)
    trainer.loss = None  # not a DeepSupervisionWrapper: only the full-resolution output counts
    logits = [torch.randn(2, 1, 3, 4, 4, 4), torch.randn(2, 1, 3, 2, 2, 2)]
    labels = torch.randint(0, 4, (1, 1, 4, 4, 4))
    got = trainer.holder_loss(logits, [labels, labels[..., ::2, ::2, ::2]])
    keep = labels[:, 0] != 3
    onehot = torch.nn.functional.one_hot(torch.where(keep, labels[:, 0], 0), 3).movedim(-1, 1)
    expected = divergence_loss(logits[0], onehot, 'softmax', 'holder', 1.1, dim=2, mask=keep[:, None],
                               domain=hm.nnUNetTrainerHolderMI.holder_divergence_domain)
    torch.testing.assert_close(got, expected)


# --------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, port: int, results):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        net = DDP(SharedBackboneNetwork.from_plans(configuration((2, 4)), M, 3, width_factor=1.0, deep_supervision=True,
                                                   subsets_per_step=2, seed=rank),
                  find_unused_parameters=False)
        net.train()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        per_rank = [masks([1, 0, 0, 0], [0, 1, 0, 0]), masks([0, 0, 1, 1], [1, 1, 1, 1])]
        for step in range(2):  # an unused parameter would only fail at the second step
            availability = per_rank[(rank + step) % 2]
            seg, losses, extras = net(torch.randn(2, M, 4, 4, 4), availability, full_output=True)
            loss = sum(o.float().pow(2).mean() for o in extras['subset_outputs']) + losses['mi']
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        grad = net.module.channel_encoders[0].weight.grad.clone()
        dist.all_reduce(grad)
        results[rank] = bool(torch.allclose(grad / world, net.module.channel_encoders[0].weight.grad))
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes_with_different_masks():
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: True, 1: True}  # gradients were all-reduced, no unused-parameter error


# --------------------------------------------------------------------------- nnU-Net round trip
def test_train_predict_and_learn_with_nnunet(nnunet_dataset, trained_model, held_out, tmp_path):
    trainer = 'nnUNetTrainerHolderMI'
    folder = trained_model(trainer)
    log = next((folder / 'fold_0').glob('training_log_*.txt')).read_text()
    terms = log.split('train loss terms (unweighted): ')[1].splitlines()[0]
    assert terms.startswith('seg ') and ' mi ' in terms and 'nats/sample' in terms and ' hd ' in terms
    figures = log.split('train figures: ')[1].splitlines()[0]
    assert all(f'{name} ' in figures for name in ('mi_std_df', 'mi_sigma', 'mi_rho'))
    shares = log.split('share of the gradient norm per weighted term')[1].splitlines()[0]
    assert all(f' {t} ' in shares for t in ('seg', 'mi', 'hd'))
    images = sorted((nnunet_dataset.raw / 'imagesTr').glob('*_0000.nii.gz'))[:1]
    inputs = tmp_path / 'in'
    inputs.mkdir()
    case = images[0].name[:-len('_0000.nii.gz')]
    for channel in range(M):
        src = nnunet_dataset.raw / 'imagesTr' / f'{case}_{channel:04d}.nii.gz'
        (inputs / src.name).symlink_to(src)
    out = tmp_path / 'out'
    result = subprocess.run(['nnUNetv2_predict', '-i', str(inputs), '-o', str(out), '-d', str(nnunet_dataset.dataset_id),
                             '-c', nnunet_dataset.configuration, '-tr', trainer, '-f', '0', '-device', 'cpu',
                             '--disable_tta', '-npp', '1', '-nps', '1'],
                            env=nnunet_dataset.env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    import SimpleITK as sitk
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f'{case}.nii.gz')))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(images[0])))
    assert seg.shape == reference.shape
    assert set(np.unique(seg)) <= {0, 1, 2, 3}
    assert_learned(folder, held_out)
