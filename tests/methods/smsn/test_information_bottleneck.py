"""Losses of SMSN's information-bottleneck fusion: KL (Eq. 5), masked reconstruction (Eq. 6), orthogonality."""
import math

import numpy as np
import pytest
import torch

from nnunet_missingmod.profiling.perf import saved_for_backward_bytes
from nnunet_missingmod.losses.gaussian import (gaussian_kl_standard_normal, initial_log_variance,
                                               reparameterised_sample_with_kl)
from nnunet_missingmod.methods.smsn.losses import masked_reconstruction_loss, orthogonality_loss


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.0, 1.5, -0.7, 0.3])
    logvar = torch.tensor([0.0, -1.0, 0.8, -2.0])
    n = 400_000
    z = mu + torch.randn(n, 4, generator=g, dtype=torch.float64) * torch.exp(0.5 * logvar)
    std = torch.exp(0.5 * logvar).double()
    log_q = -0.5 * (((z - mu) / std) ** 2 + 2 * std.log() + math.log(2 * math.pi))
    log_p = -0.5 * (z ** 2 + math.log(2 * math.pi))
    monte_carlo = (log_q - log_p).mean(0)
    closed = gaussian_kl_standard_normal(mu, logvar, reduction='none')
    assert torch.allclose(closed.double(), monte_carlo, atol=0.02)
    assert closed[0].item() == 0.0
    assert gaussian_kl_standard_normal(mu, logvar, 'sum').item() == pytest.approx(closed.sum().item())
    assert gaussian_kl_standard_normal(mu, logvar, 'mean').item() == pytest.approx(closed.mean().item())
    # default: nats per sample = sum over the latent dimensions, mean over the batch axis
    batch_mu, batch_logvar = torch.stack([mu, 2 * mu, mu.flip(0)]), torch.stack([logvar, logvar, -logvar])
    per_sample = [sum(0.5 * (m * m + math.exp(v) - 1 - v) for m, v in zip(mu_b.tolist(), lv_b.tolist()))
                  for mu_b, lv_b in zip(batch_mu, batch_logvar)]
    assert gaussian_kl_standard_normal(batch_mu, batch_logvar).item() == pytest.approx(sum(per_sample) / 3)


def test_kl_is_float32_and_finite_for_half_inputs():
    mu = torch.full((2, 3), 2.0, dtype=torch.float16)
    logvar = torch.full((2, 3), 12.0, dtype=torch.float16)  # exp(12) overflows float16
    kl = gaussian_kl_standard_normal(mu, logvar, 'none')
    assert kl.dtype == torch.float32
    assert torch.isfinite(kl).all()
    assert kl[0, 0].item() == pytest.approx(0.5 * (4.0 + math.exp(12.0) - 1.0 - 12.0), rel=1e-5)


def test_kl_rejects_unknown_reduction():
    with pytest.raises(ValueError, match='reduction'):
        gaussian_kl_standard_normal(torch.zeros(1), torch.zeros(1), 'max')


def test_sample_with_kl_values_and_derivatives():
    """z = mu + sigma * eps and the KL summed from start_dim (written out per element); its derivatives against
    finite differences (gradcheck, float64, both outputs)."""
    torch.manual_seed(0)
    mu = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    logvar = (torch.randn(2, 3, 4, 5, dtype=torch.float64) * 0.5).requires_grad_(True)
    eps = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    z, kl = reparameterised_sample_with_kl(mu, logvar, eps, start_dim=2)
    assert z.dtype == kl.dtype == torch.float64 and kl.shape == (2, 3)
    m, v, e = mu.detach().numpy(), logvar.detach().numpy(), eps.numpy()
    np.testing.assert_allclose(z.detach().numpy(), m + np.sqrt(np.exp(v)) * e, rtol=1e-12)
    per_element = 0.5 * (m ** 2 + np.exp(v) - 1 - v)
    np.testing.assert_allclose(kl.detach().numpy(), per_element.reshape(2, 3, -1).sum(-1), rtol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: reparameterised_sample_with_kl(a, b, eps, 1), (mu, logvar))
    # at the standard normal itself the KL is exactly 0, and so is its gradient (a minimum)
    zero_mu, zero_logvar = torch.zeros(3, 4, requires_grad=True), torch.zeros(3, 4, requires_grad=True)
    _, kl0 = reparameterised_sample_with_kl(zero_mu, zero_logvar, torch.randn(3, 4), 1)
    assert kl0.tolist() == [0.0, 0.0, 0.0]
    kl0.sum().backward()
    assert zero_mu.grad.abs().max() == 0 and zero_logvar.grad.abs().max() == 0


