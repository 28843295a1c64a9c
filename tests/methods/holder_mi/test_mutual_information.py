"""Variational MI loss (Eq. 4-5) against the standardised, detached full-set features."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_missingmod.methods.holder_mi.mutual_information import VariationalMILoss, gaussian_nll


def test_gaussian_nll_closed_form():
    t, m, s = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.0]), torch.tensor([2.0, 0.5])
    expected = [math.log(2.0) + 0.25 / 8, math.log(0.5) + 4.0 / 0.5]
    np.testing.assert_allclose(gaussian_nll(t, m, s).numpy(), expected, rtol=1e-6)


def _by_hand(loss: VariationalMILoss, full, missing, weight=None):
    """Eq. 4-5 with numpy: sum_k gamma_k * weighted mean over pairs of sum_{c,voxels}(log s_c + (f-mu)^2/2s_c^2),
    f the teacher divided by its per-channel std over samples and voxels (ddof 1), mu = the per-voxel MLP (1x1 conv,
    LeakyReLU 0.01, 1x1 conv) and sigma = 0.01 + softplus(rho) from the raw parameters."""
    total = 0.0
    for level, (f, m) in enumerate(zip(full, missing)):
        first, second = loss.mean_nets[level][0], loss.mean_nets[level][2]
        w1, b1 = first.weight.detach().numpy()[:, :, 0, 0, 0], first.bias.detach().numpy()
        w2, b2 = second.weight.detach().numpy()[:, :, 0, 0, 0], second.bias.detach().numpy()
        x = np.moveaxis(m.numpy(), -4, -1)                               # channels last
        h = x @ w1.T + b1
        h = np.where(h > 0, h, 0.01 * h)
        mu = np.moveaxis(h @ w2.T + b2, -1, -4)
        sigma = 0.01 + np.log1p(np.exp(loss.rho[level].detach().numpy().astype(np.float64)))
        f = f.numpy().astype(np.float64)
        f = f / f.transpose(1, 0, 2, 3, 4).reshape(f.shape[1], -1).std(1, ddof=1).reshape(1, -1, 1, 1, 1)
        f = np.broadcast_to(f, mu.shape)
        s = sigma.reshape(-1, 1, 1, 1)
        nll = (np.log(s) + (f - mu) ** 2 / (2 * s ** 2))
        per_pair = nll.reshape(*mu.shape[:-4], -1).sum(-1)
        w = np.ones(per_pair.shape) if weight is None else weight.numpy().astype(float)
        total += loss.gammas[level] * (per_pair * w).sum() / max(w.sum(), 1.0)
    return total


def test_mi_loss_equals_hand_computation():
    torch.manual_seed(0)
    loss = VariationalMILoss([3, 5], stage_indices=[2, 4], conv_op=nn.Conv3d, gamma0=0.5)
    with torch.no_grad():  # make sigma differ per channel
        loss.rho[0].copy_(torch.tensor([-1.0, 0.0, 2.0]))
    assert loss.gammas == (1.0, 2.0)
    full = [torch.randn(2, 3, 4, 4, 4), torch.randn(2, 5, 2, 2, 2)]
    missing = [torch.randn(3, 2, 3, 4, 4, 4), torch.randn(3, 2, 5, 2, 2, 2)]  # 3 subsets x 2 samples
    weight = torch.tensor([[1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    value, _ = loss(full, missing, weight)
    assert float(value.detach()) == pytest.approx(_by_hand(loss, full, missing, weight), rel=1e-5)
    assert float(loss(full, missing)[0].detach()) == pytest.approx(_by_hand(loss, full, missing), rel=1e-5)


def test_sigma_starts_at_one_and_respects_floor():
    loss = VariationalMILoss([2], [1], sigma_min=0.05)
    np.testing.assert_allclose(loss.sigma(0).detach().numpy(), [1.0, 1.0], rtol=1e-6)
    with torch.no_grad():
        loss.rho[0].fill_(-100.0)
    assert float(loss.sigma(0).detach().min()) >= 0.05


def test_gradients_reach_student_and_heads_not_the_teacher():
    """d_f is the target of the transfer: no gradient from L_MI; the student and the heads get gradients."""
    loss = VariationalMILoss([2], [1])
    full = torch.randn(1, 2, 2, 2, 2, requires_grad=True)
    missing = torch.randn(1, 2, 2, 2, 2, requires_grad=True)
    loss([full], [missing])[0].backward()
    assert full.grad is None
    assert missing.grad is not None and float(missing.grad.abs().sum()) > 0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in loss.parameters())


def test_rescaling_the_teacher_cannot_lower_the_bound():
    """The MI is invariant to rescaling d_f per channel, and so is this bound: shrinking the teacher by 100 or one
    channel by 7 changes nothing (in raw units the NLL would fall by log 100 per element)."""
    torch.manual_seed(0)
    loss = VariationalMILoss([3], [1])
    full, missing = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    reference = float(loss([full], [missing])[0].detach())
    channel_scale = torch.tensor([1.0, 7.0, 1.0]).reshape(1, 3, 1, 1, 1)
    for scaled in (full / 100, full * channel_scale):
        assert float(loss([scaled], [missing])[0].detach()) == pytest.approx(reference, rel=1e-5)


def test_logged_figures_by_hand():
    """std_df: mean per-channel std of the raw teacher; sigma: mean sigma_c; rho: mean squared residual of the
    standardised teacher over its variance (1), weighted over the pairs."""
    torch.manual_seed(0)
    loss = VariationalMILoss([2], [1])
    with torch.no_grad():
        for p in loss.mean_nets.parameters():
            p.zero_()                                                   # mu = 0: nothing of d_f is explained
        loss.rho[0].copy_(torch.tensor([math.log(math.expm1(0.49)), math.log(math.expm1(1.99))]))
    full = torch.randn(2, 2, 3, 3, 3) * torch.tensor([2.0, 0.5]).reshape(1, 2, 1, 1, 1) + 3.0
    _, figures = loss([full], [torch.randn(2, 2, 3, 3, 3)])
    f = full.double().numpy()
    stds = f.transpose(1, 0, 2, 3, 4).reshape(2, -1).std(1, ddof=1)
    assert float(figures['mi_std_df']) == pytest.approx(stds.mean(), rel=1e-5)
    assert float(figures['mi_sigma']) == pytest.approx((0.5 + 2.0) / 2, rel=1e-5)
    standardised = f / stds.reshape(1, 2, 1, 1, 1)                    # not centred: mu = 0 misses the mean too
    assert float(figures['mi_rho']) == pytest.approx((standardised ** 2).mean(), rel=1e-4)


def test_expected_nll_is_minimal_at_the_true_spread():
    """Variational bound: for d_f ~ N(mu(d_m), s^2), in units of std(d_f) = s, the expected Eq. 5 term per element
    is log sigma + 1 / (2 sigma^2), minimal (1/2) at sigma = 1 whatever s (Monte Carlo over 200k voxels)."""
    torch.manual_seed(0)
    loss = VariationalMILoss([1], [1])
    with torch.no_grad():
        for p in loss.mean_nets.parameters():
            p.zero_()                                           # mu(d_m) = 0
    s = 0.7
    full = s * torch.randn(1, 1, 200, 100, 10)
    missing = torch.randn(1, 1, 200, 100, 10)
    values = {}
    for sigma in (0.5, 0.7, 1.0):
        with torch.no_grad():
            loss.rho[0].fill_(math.log(math.expm1(sigma - loss.sigma_min)))
        values[sigma] = float(loss([full], [missing])[0].detach()) / full.numel()
        assert values[sigma] == pytest.approx(math.log(sigma) + 1 / (2 * sigma * sigma), abs=5e-3)
    assert values[1.0] < values[0.5] and values[1.0] < values[0.7]


def test_zero_weight_keeps_parameters_in_graph():
    loss = VariationalMILoss([2], [1])
    value, _ = loss([torch.randn(1, 2, 2, 2, 2)], [torch.randn(1, 1, 2, 2, 2, 2)], torch.zeros(1, 1, dtype=torch.bool))
    value.backward()
    assert float(value.detach()) == 0.0
    assert all(p.grad is not None for p in loss.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match='stage index'):
        VariationalMILoss([2, 3], [1])
    with pytest.raises(ValueError, match='1-based'):
        VariationalMILoss([2], [0])
    loss = VariationalMILoss([2], [1])
    with pytest.raises(ValueError, match='levels'):
        loss([], [])
