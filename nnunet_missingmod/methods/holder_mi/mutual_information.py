"""Variational mutual-information knowledge transfer between full- and missing-modality features (Eq. 3-5).

Hölder-MI (R. Cheng, X. Qiu, M. Li, Y. Zhang, C. Li, F. Yu, arXiv:2507.01254, 2025) maximises ``I(d_f; d_m) = H(d_f) - H(d_f | d_m)`` between the encoder
features of the full modality set ``d_f`` and of a modality subset ``d_m`` at K encoder levels. With the variational
lower bound of Barber & Agakov, ``H(d_f)`` is constant w.r.t. the student and the loss is the negative
log-likelihood of a Gaussian ``q(d_f | d_m)`` (Eq. 4-5)::

    L_MI = sum_k gamma_k * E[ -log q(d_f^(k) | d_m^(k)) ],
    -log q = sum_{c, voxels} log sigma_c + (d_f - mu(d_m))^2 / (2 sigma_c^2)   (+ const, dropped as in Eq. 5)

with a heteroscedastic mean ``mu_k(d_m)`` (a small per-level conv net: 1x1 conv -> LeakyReLU -> 1x1 conv, i.e. a
voxel-wise MLP, so the cost stays linear in the number of voxels) and one learned ``sigma_c`` per channel.

Decisions (documented because the paper leaves them open):

* **Normalisation.** Eq. 5 *sums* over channels and voxels; we take the *mean* over them (per sample), as the
  authors' code does (``utils/loss.py``, ``Cal_MIloss``: ``torch.mean`` of ``0.5 (d_f - mu)^2 / var + 0.5 log var``),
  so ``lambda_1`` does not depend on the patch size or the widths. Logged unit: nats per feature element.
* **Gradient side.** Gradients flow into both ``d_f`` and ``d_m`` (and ``mu``, ``sigma``), as in the authors' code
  (``trainer/trainer.py`` forms ``d_f`` as the mean of the modality features without ``detach``): the shared
  backbone is pulled towards features whose full-set mean is predictable from every subset's mean.
* **sigma.** ``sigma_c = sigma_min + softplus(rho_c)`` in float32 (initialised to 1). The floor keeps the NLL bounded
  below when a student reproduces the teacher exactly (the full set itself is one of Algorithm 1's subsets).
* **gamma_k = gamma0 * k** with ``k = 1 .. K`` the index of the used level from the shallowest to the deepest
  (Eq. 13), so deeper, semantically richer levels weigh more (Theorem 7).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn


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

    def level_nll(self, level: int, full: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """Mean NLL per leading index: ``full`` (..., C, *sp) teacher, ``missing`` (..., C, *sp) student (same
        leading shape or broadcastable from fewer leading dims). Returns the leading shape of ``missing``."""
        lead = missing.shape[:missing.ndim - 1 - self.spatial_dims]
        feat_shape = missing.shape[len(lead):]
        mu = self.mean_nets[level](missing.reshape(-1, *feat_shape)).reshape(missing.shape)
        sigma = self.sigma(level).reshape(-1, *([1] * self.spatial_dims))
        nll = gaussian_nll(full.float(), mu.float(), sigma)
        return nll.flatten(len(lead)).mean(-1)

    def forward(self, full: Sequence[torch.Tensor], missing: Sequence[torch.Tensor],
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``sum_k gamma_k * weighted mean NLL``; ``weight`` (leading shape of ``missing``) weighs the pairs
        (0 excludes one; the weighted mean divides by the weight sum, an all-zero weight gives 0)."""
        if len(full) != len(self.mean_nets) or len(missing) != len(self.mean_nets):
            raise ValueError(f"expected {len(self.mean_nets)} levels, got {len(full)} and {len(missing)}")
        total = torch.zeros((), device=missing[0].device)
        for level, (gamma, d_f, d_m) in enumerate(zip(self.gammas, full, missing)):
            per_pair = self.level_nll(level, d_f, d_m)
            if weight is None:
                value = per_pair.mean()
            else:
                w = weight.to(per_pair.dtype)
                value = (per_pair * w).sum() / w.sum().clamp(min=1.0)
            total = total + gamma * value
        return total