def test_sample_with_kl_half_inputs_and_memory():
    """float16 mu/logvar: the KL in float32 and finite where exp(logvar) overflows float16; the node keeps mu,
    logvar and eps only, less than the composition with autograd (which keeps sigma and exp(logvar) too)."""
    mu = torch.full((2, 3), 2.0, dtype=torch.float16)
    logvar = torch.full((2, 3), 12.0, dtype=torch.float16)
    z, kl = reparameterised_sample_with_kl(mu, logvar, torch.zeros(2, 3, dtype=torch.float16), 1)
    assert z.dtype == torch.float16 and kl.dtype == torch.float32
    assert kl[0].item() == pytest.approx(3 * 0.5 * (4.0 + math.exp(12.0) - 1.0 - 12.0), rel=1e-5)
    stats = torch.randn(2, 2, 8, 16, 16, 16, requires_grad=True)        # a conv output holding mu and logvar
    mu, logvar, eps = stats[:, 0], stats[:, 1], torch.randn(2, 8, 16, 16, 16)
    fused, composed = [], []
    kept = saved_for_backward_bytes(lambda: fused.extend(reparameterised_sample_with_kl(mu, logvar, eps, 1)))
    kept_composed = saved_for_backward_bytes(lambda: composed.extend(
        (mu + torch.exp(0.5 * logvar) * eps, gaussian_kl_standard_normal(mu, logvar, 'none').flatten(1).sum(1))))
    torch.testing.assert_close(fused, composed)
    assert kept == stats.nbytes + eps.nbytes
    assert kept_composed >= stats.nbytes + eps.nbytes + 2 * mu.nbytes


def test_masked_reconstruction_value_and_zero_gradient_for_missing():
    prediction = torch.zeros(2, 2, 3, 4, requires_grad=True)
    target = torch.ones(2, 2, 3, 4, requires_grad=True)
    with torch.no_grad():
        target[0, 0] = 3.0                      # squared error 9 on a present map
        target[1, 1] = float('nan')             # a missing map may hold anything
    mask = torch.tensor([[True, False], [True, False]])
    loss = masked_reconstruction_loss(prediction, target, mask)
    # per sample: sum over present maps of 0.5 * mean squared error; mean over the two samples
    assert loss.item() == pytest.approx((0.5 * 9.0 + 0.5 * 1.0) / 2)
    loss.backward()
    assert torch.all(prediction.grad[:, 1] == 0) and torch.all(target.grad[:, 1] == 0)
    assert torch.all(prediction.grad[:, 0] != 0) and torch.all(target.grad[:, 0] != 0)


def test_masked_reconstruction_is_zero_at_equality_and_sums_over_present_modalities():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, 2, 4, 4, 4, generator=g)
    all_present = torch.ones(3, 2, dtype=torch.bool)
    assert masked_reconstruction_loss(image.clone(), image, all_present).item() == 0.0
    prediction = image + 0.5                    # error 0.25 everywhere -> NLL 0.125 nats per voxel and map
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    expected = (2 * 0.125 + 0.125 + 0.0) / 3   # Eq. 6 sums over the present modalities of each sample
    assert masked_reconstruction_loss(prediction, image, mask).item() == pytest.approx(expected, rel=1e-6)
    # the missing entries contribute exactly zero whatever their values
    garbage = prediction.clone()
    garbage[1, 1] = 1e6
    garbage[2] = float('inf')
    assert masked_reconstruction_loss(garbage, image, mask).item() == pytest.approx(expected, rel=1e-6)


