"""Variational mutual-information knowledge transfer between full- and missing-modality features (Eq. 3-5).

Hölder-MI (R. Cheng, X. Qiu, M. Li, Y. Zhang, C. Li, F. Yu, arXiv:2507.01254, 2025) maximises ``I(d_f; d_m) = H(d_f) - H(d_f | d_m)`` between the encoder
features of the full modality set ``d_f`` and of a modality subset ``d_m`` at K encoder levels. With the variational
lower bound of Barber & Agakov, ``H(d_f)`` is constant w.r.t. the student and the loss is the negative
log-likelihood of a Gaussian ``q(d_f | d_m)`` (Eq. 4-5)::

    L_MI = sum_k gamma_k * E[ -log q(d_f^(k) | d_m^(k)) ],
    -log q = sum_{c, voxels} log sigma_c + (d_f - mu(d_m))^2 / (2 sigma_c^2)   (+ const, dropped as in Eq. 5)

with a heteroscedastic mean ``mu_k(d_m)`` (a small per-level conv net: 1x1 conv -> LeakyReLU -> 1x1 conv, i.e. a
voxel-wise MLP, so the cost stays linear in the number of voxels) and one learned ``sigma_c`` per channel.

Decisions (documented because the paper leaves them open or its literal reading can be gamed):

* **The teacher in its own units.** The mutual information is invariant to rescaling ``d_f`` channel by channel;
  the Gaussian bound is not: in raw units it falls by ``log s`` per element when every feature shrinks by ``s``,
  and a backbone trained through this term does shrink them (the heads then sharpen ``sigma`` and the gradient
  grows as ``1 / sigma^2``). The bound is therefore evaluated on the teacher standardised per channel,
  ``d_f / std_c(d_f)`` (statistics over the batch and the voxels, detached), with ``sigma_c`` in those units: as
  scale-free as the MI it bounds, and it falls only when ``mu(d_m)`` explains more of ``d_f``. The unexplained
  fraction ``rho = E(d_f - mu)^2 / Var(d_f)`` and ``std_c(d_f)`` are logged.
* **Gradient side.** ``d_f`` is the target of the transfer (full set -> subsets) and gets no gradient from
  ``L_MI``; the students ``d_m`` and the heads ``mu``, ``sigma`` do. (The authors' code forms ``d_f`` without
  ``detach``, but never hands its variational heads to the optimiser: what it trains is a fixed-variance
  regression of ``d_f`` on ``d_m``.)
* **Normalisation.** Eq. 5 *sums* over channels and voxels: the loss is in **nats per sample** (summed over the
  elements of a level, weighted mean over the (subset, sample) pairs), a per-sample term that the trainer scales
  by the patch's output elements like every information term.
* **sigma.** ``sigma_c = sigma_min + softplus(rho_c)`` in float32 (initialised to 1, in units of ``std_c(d_f)``).
  The floor keeps the NLL bounded below when a student reproduces the teacher exactly (the full set itself is one
  of Algorithm 1's subsets).
* **gamma_k = gamma0 * k** with ``k = 1 .. K`` the index of the used level from the shallowest to the deepest
  (Eq. 13), so deeper, semantically richer levels weigh more (Theorem 7).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn


#: floor of a teacher channel's standard deviation (a constant channel is not rescaled by 1 / 0)
STD_EPS = 1e-6


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Element-wise ``log sigma + (target - mean)^2 / (2 sigma^2)`` (Eq. 5 without the constant)."""
    return torch.log(sigma) + (target - mean).pow(2) / (2 * sigma.pow(2))


