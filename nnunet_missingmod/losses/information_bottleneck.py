"""Information-bottleneck losses of SMSN (Liu et al., "Sequential information bottleneck fusion").

* :func:`gaussian_kl_standard_normal` -- the variational IB compression term ``L_e`` (Eq. 5): KL of a diagonal
  Gaussian posterior to the prior ``r(z) = N(0, I)``, closed form, always evaluated in float32.
* :func:`masked_reconstruction_loss` -- one term of the availability-masked reconstruction ``L_r`` (Eq. 6): the
  negative log-likelihood of a unit-variance Gaussian decoder (= half the squared error, up to a constant),
  counted only for present modalities (``M_i = 1``). Missing modalities contribute exactly zero, with zero
  gradient, even when their entries are not finite.
* :func:`orthogonality_loss` -- ``L_o = sum_i (z_2 . x_{s_i})^2`` (Sec. 4, specific feature extraction), written
  scale-free as the squared cosine similarity along the feature axis.
"""
from __future__ import annotations

import torch


def gaussian_kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = 'batchmean'
                                ) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` per element: ``0.5 * (mu^2 + exp(logvar) - 1 - logvar)`` (Eq. 5).

    Computed in float32 whatever the input dtype (mixed precision would overflow ``exp``). ``reduction``:

    * ``'batchmean'`` (default): summed over every latent dimension of a sample (all axes but the first) and
      averaged over samples -- the KL of the whole latent code in **nats per sample**, the reduction of the
      variational information bottleneck (Alemi et al., ICLR 2017) and of a VAE's ELBO;
    * ``'none'`` (per element), ``'sum'``, or ``'mean'`` (per latent element).
    """
    mu, logvar = mu.float(), logvar.float()
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
    if reduction == 'none':
        return kl
    if reduction == 'batchmean':
        return kl.flatten(1).sum(1).mean() if kl.ndim > 1 else kl.sum()
    if reduction == 'sum':
        return kl.sum()
    if reduction == 'mean':
        return kl.mean()
    raise ValueError(f"unknown reduction {reduction!r}; use 'batchmean', 'none', 'sum' or 'mean'")


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the present entries of a ``(B, K, ...)`` pair of feature stacks (Eq. 6).

    ``mask`` is ``(B, K)`` bool (True = modality present). Each present ``(b, k)`` feature map contributes its
    mean squared error; the result is the average over present maps (0 when none is present). Missing maps are
    replaced by zeros with ``torch.where`` before the error is taken, so they contribute neither value nor gradient
    (not even NaN).
    """
    if prediction.shape != target.shape or mask.shape != prediction.shape[:2]:
        raise ValueError(f"shapes do not match: prediction {tuple(prediction.shape)}, target "
                         f"{tuple(target.shape)}, mask {tuple(mask.shape)}")
    mask = mask.to(device=prediction.device, dtype=torch.bool)
    keep = mask.reshape(mask.shape + (1,) * (prediction.ndim - 2))
    prediction = torch.where(keep, prediction.float(), 0.0)
    target = torch.where(keep, target.float(), 0.0)
    error = (prediction - target).square().flatten(2).mean(-1)
    return error.sum() / mask.sum().clamp_min(1)


def orthogonality_loss(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, dim: int = 1,
                       eps: float = 1e-6) -> torch.Tensor:
    """Squared cosine similarity of ``a`` and ``b`` along the feature axis ``dim``, averaged (``L_o``, Sec. 4).

    The paper writes ``L_o = sum_i (z_2 . x_{s_i})^2``; normalising the dot product makes the term independent of
    feature scale and width. The similarity is taken per position (every voxel's feature vector) and averaged
    over positions; ``mask`` (broadcastable to the similarity map, i.e. to the inputs without ``dim``, e.g.
    ``(B, K, 1, 1, 1)`` for ``(B, K, C, X, Y, Z)`` stacks of feature maps) selects the entries that count (missing modalities contribute nothing and get no gradient). Zero iff the
    feature vectors are orthogonal everywhere.
    """
    a, b = torch.broadcast_tensors(a.float(), b.float())
    if mask is not None:
        mask = torch.broadcast_to(mask.to(device=a.device, dtype=torch.bool).unsqueeze(dim), a.shape)
        a, b = torch.where(mask, a, 0.0), torch.where(mask, b, 0.0)
    cos = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(eps)
    sq = cos.square()
    if mask is None:
        return sq.mean()
    counted = mask.select(dim, 0)
    return sq.sum() / counted.sum().clamp_min(1)
