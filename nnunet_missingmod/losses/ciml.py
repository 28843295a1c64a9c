"""CIML per-segmentor region losses (Eq. 8: the supervised part of L_com = L_CE + beta * L_KL).

Each segmentor is supervised on a subset of the region channels with nnU-Net's own region loss
(:class:`~nnunetv2.training.loss.compound_losses.DC_and_BCE_loss`, deep supervision weights as nnU-Net's trainer),
and only on the samples in which its primary modality is present. The per-sample selection is written as
nnU-Net's ignore-label mask (an extra last target channel, 1 = ignore), so every rank of a DDP run calls the
(batch-)Dice all-gather the same number of times whatever modalities it drew. The KL part lives in
:mod:`nnunet_missingmod.losses.information_bottleneck` and in :meth:`nnunet_missingmod.networks.ciml.CIGModule.kl`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss


class SegmentorRegionLoss(nn.Module):
    """nnU-Net's DC+BCE region loss on selected region channels of selected samples, with deep supervision.

    ``forward(outputs, targets, regions, sample_mask)``: ``outputs``/``targets`` lists (highest resolution first)
    of (B, R, ...) logits and (B, R[+1], ...) region targets (``+1``: the data set's ignore channel when
    ``has_ignore_label``); ``regions`` the channels to supervise; ``sample_mask`` (B,) bool, True = supervise.
    Samples outside the mask contribute neither to BCE nor to Dice (their Dice terms are the constant of an
    empty/empty pair) and give zero gradient.
    """

    def __init__(self, batch_dice: bool, ddp: bool, deep_supervision_weights: Optional[Sequence[float]],
                 has_ignore_label: bool = False):
        super().__init__()
        self.loss = DC_and_BCE_loss({}, {'batch_dice': batch_dice, 'do_bg': True, 'smooth': 1e-5, 'ddp': ddp},
                                    use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)
        self.weights = None if deep_supervision_weights is None else tuple(float(w) for w in deep_supervision_weights)
        self.has_ignore_label = has_ignore_label

    def _masked_target(self, target: torch.Tensor, regions: Sequence[int], sample_mask: torch.Tensor):
        ignore = (~sample_mask.to(device=target.device, dtype=torch.bool)).to(torch.float32)
        ignore = ignore.reshape((-1,) + (1,) * (target.ndim - 1)).expand(-1, 1, *target.shape[2:])
        if self.has_ignore_label:
            ignore = torch.maximum(ignore, target[:, -1:].to(torch.float32))
        return torch.cat((target[:, list(regions)].to(torch.float32), ignore), 1)

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], regions: Sequence[int],
                sample_mask: torch.Tensor) -> torch.Tensor:
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        weights = self.weights if self.weights is not None else (1.0,) * len(outputs)
        if len(weights) < len(outputs):
            raise ValueError(f"{len(outputs)} outputs but only {len(weights)} deep supervision weights")
        total = 0.0
        for w, out, tgt in zip(weights, outputs, targets):
            if w == 0.0:
                continue
            total = total + w * self.loss(out[:, list(regions)], self._masked_target(tgt, regions, sample_mask))
        return total
