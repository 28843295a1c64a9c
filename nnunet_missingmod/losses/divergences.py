"""Per-voxel divergences between predicted and label distributions: Hölder pseudo-divergence and the alternatives.

The Hölder-MI paper (``shared/seeds/001``) trains with the Hölder statistical pseudo-divergence (HPD) between the
predicted and the label distribution of every voxel (Eq. 1-2)::

    D^H_alpha(p : q) = -log( sum_c p_c q_c / ( ||p||_alpha * ||q||_beta ) ),   beta = alpha / (alpha - 1)

with ``p`` the prediction (in L^alpha), ``q`` the label (in L^beta), ``alpha = 1.1`` by default (Table VIII).
By Hölder's inequality ``D >= 0``; it is zero iff ``p^alpha`` is proportional to ``q^beta`` (a *pseudo*-divergence),
which for a one-hot label means iff the prediction is that one-hot vector.

Distributions over a voxel:

* ``'softmax'`` (label-based training): the categorical distribution over the classes.
* ``'sigmoid'`` (region-based training, nnU-Net's regions): every region channel is its own Bernoulli pair
  ``(p, 1 - p)``; the divergence is evaluated per region and averaged over regions.

Everything is evaluated from log-probabilities (``log_softmax`` / ``logsigmoid`` of the logits, so predictions never
underflow) and labels are clamped to ``eps`` before their log, so one-hot labels (zeros) stay finite:
``beta * log(eps)`` is a large negative number that ``logsumexp`` turns into an exact 0 contribution.

Alternatives of the paper's Table IV are selectable by name (:data:`DIVERGENCES`); every one is 0 when prediction and
label are the same one-hot vector and >= 0 otherwise. Directions are chosen so that one-hot labels give finite values
with a strictly positive prediction (see each function).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

#: clamp of label probabilities before their log (one-hot labels contain exact zeros)
LABEL_EPS = 1e-7


def _log_label(q: torch.Tensor, eps: float = LABEL_EPS) -> torch.Tensor:
    return torch.log(q.clamp(min=eps))


def holder_divergence(log_p: torch.Tensor, log_q: torch.Tensor, dim: int, alpha: float = 1.1) -> torch.Tensor:
    """Hölder pseudo-divergence ``D^H_alpha(p : q)`` (Eq. 2) over axis ``dim``, from log-probabilities.

    ``alpha > 1`` (then ``beta = alpha / (alpha - 1) > 1``: the conjugate pair of Eq. 12 that the paper uses).
    Computed as ``log||p||_alpha + log||q||_beta - log <p, q>``, each term a ``logsumexp``.
    """
    if alpha <= 1:
        raise ValueError(f"Hölder exponent alpha must be > 1 (alpha = 1 is the KL limit), got {alpha}")
    beta = alpha / (alpha - 1)
    log_inner = torch.logsumexp(log_p + log_q, dim)
    log_norm_p = torch.logsumexp(alpha * log_p, dim) / alpha
    log_norm_q = torch.logsumexp(beta * log_q, dim) / beta
    return log_norm_p + log_norm_q - log_inner


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor, dim: int) -> torch.Tensor:
    """``KL(label || prediction) = sum q (log q - log p)`` (cross-entropy minus label entropy; 0 log 0 = 0)."""
    q = log_q.exp()
    return (q * (log_q - log_p)).sum(dim)


def total_variation(log_p: torch.Tensor, log_q: torch.Tensor, dim: int) -> torch.Tensor:
    """``TV = 1/2 sum |p - q|`` (symmetric)."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim)


def squared_hellinger(log_p: torch.Tensor, log_q: torch.Tensor, dim: int) -> torch.Tensor:
    """``H^2 = 1/2 sum (sqrt p - sqrt q)^2 = 1 - sum sqrt(p q)`` (symmetric), evaluated as the sum of squares."""
    return 0.5 * ((0.5 * log_p).exp() - (0.5 * log_q).exp()).pow(2).sum(dim)


