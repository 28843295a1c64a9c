"""Divergences between predicted and label distributions: the Hölder pseudo-divergence and Table IV's alternatives.

Hölder-MI (R. Cheng, X. Qiu, M. Li, Y. Zhang, C. Li, F. Yu, "Robust brain tumor segmentation with incomplete MRI
modalities using Hölder divergence and mutual information-enhanced knowledge transfer", arXiv:2507.01254, 2025;
conference version: R. Cheng, Z. Sun, Y. Zhang, C. Li, "Robust divergence learning for missing-modality
segmentation", China Automation Congress 2024, arXiv:2411.08305) trains with the Hölder statistical
pseudo-divergence (HPD, Definition 1 / Eq. 2) between two *densities* ``p`` and ``q`` on a domain ``Omega``::

    D^H_alpha(p : q) = -log( int p q / ( ||p||_alpha * ||q||_beta ) ),   beta = alpha / (alpha - 1)

``alpha = 1.1`` by default (Table VIII). By Hölder's inequality ``D >= 0``, with equality iff ``p^alpha`` is
proportional to ``q^beta`` (a *pseudo*-divergence). ``D`` is invariant to rescaling ``p`` or ``q``.

**Which distributions.** Definition 1 compares densities on a domain ``Omega``; the paper and its authors' code
choose three different domains, :data:`DOMAINS`:

* ``'voxel'`` (default): Eq. 1 as printed, a mean over voxels of ``D(sigma(S^p_dhw) | sigma(S^l_dhw))``, i.e. per
  voxel and region the divergence between the predicted and the label's Bernoulli distribution ``(p, 1 - p)``
  (the categorical distribution over classes for softmax labels). Against a hard label it is
  ``-log p_y + log ||(p, 1 - p)||_alpha``: zero exactly at a perfect prediction, with a cross-entropy-like
  gradient that the Dice-only segmentation term (Eq. 6) does not have.
* ``'image'``: per sample and class, the probability map and the label map each turned into a density over all
  voxels of the patch by a softmax. Both are softmaxes of values in [0, 1], so their contrast is at most e : 1,
  while ``D = 0`` needs ``p^alpha`` proportional to ``q^beta``, a log-contrast of ``beta / alpha`` (about 10 at
  alpha = 1.1): the term cannot reach zero, and for a small tumour a perfect prediction lowers it by about a tenth
  of its value at a uniform prediction.
* ``'axis'``: the authors' code (``Lboy11/Brain-Tumor-Segmentation``, ``utils/loss.py``, ``DiceCoef``): the same
  softmax along the first spatial axis only, averaged over the other positions; it floors the same way.

The default is the one reading that can reach zero; that it falls in training is checked in the training log
(the results pages under docs/results/ record the measurement). Voxels excluded by a mask (nnU-Net's ignore label)
get no gradient in every domain.

Alternatives of Table IV are selectable by name (:data:`DIVERGENCES`): total variation, squared Hellinger, KL,
Neyman chi^2, Jensen-Shannon (in the same domain as the Hölder divergence), and the two standard losses MSE and BCE
(:data:`VOXEL_LOSSES`, always per voxel between the probability and the label). Every divergence is 0 when the two
distributions are equal and >= 0 otherwise. Everything is evaluated from log-densities (``log_softmax`` /
``logsigmoid``) in at least float32.
"""
from __future__ import annotations

import math
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
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
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


#: Table IV's standard losses: evaluated per voxel between the predicted probability and the label
VOXEL_LOSSES = ('mse', 'bce')

#: where the distributions compared by a divergence live, see the module docstring
DOMAINS = ('voxel', 'image', 'axis')


def check_loss_name(name: str, domain: str = 'image') -> None:
    """A clear error for an unknown divergence / loss name or domain."""
    if name.lower() not in VOXEL_LOSSES:
        get_divergence(name)
    if domain not in DOMAINS:
        raise ValueError(f"unknown divergence domain {domain!r}; choose one of {DOMAINS}")


def divergence_map(logits: torch.Tensor, target: torch.Tensor, mode: str, name: str = 'holder',
                   alpha: float = 1.1, dim: int = 1) -> torch.Tensor:
    """Per-voxel divergence (``domain='voxel'``, the literal reading of Eq. 1) between ``logits`` and ``target``.

    * ``mode='sigmoid'``: ``logits`` (..., R, *spatial) region logits at axis ``dim``; ``target`` the same shape with
      region membership in [0, 1]. Returns (..., R, *spatial): one Bernoulli divergence per region and voxel.
    * ``mode='softmax'``: ``logits`` (..., K, *spatial); ``target`` a probability/one-hot tensor of the same shape.
      Returns the class axis reduced: (..., *spatial).

    ``target`` may have fewer leading dimensions than ``logits`` (it is broadcast), e.g. logits of several modality
    subsets ``(S, B, K, ...)`` against one label ``(B, K, ...)`` with ``dim=2``.
    """
    fn = get_divergence(name)
    kwargs = {'alpha': alpha} if name.lower() == 'holder' else {}
    logits, target = _at_least_float32(logits, target)
    dim = dim - logits.ndim if dim >= 0 else dim
    if mode == 'softmax':
        return fn(F.log_softmax(logits, dim), _log_label(target), dim=dim, **kwargs)
    _check_mode(mode)
    # Bernoulli pair (p, 1 - p) on a new last axis
    log_p = torch.stack((F.logsigmoid(logits), F.logsigmoid(-logits)), -1)
    log_q = torch.stack((_log_label(target), _log_label(1 - target)), -1)
    return fn(log_p, log_q, dim=-1, **kwargs)


