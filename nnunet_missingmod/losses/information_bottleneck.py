"""Information-bottleneck losses of SMSN (T. Liu, X. Yang, W. Wang, A. Nguyen, H. Jiang, K. Huang, "Sequential
Information Bottleneck Fusion: Towards Robust and Generalizable Multi-Modal Brain Tumor Segmentation", Sec. 4).

* :func:`gaussian_kl_standard_normal` -- the variational IB compression term ``L_e`` (Eq. 5): KL of a diagonal
  Gaussian posterior to the prior ``r(z) = N(0, I)``, closed form, always evaluated in float32; by default in
  nats per sample (summed over the latent dimensions, averaged over the batch).
* :func:`reparameterised_sample_with_kl` -- the reparameterised sample ``z = mu + sigma * eps`` of the same
  posterior together with its KL summed over the latent dimensions, as one autograd node that keeps only ``mu``,
  ``log sigma^2`` and ``eps`` for backward (CIML's gates, whose latent codes are full feature maps).
* :func:`masked_reconstruction_loss` -- one term of the availability-masked reconstruction ``L_r`` (Eq. 6): the
  negative log-likelihood of a unit-variance Gaussian decoder (half the squared error, constant dropped) in nats
  per voxel, summed over the present modalities (``M_i = 1``) and averaged over the batch. Missing modalities
  contribute exactly zero, with zero gradient, even when their entries are not finite.
* :func:`orthogonality_loss` -- ``L_o = sum_i (z_2 . x_{s_i})^2`` (Sec. 4, specific feature extraction) per
  voxel: the paper's squared dot product, or (``normalize=True``) the squared cosine similarity.
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


class _SampleWithKL(torch.autograd.Function):
    """z = mu + exp(logvar / 2) * eps and KL(N(mu, exp(logvar)) || N(0, 1)) summed over the axes from
    ``start_dim``, with the closed-form derivatives (dz/dmu = 1, dz/dlogvar = sigma * eps / 2, dKL/dmu = mu,
    dKL/dlogvar = (sigma^2 - 1) / 2)."""

    @staticmethod
    def forward(mu, logvar, eps, start_dim):
        dtype = torch.promote_types(mu.dtype, torch.float32)
        mu_, logvar_ = mu.to(dtype), logvar.to(dtype)
        std = torch.exp(0.5 * logvar_)
        z = (mu_ + std * eps.to(dtype)).to(mu.dtype)
        kl = 0.5 * (mu_.square() + std.square() - 1.0 - logvar_)
        return z, kl.flatten(start_dim).sum(-1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, logvar, eps, _ = inputs
        ctx.save_for_backward(mu, logvar, eps)

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        mu, logvar, eps = ctx.saved_tensors
        dtype = grad_kl.dtype
        std = torch.exp(0.5 * logvar.to(dtype))
        grad_kl = grad_kl.reshape(grad_kl.shape + (1,) * (mu.ndim - grad_kl.ndim))
        grad_z = grad_z.to(dtype)
        grad_mu = grad_z + grad_kl * mu.to(dtype)
        grad_logvar = 0.5 * (grad_z * std * eps.to(dtype) + grad_kl * (std.square() - 1.0))
        return grad_mu.to(mu.dtype), grad_logvar.to(logvar.dtype), None, None


def reparameterised_sample_with_kl(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, start_dim: int):
    """``(z, kl)``: the reparameterised sample ``z = mu + exp(logvar / 2) * eps`` (Kingma & Welling, ICLR 2014) in
    ``mu``'s dtype and ``KL(N(mu, exp(logvar)) || N(0, 1))`` (Eq. 5, as :func:`gaussian_kl_standard_normal`) summed
    over the axes ``start_dim`` onwards, computed in float32 for half-precision inputs (``kl`` stays float32, as
    mixed precision would overflow ``exp``), in float64 for float64 inputs.

    The same values as composing the two with autograd, but one node that keeps only ``mu``, ``logvar`` and ``eps``
    for backward, where the composition also keeps ``sigma`` and ``exp(logvar)`` (two more tensors of the latent
    code's size; with a ``mu``/``logvar`` pair cut from one convolution output, ``mu.square()`` keeps that whole
    output as well)."""
    return _SampleWithKL.apply(mu, logvar, eps, start_dim)


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Availability-masked Gaussian reconstruction NLL of a ``(B, K, *spatial)`` pair of image stacks (Eq. 6).

    ``mask`` is ``(B, K)`` bool (True = modality ``k`` present in sample ``b``, the paper's ``M_i``). Per present
    map the negative log-likelihood of a unit-variance Gaussian decoder per voxel, ``0.5 * (prediction -
    target)^2`` (the constant ``0.5 log 2 pi`` dropped), averaged over the voxels; summed over the modalities
    (Eq. 6 sums over ``i``) and averaged over the samples: **nats per voxel**, summed over the present
    modalities. Missing maps are replaced by zeros with ``torch.where`` before the error is taken, so they
    contribute exactly zero, with zero gradient (even when their entries are not finite); no present map gives 0.
    """
    if prediction.shape != target.shape or mask.shape != prediction.shape[:2]:
        raise ValueError(f"shapes do not match: prediction {tuple(prediction.shape)}, target "
                         f"{tuple(target.shape)}, mask {tuple(mask.shape)}")
    mask = mask.to(device=prediction.device, dtype=torch.bool)
    keep = mask.reshape(mask.shape + (1,) * (prediction.ndim - 2))
    prediction = torch.where(keep, prediction.float(), 0.0)
    target = torch.where(keep, target.float(), 0.0)
    nll = 0.5 * (prediction - target).square().flatten(2).mean(-1)      # (B, K)
    return nll.sum(1).mean()


def orthogonality_loss(specific: torch.Tensor, common: torch.Tensor, availability: torch.Tensor | None = None,
                       normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """``L_o = sum_i (z_2 . x_{s_i})^2`` (Sec. 4, specific feature extraction), per voxel.

    ``specific``: ``(B, M, C, *spatial)`` modality-specific features ``x_{s_i}``; ``common``: ``(B, C, *spatial)``
    (or ``(B, 1, C, *spatial)``) common features ``z_2`` (projected to ``C`` channels); ``availability``: ``(B, M)``
    bool, missing modalities contribute exactly zero with zero gradient (``None``: all present).

    The dot product is taken over the channel axis at every voxel, squared, summed over the (present) modalities
    ``i`` as the paper writes it, and averaged over voxels and samples. ``normalize=False`` (default) is the
    paper's raw dot product; ``normalize=True`` replaces it by the cosine similarity (scale-free: unlike the dot
    product it cannot be lowered by shrinking either feature map). Zero iff every present ``x_{s_i}`` is
    orthogonal to ``z_2`` at every voxel. Float32.
    """
    specific = specific.float()
    common = common.float()
    if common.ndim == specific.ndim - 1:
        common = common[:, None]
    specific, common = torch.broadcast_tensors(specific, common)
    if availability is not None:
        keep = availability.to(device=specific.device, dtype=torch.bool)
        keep = keep.reshape(keep.shape + (1,) * (specific.ndim - 2))
        specific, common = torch.where(keep, specific, 0.0), torch.where(keep, common, 0.0)
    dot = (specific * common).sum(2)                                      # (B, M, *spatial)
    if normalize:
        dot = dot / (specific.norm(dim=2) * common.norm(dim=2)).clamp_min(eps)
    return dot.square().sum(1).reshape(dot.shape[0], -1).mean(1).mean()
