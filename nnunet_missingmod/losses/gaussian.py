"""Diagonal-Gaussian latent codes against a standard-normal prior, shared by SMSN's information bottleneck (its
Eq. 5, ``L_e``) and CIML's variational gates.

* :func:`gaussian_kl_standard_normal` -- KL of a diagonal Gaussian posterior to ``N(0, I)``, closed form, always
  evaluated in float32; by default in nats per sample (summed over the latent dimensions, averaged over the batch).
* :func:`reparameterised_sample_with_kl` -- the reparameterised sample ``z = mu + sigma * eps`` of the same
  posterior together with its KL summed over the latent dimensions, as one autograd node that keeps only ``mu``,
  ``log sigma^2`` and ``eps`` for backward (CIML's gates, whose latent codes are full feature maps).
* :func:`initial_log_variance` -- the log-variance bias that starts a posterior at a given std (both methods'
  ``initial_std`` option).
"""
from __future__ import annotations

import math

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


def initial_log_variance(initial_std: float) -> float:
    """``log sigma^2 = 2 ln initial_std``: the log-variance (bias) that starts a posterior at std ``initial_std``; a
    ValueError unless ``initial_std`` is positive."""
    if not initial_std > 0:
        raise ValueError(f"initial_std must be positive, not {initial_std}")
    return 2.0 * math.log(initial_std)