def test_masked_reconstruction_all_missing_is_zero_with_graph():
    prediction = torch.randn(1, 2, 5, requires_grad=True)
    loss = masked_reconstruction_loss(prediction, torch.randn(1, 2, 5), torch.zeros(1, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(prediction.grad == 0)


def test_masked_reconstruction_shape_check():
    with pytest.raises(ValueError, match='shapes'):
        masked_reconstruction_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 3, dtype=torch.bool))


def test_orthogonality_zero_for_orthogonal_features():
    g = torch.Generator().manual_seed(0)
    specific = torch.zeros(2, 3, 4, 3, 3)       # (B, M, C, X, Y)
    common = torch.zeros(2, 4, 3, 3)
    specific[:, :, :2] = torch.randn(2, 3, 2, 3, 3, generator=g)    # channels 0, 1
    common[:, 2:] = torch.randn(2, 2, 3, 3, generator=g)            # channels 2, 3
    for normalize in (False, True):
        assert orthogonality_loss(specific, common, normalize=normalize).item() == 0.0


def test_orthogonality_hand_computed_dot_and_cosine():
    """One voxel, z = (1, 2); x_s1 = (3, 0), x_s2 = (1, 1): dot products 3 and 3, cosines 1/sqrt(5), 3/sqrt(10)."""
    common = torch.tensor([[1.0, 2.0]])                     # (B=1, C=2), no spatial axes
    specific = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])     # (B=1, M=2, C=2)
    assert orthogonality_loss(specific, common).item() == pytest.approx(9.0 + 9.0)
    assert orthogonality_loss(specific, common, normalize=True).item() == pytest.approx(0.2 + 0.9)
    only_first = torch.tensor([[True, False]])
    assert orthogonality_loss(specific, common, only_first).item() == pytest.approx(9.0)
    assert orthogonality_loss(specific, common, only_first, normalize=True).item() == pytest.approx(0.2)
    # the squared dot product grows with the feature scale, the cosine does not
    assert orthogonality_loss(2 * specific, common).item() == pytest.approx(4 * 18.0)
    assert orthogonality_loss(2 * specific, common, normalize=True).item() == pytest.approx(1.1)


def test_orthogonality_averages_voxels_and_samples():
    common = torch.tensor([1.0, 0.0]).reshape(1, 2, 1).expand(2, 2, 3).clone()     # (B=2, C=2, X=3)
    specific = torch.zeros(2, 1, 2, 3)
    specific[0, 0, 0] = torch.tensor([1.0, 2.0, 0.0])      # dot products 1, 2, 0 -> squares 1, 4, 0
    specific[1, 0, 0] = torch.tensor([3.0, 0.0, 0.0])      # 9, 0, 0
    assert orthogonality_loss(specific, common).item() == pytest.approx(((1 + 4) / 3 + 9 / 3) / 2)


def test_orthogonality_mask_excludes_entries_and_their_gradient():
    specific = torch.randn(2, 3, 4, 2, 2, requires_grad=True)
    common = torch.randn(2, 4, 2, 2)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    for normalize in (False, True):
        specific.grad = None
        loss = orthogonality_loss(specific, common, mask, normalize=normalize)
        sim = (specific * common[:, None]).sum(2) if not normalize else \
            torch.nn.functional.cosine_similarity(specific, common[:, None].expand_as(specific), dim=2)
        expected = (sim.square() * mask[:, :, None, None]).sum(1).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        loss.backward()
        assert torch.all(specific.grad[0, 1] == 0) and torch.all(specific.grad[1, :2] == 0)
        assert specific.grad[0, 0].abs().sum() > 0


def test_initial_log_variance_is_twice_the_log_of_the_std_and_refuses_a_non_positive_std():
    assert initial_log_variance(math.exp(-5.0)) == pytest.approx(-10.0)
    assert initial_log_variance(1.0) == 0.0                       # the prior's std
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError, match='initial_std must be positive'):
            initial_log_variance(bad)