def neyman_chi2(log_p: torch.Tensor, log_q: torch.Tensor, dim: int) -> torch.Tensor:
    """Neyman's ``chi^2 = sum (q - p)^2 / p``: the prediction plays the 'observed' distribution in the denominator.

    With a softmax/sigmoid prediction ``p > 0`` this stays finite for one-hot labels (the other direction does not).
    """
    p = log_p.exp()
    return ((log_q.exp() - p).pow(2) * torch.exp(-log_p)).sum(dim)


def jensen_shannon(log_p: torch.Tensor, log_q: torch.Tensor, dim: int) -> torch.Tensor:
    """``JS = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``; ``log m`` via ``logaddexp`` (no eps needed)."""
    log_m = torch.logaddexp(log_p, log_q) - torch.log(torch.tensor(2.0, dtype=log_p.dtype, device=log_p.device))
    return 0.5 * ((log_p.exp() * (log_p - log_m)).sum(dim) + (log_q.exp() * (log_q - log_m)).sum(dim))


#: name -> per-voxel divergence ``f(log_p, log_q, dim)``; ``'holder'`` additionally takes ``alpha``
DIVERGENCES: Dict[str, Callable[..., torch.Tensor]] = {
    'holder': holder_divergence,
    'kl': kl_divergence,
    'total_variation': total_variation,
    'squared_hellinger': squared_hellinger,
    'neyman_chi2': neyman_chi2,
    'jensen_shannon': jensen_shannon,
}


def get_divergence(name: str) -> Callable[..., torch.Tensor]:
    """The divergence called ``name`` (case-insensitive); a clear error listing the known names."""
    key = name.lower()
    if key not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")
    return DIVERGENCES[key]


def divergence_map(logits: torch.Tensor, target: torch.Tensor, mode: str, name: str = 'holder',
                   alpha: float = 1.1, dim: int = 1) -> torch.Tensor:
    """Per-voxel divergence between the prediction ``logits`` and the label ``target`` (Eq. 1 before averaging).

    * ``mode='sigmoid'``: ``logits`` (..., R, *spatial) region logits at axis ``dim``; ``target`` the same shape with
      region membership in [0, 1]. Returns (..., R, *spatial): one Bernoulli divergence per region and voxel.
    * ``mode='softmax'``: ``logits`` (..., K, *spatial); ``target`` a probability/one-hot tensor of the same shape.
      Returns the class axis reduced: (..., *spatial).

    ``target`` may have fewer leading dimensions than ``logits`` (it is broadcast), e.g. logits of several modality
    subsets ``(S, B, K, ...)`` against one label ``(B, K, ...)`` with ``dim=2``.

    Evaluated in at least float32: under mixed precision ``LABEL_EPS`` and ``beta * log(eps)`` are outside what
    float16 resolves.
    """
    fn = get_divergence(name)
    kwargs = {'alpha': alpha} if name.lower() == 'holder' else {}
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits, target = logits.to(dtype), target.to(dtype)
    # a negative class axis addresses the same axis of a label with fewer leading dimensions
    dim = dim - logits.ndim if dim >= 0 else dim
    if mode == 'softmax':
        return fn(F.log_softmax(logits, dim), _log_label(target), dim=dim, **kwargs)
    if mode != 'sigmoid':
        raise ValueError(f"mode must be 'sigmoid' or 'softmax', got {mode!r}")
    # Bernoulli pair (p, 1 - p) on a new last axis
    log_p = torch.stack((F.logsigmoid(logits), F.logsigmoid(-logits)), -1)
    log_q = torch.stack((_log_label(target), _log_label(1 - target)), -1)
    return fn(log_p, log_q, dim=-1, **kwargs)


def divergence_loss(logits: torch.Tensor, target: torch.Tensor, mode: str, name: str = 'holder',
                    alpha: float = 1.1, dim: int = 1, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 1: mean over voxels (and regions) of :func:`divergence_map`; ``mask`` (1 = use, broadcastable to the
    returned map, i.e. without the class axis in ``'softmax'`` mode) excludes voxels such as nnU-Net's ignore label."""
    values = divergence_map(logits, target, mode, name, alpha, dim)
    if mask is None:
        return values.mean()
    mask = torch.broadcast_to(mask.to(values.dtype), values.shape)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