def image_divergence(logits: torch.Tensor, target: torch.Tensor, mode: str, name: str = 'holder',
                     alpha: float = 1.1, dim: int = 1, mask: Optional[torch.Tensor] = None,
                     domain: str = 'image') -> torch.Tensor:
    """Divergence between the predicted and the label density *over the image* (``domain='image'``, default).

    ``logits`` (..., K, *spatial) with the class axis at ``dim`` (everything after it is spatial); ``target`` the
    region / one-hot label map of the same shape (fewer leading dims are broadcast). Per class the probability map
    (sigmoid, or softmax over classes) and the label map are each turned into a density over all voxels by a
    spatial softmax, and the divergence is taken over the voxels. Returns (..., K) for ``'sigmoid'`` and
    (..., K - 1) for ``'softmax'`` (background excluded). ``domain='axis'`` is the authors' code: the softmax and
    the divergence run along the first spatial axis only, averaged over the other spatial positions. ``mask`` (1 = use; broadcastable to ``logits`` without the
    class axis kept as size 1) zeroes excluded voxels in both maps before the softmax.
    """
    fn = get_divergence(name)
    kwargs = {'alpha': alpha} if name.lower() == 'holder' else {}
    logits, target = _at_least_float32(logits, target)
    dim = dim % logits.ndim
    if mode == 'softmax':
        probabilities = torch.softmax(logits, dim).narrow(dim, 1, logits.shape[dim] - 1)
        target = target.narrow(dim - logits.ndim + target.ndim, 1, target.shape[dim - logits.ndim] - 1)
    else:
        _check_mode(mode)
        probabilities = torch.sigmoid(logits)
    if mask is not None:
        keep = mask.to(dtype=torch.bool, device=logits.device)
        probabilities = torch.where(keep, probabilities, 0.0)
        target = torch.where(keep, target, 0.0)
    probabilities, target = torch.broadcast_tensors(probabilities, target)
    if domain == 'axis':
        log_p, log_q = F.log_softmax(probabilities, dim + 1), F.log_softmax(target, dim + 1)
        return fn(log_p, log_q, dim=dim + 1, **kwargs).flatten(dim + 1).mean(-1)
    log_p = F.log_softmax(probabilities.flatten(dim + 1), -1)
    log_q = F.log_softmax(target.flatten(dim + 1), -1)
    return fn(log_p, log_q, dim=-1, **kwargs)


def voxel_loss(logits: torch.Tensor, target: torch.Tensor, mode: str, name: str, dim: int = 1) -> torch.Tensor:
    """Table IV's standard losses per voxel: squared error of the probability (``'mse'``) or binary / categorical
    cross-entropy (``'bce'``), shaped like :func:`divergence_map`'s output."""
    logits, target = _at_least_float32(logits, target)
    dim = dim - logits.ndim if dim >= 0 else dim
    if mode == 'softmax':
        if name == 'mse':
            return (torch.softmax(logits, dim) - target).square().sum(dim)
        return -(target * F.log_softmax(logits, dim)).sum(dim)
    _check_mode(mode)
    if name == 'mse':
        return (torch.sigmoid(logits) - target).square()
    return F.binary_cross_entropy_with_logits(logits, torch.broadcast_to(target, logits.shape), reduction='none')


def divergence_loss(logits: torch.Tensor, target: torch.Tensor, mode: str, name: str = 'holder',
                    alpha: float = 1.1, dim: int = 1, mask: Optional[torch.Tensor] = None,
                    domain: str = 'image') -> torch.Tensor:
    """``L_HD`` (Eq. 1) or a Table IV alternative, averaged to a scalar.

    ``domain='voxel'``: mean over voxels (and regions) of :func:`divergence_map`; ``'image'`` / ``'axis'``: mean over
    samples and classes (and, for ``'axis'``, positions) of :func:`image_divergence`. ``'mse'``/``'bce'`` are per-voxel losses whatever the domain.
    ``mask`` (1 = use) is broadcastable to the logits without the class axis (kept as size 1 at ``dim``).
    """
    check_loss_name(name, domain)
    name = name.lower()
    if name in VOXEL_LOSSES or domain == 'voxel':
        values = voxel_loss(logits, target, mode, name, dim) if name in VOXEL_LOSSES else \
            divergence_map(logits, target, mode, name, alpha, dim)
        if mask is None:
            return values.mean()
        if mode == 'softmax':
            mask = mask.squeeze(dim - logits.ndim + mask.ndim)
        mask = torch.broadcast_to(mask.to(values.dtype), values.shape)
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return image_divergence(logits, target, mode, name, alpha, dim, mask, domain).mean()


def _check_mode(mode: str) -> None:
    if mode not in ('sigmoid', 'softmax'):
        raise ValueError(f"mode must be 'sigmoid' or 'softmax', got {mode!r}")


def _at_least_float32(logits: torch.Tensor, target: torch.Tensor):
    """Under mixed precision ``LABEL_EPS`` and ``beta * log(eps)`` are outside what float16 resolves."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return logits.to(dtype), target.to(dtype)