class VariationalMILoss(nn.Module):
    """L_MI over several encoder levels; owns the mean networks ``mu_k`` and the per-channel ``sigma``.

    Args:
        channels: channels of each used level.
        stage_indices: 1-based index ``k`` of each used level, shallowest first (sets ``gamma_k = gamma0 * k``).
        conv_op: ``nn.Conv1d/2d/3d`` matching the features.
        gamma0: base weight ``gamma0``.
        sigma_min: floor of ``sigma``.
    """

    def __init__(self, channels: Sequence[int], stage_indices: Sequence[int], conv_op: Type[nn.Module] = nn.Conv3d,
                 gamma0: float = 1.0, sigma_min: float = 1e-2):
        super().__init__()
        if len(channels) != len(stage_indices) or not channels:
            raise ValueError(f"need one stage index per level, got channels {channels} and stages {stage_indices}")
        if any(k < 1 for k in stage_indices):
            raise ValueError(f"stage indices are 1-based, got {stage_indices}")
        self.stage_indices = tuple(int(k) for k in stage_indices)
        self.gamma0 = float(gamma0)
        self.sigma_min = float(sigma_min)
        self.spatial_dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[conv_op]
        self.mean_nets = nn.ModuleList(
            nn.Sequential(conv_op(c, c, 1), nn.LeakyReLU(0.01, inplace=True), conv_op(c, c, 1)) for c in channels)
        # sigma = sigma_min + softplus(rho); rho initialised so that sigma starts at 1
        rho0 = math.log(math.expm1(1.0 - self.sigma_min))
        self.rho = nn.ParameterList(nn.Parameter(torch.full((c,), rho0)) for c in channels)

    @property
    def gammas(self) -> tuple:
        return tuple(self.gamma0 * k for k in self.stage_indices)

    def sigma(self, level: int) -> torch.Tensor:
        return self.sigma_min + F.softplus(self.rho[level].float())

    def level_nll(self, level: int, full: torch.Tensor, missing: torch.Tensor):
        """NLL summed over the elements of one level, per leading index, and the level's logged figures.

        ``full`` (B, C, *sp) teacher (standardised per channel and detached here), ``missing`` (..., B, C, *sp)
        students. Returns the NLL with the leading shape of ``missing`` and ``{'std_df', 'sigma', 'rho'}``: the
        teacher's mean per-channel std (raw units), the mean ``sigma_c`` (teacher units) and, per leading index,
        the unexplained fraction of the teacher's variance."""
        lead = missing.shape[:missing.ndim - 1 - self.spatial_dims]
        feat_shape = missing.shape[len(lead):]
        full = full.detach().float()
        channel_axes = [0] + list(range(2, full.ndim))
        std = full.std(dim=channel_axes, keepdim=True).clamp_min(STD_EPS)                # (1, C, 1, ...)
        target = full / std
        mu = self.mean_nets[level](missing.reshape(-1, *feat_shape)).reshape(missing.shape).float()
        sigma = self.sigma(level).reshape(-1, *([1] * self.spatial_dims))
        nll = gaussian_nll(target, mu, sigma).flatten(len(lead)).sum(-1)
        residual = (target - mu).square().flatten(len(lead)).mean(-1)
        variance = target.var(dim=channel_axes).mean()
        figures = {'std_df': std.mean(), 'sigma': sigma.mean(), 'rho': residual / variance.clamp_min(STD_EPS)}
        return nll, figures

    def forward(self, full: Sequence[torch.Tensor], missing: Sequence[torch.Tensor],
                weight: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``sum_k gamma_k * weighted mean NLL`` in nats per sample, and the logged figures of the deepest level
        (``mi_std_df``, ``mi_sigma``, ``mi_rho``; ``rho`` with the same pair weights). ``weight`` (leading shape of
        ``missing``) weighs the pairs (0 excludes one; the weighted mean divides by the weight sum, an all-zero
        weight gives 0)."""
        if len(full) != len(self.mean_nets) or len(missing) != len(self.mean_nets):
            raise ValueError(f"expected {len(self.mean_nets)} levels, got {len(full)} and {len(missing)}")
        total = torch.zeros((), device=missing[0].device)
        for level, (gamma, d_f, d_m) in enumerate(zip(self.gammas, full, missing)):
            per_pair, figures = self.level_nll(level, d_f, d_m)
            w = torch.ones_like(per_pair) if weight is None else weight.to(per_pair.dtype)
            total = total + gamma * (per_pair * w).sum() / w.sum().clamp(min=1.0)
        rho = (figures['rho'].detach() * w).sum() / w.sum().clamp(min=1.0)
        return total, {'mi_std_df': figures['std_df'], 'mi_sigma': figures['sigma'].detach(), 'mi_rho': rho}
