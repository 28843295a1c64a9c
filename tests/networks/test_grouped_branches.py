"""Issue #16: the batched (grouped, mask-multiplied) networks give what the per-modality loops gave.

Each reference below is the former computation, written out here independently of the package: one call per
modality encoder on the sub-batch of samples where that modality is present, skips averaged over those calls.
Fixed weights, every one of the 15 masks (as one batch and one mask per batch), outputs and auxiliary losses.
"""
import numpy as np
import pytest
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from torch import nn

from nnunet_missingmod.networks.grouped import grouped_forward
from methods.fusion.test_fusion_modules import FUSIONS, PATCH, build, masks_of

torch.set_num_threads(1)


def reference_fusion_forward(net, x, availability):
    """The former ``MultiEncoderFusionUNet.forward_with_mask``: encoders looped over present sub-batches."""
    b = x.shape[0]
    skip_sums, bottleneck = None, []
    for m, encoder in enumerate(net.encoders):
        rows = availability[:, m].nonzero().squeeze(1)
        full = [torch.zeros((b,) + s.shape[1:]) for s in encoder(x[:1, m:m + 1])]
        if len(rows):
            for f, s in zip(full, encoder(x[rows, m:m + 1])):
                f[rows] = s
        skip_sums = full[:-1] if skip_sums is None else [a + f for a, f in zip(skip_sums, full[:-1])]
        bottleneck.append(full[-1])
    count = availability.sum(1).float().reshape(b, 1, 1, 1, 1)
    skips = [s / count for s in skip_sums]
    fused, losses, log = net.fusion(torch.stack(bottleneck, 1), availability, x)
    return net.decoder(skips + [fused]), losses, log


@pytest.mark.parametrize('fusion', sorted(FUSIONS))
@pytest.mark.parametrize('training', [False, True])
def test_fusion_network_equals_per_modality_loops_on_all_15_masks(fusion, training):
    net = build(fusion).train(training)
    masks = torch.stack(masks_of(4))
    x = torch.randn(len(masks), 4, *PATCH) * masks[:, :, None, None, None]
    batches = [(x, masks)] + [(x[i:i + 1], masks[i:i + 1]) for i in range(len(masks))]
    for xb, mb in batches:
        torch.manual_seed(7)
        net.fusion.rng = np.random.default_rng(7)
        with torch.no_grad():
            seg, losses, extras = net(xb, mb, full_output=True)
        torch.manual_seed(7)
        net.fusion.rng = np.random.default_rng(7)
        with torch.no_grad():
            ref_seg, ref_losses, ref_log = reference_fusion_forward(net, xb, mb)
        for a, r in zip(seg, ref_seg):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
        assert set(losses) == set(ref_losses) and set(extras) == ({'log'} if ref_log else set())
        for k in losses:
            torch.testing.assert_close(losses[k], ref_losses[k], rtol=1e-4, atol=1e-6)
        for k in ref_log:
            torch.testing.assert_close(extras['log'][k], ref_log[k], rtol=1e-4, atol=1e-6)


