"""SMSN's reconstruction and orthogonality losses (T. Liu, X. Yang, W. Wang, A. Nguyen, H. Jiang, K. Huang,
"Sequential Information Bottleneck Fusion: Towards Robust and Generalizable Multi-Modal Brain Tumor Segmentation",
Sec. 4).

* :func:`masked_reconstruction_loss` -- one term of the availability-masked reconstruction ``L_r`` (Eq. 6): the
  negative log-likelihood of a unit-variance Gaussian decoder (half the squared error, constant dropped) in nats
  per voxel, summed over the present modalities (``M_i = 1``) and averaged over the batch. Missing modalities
  contribute exactly zero, with zero gradient, even when their entries are not finite.
* :func:`orthogonality_loss` -- ``L_o = sum_i (z_2 . x_{s_i})^2`` (Sec. 4, specific feature extraction) per
  voxel: the paper's squared dot product, or (``normalize=True``) the squared cosine similarity.
"""
from __future__ import annotations

import torch


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
