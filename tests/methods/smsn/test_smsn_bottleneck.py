"""SMSN's bottleneck in the training log (KL per stage, active channels) and its knock-outs at inference."""
import math

import pytest
import torch

from methods.fusion.test_fusion_modules import PATCH, build, masks_of
from nnunet_missingmod.methods.smsn.fusion import latent_figures, latent_share


def test_latent_figures_by_hand():
    kl = torch.zeros(2, 3, 2, 2)
    kl[:, 0] = 0.02            # mean 0.02 per element: active
    kl[:, 1] = 0.005           # below 0.01 nats: inactive
    kl[0, 2, 0, 0] = 2.0       # mean over 2 samples x 4 voxels: 0.25, active
    figures = latent_figures(kl, 'stage1')
    # per sample: sample 0 = 4 * 0.02 + 4 * 0.005 + 2.0 = 2.1, sample 1 = 0.1; mean 1.1 nats
    assert float(figures['kl_stage1']) == pytest.approx(1.1)
    assert float(figures['active_stage1']) == pytest.approx(2 / 3)


def test_a_spatially_constant_latent_has_no_varying_share():
    features, availability = torch.randn(2, 4, 3, 2, 2, 2), torch.tensor([[True, True, False, True]] * 2)
    constant = torch.arange(6.0).view(2, 3, 1, 1, 1).expand(2, 3, 2, 2, 2)
    present_rms = features[availability].square().mean().sqrt()
    assert float(latent_share(constant, features, availability)) == pytest.approx(
        float(constant.square().mean().sqrt() / present_rms))
    assert float(latent_share(constant, features, availability, varying=True)) == 0.0


def test_training_forward_logs_both_stages():
    net = build('smsn').train()
    availability = torch.stack(masks_of(4))
    x = torch.randn(len(availability), 4, *PATCH) * availability[:, :, None, None, None]
    out = net(x, availability, full_output=True)
    assert set(out.extras['log']) == {'kl_stage1', 'active_stage1', 'kl_stage2', 'active_stage2', 'recon_zero',
                                      'latent_share', 'latent_share_varying'}
    # the heads start at the prior: KL 0 and no active channel
    assert all(float(out.extras['log'][k]) == 0 for k in ('kl_stage1', 'active_stage1', 'kl_stage2', 'active_stage2'))
    assert float(out.losses['kl'].detach()) == pytest.approx(0.0)


def test_a_small_initial_std_starts_every_latent_channel_at_its_closed_form_kl():
    net = build('smsn', initial_std=0.01).train()     # through the network's He initialisation and its reset
    seen = {}
    net.fusion.stage1.register_forward_hook(lambda m, args, out: seen.__setitem__('voxels', out.shape[2:].numel()))
    availability = torch.stack(masks_of(4))
    x = torch.randn(len(availability), 4, *PATCH) * availability[:, :, None, None, None]
    out = net(x, availability, full_output=True)
    per_element = 0.5 * (0.01 ** 2 - 1.0 - 2.0 * math.log(0.01))     # KL(N(0, 0.01^2) || N(0, 1)) = 4.10522 nats
    for stage, head in (('stage1', net.fusion.stage1), ('stage2', net.fusion.stage2)):
        latent = head[-1].out_channels // 2
        assert float(out.extras['log'][f'kl_{stage}']) == pytest.approx(latent * seen['voxels'] * per_element,
                                                                         rel=1e-5)
        assert float(out.extras['log'][f'active_{stage}']) == 1.0
    with pytest.raises(ValueError, match='initial_std must be positive'):
        build('smsn', initial_std=-1.0)


def test_recon_zero_is_the_reconstruction_loss_of_predicting_zero():
    net = build('smsn').train()
    net.fusion.order_mode = 'none'          # channel order: stage I rebuilds channels 0, 1 (beta), stage II 2, 3
    availability = torch.stack(masks_of(4))
    torch.manual_seed(0)
    x = (torch.randn(len(availability), 4, *PATCH) + 2.0) * availability[:, :, None, None, None]
    out = net(x, availability, full_output=True)
    half_mean_square = 0.5 * x.double().square().flatten(2).mean(-1) * availability      # (B, M), 0 if missing
    expected = (0.7 * half_mean_square[:, :2].sum(1) + 0.3 * half_mean_square[:, 2:].sum(1)).mean()
    assert float(out.extras['log']['recon_zero']) == pytest.approx(float(expected), rel=1e-5)


def test_latent_share_is_the_rms_of_what_z2_adds_over_the_rms_of_the_present_specific_features():
    net = _perturbed_smsn().train()
    seen = {}
    net.fusion.common.register_forward_hook(lambda module, args, out: seen.__setitem__('common', out.detach()))
    net.fusion.specific.register_forward_hook(lambda module, args, out: seen.__setitem__('specific', out.detach()))
    availability = torch.tensor([[True, False, True, True], [True, True, False, False]])
    x = torch.randn(2, 4, *PATCH) * availability[:, :, None, None, None]
    out = net(x, availability, full_output=True)
    added = seen['common'].double() - net.fusion.common.bias.detach().double()[None, :, None, None, None]
    specific = seen['specific'][:, :4].double()          # (B, M, C, ...): the transformer's modality tokens
    present = torch.cat([specific[0, [0, 2, 3]].flatten(), specific[1, [0, 1]].flatten()])
    expected = added.pow(2).mean().sqrt() / present.pow(2).mean().sqrt()
    assert float(expected) > 0
    assert float(out.extras['log']['latent_share']) == pytest.approx(float(expected), rel=1e-4)
    varying = added - added.mean((2, 3, 4), keepdim=True)          # what instance normalisation cannot remove
    assert 0 < float(out.extras['log']['latent_share_varying']) < float(expected)
    assert float(out.extras['log']['latent_share_varying']) == pytest.approx(
        float(varying.pow(2).mean().sqrt() / present.pow(2).mean().sqrt()), rel=1e-4)


def _perturbed_smsn():
    net = build('smsn').eval()
    torch.manual_seed(1)
    with torch.no_grad():             # move the Gaussian heads off the prior so that z_2 carries something
        for p in net.fusion.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.mark.parametrize('path', ['bottleneck', 'specific'])
def test_knockout_changes_the_prediction_and_is_undone(path):
    net = _perturbed_smsn()
    x = torch.randn(2, 4, *PATCH)
    availability = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        reference = net(x, availability)[0]
        net.set_knockout([path])
        knocked = net(x, availability)[0]
        net.set_knockout(())
        restored = net(x, availability)[0]
    assert (knocked - reference).abs().max() > 1e-4
    assert torch.equal(restored, reference)


def test_bottleneck_knockout_uses_the_prior_mean():
    net = _perturbed_smsn()
    seen = []
    net.fusion.common.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    net.set_knockout(['bottleneck'])
    with torch.no_grad():
        net(torch.randn(1, 4, *PATCH), torch.ones(1, 4, dtype=torch.bool))
    assert torch.count_nonzero(seen[0]) == 0


def test_unknown_knockout_is_refused_with_the_paths_the_network_has():
    with pytest.raises(ValueError, match='has no information path messages to knock out \\(it has: bottleneck, '
                                         'specific\\)'):
        build('smsn').set_knockout(['messages'])
    with pytest.raises(ValueError, match='has no information path bottleneck to knock out \\(it has: none\\)'):
        build('concat').set_knockout(['bottleneck'])