def test_grouped_pass_equals_each_copy_on_its_channels():
    """Encoders (skips) and a sequential of transposed conv + conv block, M copies with different weights."""
    torch.manual_seed(0)
    kw = dict(conv_op=nn.Conv3d, kernel_sizes=3, strides=[1, 2, 2], n_conv_per_stage=2, conv_bias=True,
              norm_op=nn.InstanceNorm3d, norm_op_kwargs={'eps': 1e-5, 'affine': True}, nonlin=nn.LeakyReLU,
              nonlin_kwargs={'inplace': True}, return_skips=True)
    encoders = [PlainConvEncoder(2, 3, [4, 8, 16], **kw) for _ in range(3)]
    ups = [nn.Sequential(nn.ConvTranspose3d(16, 8, 2, 2), nn.Conv3d(8, 5, 3, padding=1),
                         nn.InstanceNorm3d(5, affine=True), nn.LeakyReLU()) for _ in range(3)]
    for p in list(nn.ModuleList(encoders + ups).parameters()):
        nn.init.normal_(p, 0.0, 0.3)
    x = torch.randn(2, 3 * 2, 8, 8, 8)
    skips = grouped_forward(encoders, x)
    up = grouped_forward(ups, skips[-1])
    for m in range(3):
        own = encoders[m](x[:, 2 * m:2 * m + 2])
        for grouped, single in zip(skips, own):
            torch.testing.assert_close(grouped.unflatten(1, (3, -1))[:, m], single, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(up.unflatten(1, (3, -1))[:, m], ups[m](own[-1]), rtol=1e-4, atol=1e-5)


def test_grouped_pass_gives_each_copy_its_own_gradient():
    torch.manual_seed(0)
    convs = [nn.Conv3d(1, 2, 3, padding=1) for _ in range(2)]
    x = torch.randn(1, 2, 4, 4, 4)
    grouped_forward(convs, x)[:, 2:].sum().backward()        # only the second copy's output
    assert convs[0].weight.grad.abs().sum() == 0 and convs[1].weight.grad.abs().sum() > 0


def test_grouped_pass_rejects_what_it_cannot_group():
    with pytest.raises(TypeError, match='BatchNorm3d'):
        grouped_forward([nn.BatchNorm3d(2), nn.BatchNorm3d(2)], torch.randn(1, 4, 2, 2, 2))


def reference_holder_mi_forward(net, x, availability):
    """The former training forward of ``SharedBackboneNetwork``: the backbone on the available pairs only, each
    subset's output the plain mean of its members' outputs."""
    b, m = availability.shape
    d = net.channel_encoders(x).unflatten(1, (m, -1))
    pairs = [(i, j) for i in range(b) for j in range(m) if availability[i, j]]
    for affine in net.modality_affines:
        affine.rows = torch.tensor([j for _, j in pairs])
    skips = net.backbone.encoder(torch.stack([d[i, j] for i, j in pairs]))
    outputs = net.backbone.decoder(skips)
    subsets = former_subsets(availability)

    def mean_over(values, subset):
        return torch.stack([torch.stack([values[k] for k, (i, j) in enumerate(pairs) if i == s and subset[s, j]])
                            .mean(0) for s in range(b)])
    seg = [mean_over(o, availability) for o in outputs]
    per_subset = [torch.stack([mean_over(o, subset) for subset in subsets]) for o in outputs]
    features = [skips[s] for s in net.mi_stages]
    mi, _ = net.mi([mean_over(f, availability) for f in features],
                   [torch.stack([mean_over(f, subset) for subset in subsets]) for f in features])
    return seg, per_subset, mi


def test_holder_mi_training_forward_equals_available_pairs_only_on_all_15_masks():
    from methods.holder_mi.test_holder_mi_network import network
    net = network(mi_num_levels=1).train()
    masks = torch.stack(masks_of(4))
    x = torch.randn(len(masks), 4, *PATCH) * masks[:, :, None, None, None]
    for xb, mb in [(x, masks)] + [(x[i:i + 1], masks[i:i + 1]) for i in range(len(masks))]:
        with torch.no_grad():
            seg, losses, extras = net(xb, mb, full_output=True)
            ref_seg, ref_subsets, ref_mi = reference_holder_mi_forward(net, xb, mb)
        for a, r in zip(seg, ref_seg):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
        for a, r in zip(extras['subset_outputs'], ref_subsets):
            torch.testing.assert_close(a[extras['subset_weights'] > 0], r, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(losses['mi'], ref_mi, rtol=1e-4, atol=1e-6)


def reference_ciml_segmentors(net, x, avail):
    """The former CIML pass: each segmentor's encoder on its own channel, then each segmentor's decoder with its
    gates (``CIGModule.forward``, messages: the other segmentors' skips), one segmentor after the other."""
    M = net.num_modalities
    skips = [s.encoder(x[:, m:m + 1]) for m, s in enumerate(net.segmentors)]
    levels = []
    for m, seg in enumerate(net.segmentors):
        others = [j for j in range(M) if j != m]
        gate = None
        if len(net.cigs):
            def gate(s, local, m=m, others=others):
                return net.cigs[m][s](local, [skips[j][-(s + 1)] for j in others], avail[:, others])
        out = seg.decoder(skips[m], gate)
        levels.append(out if isinstance(out, list) else [out])
    return [torch.stack(level, 1) for level in zip(*levels)]


@pytest.mark.parametrize('fusion', ['none', 'plain', 'attention', 'vi', 'attention_vi'])
@pytest.mark.parametrize('training', [False, True])
def test_ciml_grouped_segmentors_equal_one_segmentor_after_the_other_on_all_15_masks(fusion, training,
                                                                                   monkeypatch):
    """Encoders, gates and decoders of the four segmentors in one grouped pass give the per-segmentor outputs,
    KL and gradients (training: the reparameterisation noise set to 0 in both, since the grouped pass draws it in
    another order). In float64, so that only the summation order can differ."""
    from methods.ciml.test_ciml_network import make_network
    net = make_network(fusion).train(training).double()
    if training:
        monkeypatch.setattr(torch, 'randn_like', torch.zeros_like)
    masks = torch.stack(masks_of(4))
    x = torch.randn(len(masks), 4, 8, 8, 8, dtype=torch.float64) * masks[:, :, None, None, None]
    for xb, mb in [(x, masks)] + [(x[i:i + 1], masks[i:i + 1]) for i in (0, 7, 14)]:
        seg, losses, extras = net(xb, mb, full_output=True)
        kl = [[cig.kl_per_sample(mb[:, [j for j in range(4) if j != m]]) for cig in net.cigs[m]]
              for m in range(4)] if training and fusion in ('vi', 'attention_vi') else []
        reference = reference_ciml_segmentors(net, xb, mb.double())
        for m, outputs in enumerate(extras['segmentor_outputs']):
            for a, r in zip(outputs, reference):
                torch.testing.assert_close(a, r[:, m], rtol=1e-9, atol=1e-10)
        for m, per_stage in enumerate(kl):                # the gates' state after the reference pass
            for cig, value in zip(net.cigs[m], per_stage):
                torch.testing.assert_close(value, cig.kl_per_sample(mb[:, [j for j in range(4) if j != m]]),
                                           rtol=1e-9, atol=1e-9)
        if training:
            params = [p for p in net.parameters()]
            grads = torch.autograd.grad(sum(o.square().mean() for o in seg), params, allow_unused=True)
            fused_ref = [(r * extras['combination_weights'][..., None, None, None]).sum(1) for r in reference]
            ref_grads = torch.autograd.grad(sum(o.square().mean() for o in fused_ref), params, allow_unused=True)
            for g, r in zip(grads, ref_grads):
                assert (g is None) == (r is None)
                if g is not None:
                    # atol: conv biases before an instance norm have a zero gradient, up to rounding
                    torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-9 * float(r.abs().max()) + 1e-15)


def former_subsets(availability):
    """The former numpy enumeration: codes 1 .. 2^k_max - 1 over the ranks of each sample's available modalities."""
    avail = availability.numpy()
    k_max = int(avail.sum(1).max())
    out = np.zeros((2 ** k_max - 1,) + avail.shape, dtype=bool)
    for b in range(avail.shape[0]):
        idx = np.flatnonzero(avail[b])
        for code in range(1, 2 ** k_max):
            chosen = [idx[j] for j in range(idx.size) if code >> j & 1]
            out[code - 1, b, chosen if chosen else idx] = True
    return torch.from_numpy(out)


@pytest.mark.parametrize('availability', [[[1, 1, 1, 1], [1, 1, 1, 1]], [[1, 1, 1, 0], [0, 0, 1, 0]],
                                          [[1, 0, 1, 0], [0, 1, 1, 0]]])
def test_holder_mi_loss_terms_equal_the_former_loop_over_subsets(availability, tmp_path):
    """Vectorised subset losses with weights = the former loop over the 2^k_max - 1 subsets, plain mean."""
    from conftest import make_trainer
    from methods.holder_mi.test_holder_mi_gradients import batch
    from nnunet_missingmod.methods.holder_mi.divergences import divergence_loss
    from nnunet_missingmod.methods.holder_mi import trainers as hm
    trainer = make_trainer(hm.nnUNetTrainerHolderMI, tmp_path)
    data, target, _ = batch()
    availability = torch.tensor(availability, dtype=torch.bool)
    data = data * availability[:, :, None, None, None]
    with torch.no_grad():
        _, terms = trainer.forward_loss(data, target, availability)
        seg, losses, extras = trainer.network(data, availability, full_output=True)
    subsets = former_subsets(availability)
    used = extras['subset_weights'] > 0
    assert torch.equal(extras['subsets'][used], subsets)
    outputs = [o[used] for o in extras['subset_outputs']]
    expected_seg = sum(trainer.loss([o[s] for o in outputs], target) for s in range(len(subsets))) / len(subsets)
    label = target[0]                         # regions: the divergence's label is the region target itself
    domain = trainer.holder_divergence_domain
    expected_hd = divergence_loss(outputs[0].float(), label[None].expand_as(outputs[0]), 'sigmoid', 'holder', 1.1,
                                  dim=2, domain=domain)
    expected_hd = trainer.loss.weight_factors[0] * expected_hd + trainer.loss.weight_factors[1] * divergence_loss(
        outputs[1].float(), target[1][None].expand_as(outputs[1]), 'sigmoid', 'holder', 1.1, dim=2, domain=domain)
    torch.testing.assert_close(terms['seg'], expected_seg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms['hd'], expected_hd, rtol=1e-5, atol=1e-6)
