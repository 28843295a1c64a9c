"""CIML per-segmentor region losses (Eq. 8: the supervised part of ``L_com = L_CE + beta * L_KL``).

Paper: C. Shen et al., "Complementary Information Mutual Learning for Multimodality Medical Image Segmentation",
arXiv:2401.02717 (2024). Sec. 4.2: the cross-entropy of Eq. 9 is used as nnU-Net's Dice + cross-entropy.

Each segmentor is supervised on a subset of the region channels with nnU-Net's own region loss
(:class:`~nnunetv2.training.loss.compound_losses.DC_and_BCE_loss`, built as ``nnUNetTrainer._build_loss`` builds
it, deep supervision weights as nnU-Net's trainer), and only on the samples in which its primary modality is
present: the loss **equals nnU-Net's loss on that sub-batch**, for both ``batch_dice`` settings. The KL part lives
in :mod:`nnunet_missingmod.losses.gaussian` and :meth:`nnunet_missingmod.methods.ciml.network.CIMLNetwork`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss


def region_channels(x: torch.Tensor, regions: Sequence[int]) -> torch.Tensor:
    """Channels ``regions`` (in that order) of a (B, C, ...) tensor, by slicing: a view for a contiguous range, else
    concatenated one-channel slices. Indexing with a Python list would copy the index to the device, one host
    synchronisation per call on a GPU."""
    regions = [int(r) for r in regions]
    if regions == list(range(regions[0], regions[0] + len(regions))):
        return x[:, regions[0]:regions[0] + len(regions)]
    return torch.cat([x[:, r:r + 1] for r in regions], 1)


class SegmentorRegionLoss(nn.Module):
    """nnU-Net's DC+BCE region loss on selected region channels of selected samples, with deep supervision.

    ``forward(outputs, targets, regions, sample_mask)``: ``outputs``/``targets`` lists (highest resolution first)
    of (B, R, ...) logits and (B, R[+1], ...) region targets (``+1``: the data set's ignore channel when
    ``has_ignore_label``); ``regions`` the channels to supervise; ``sample_mask`` (B,) bool, True = supervise.
    The value is nnU-Net's loss (``DC_and_BCE_loss`` with the trainer's ``batch_dice``) of the sub-batch
    ``outputs[sample_mask][:, regions]``; masked samples get zero gradient. An empty sub-batch gives 0.

    Both settings are computed on the whole batch with a (B, 1, ...) voxel mask, so the loss has no host sync and
    no shape that depends on the mask:

    * ``batch_dice=False`` (nnU-Net's default for 3d_fullres): nnU-Net's Dice with the mask gives a masked-out
      sample the Dice of an empty/empty pair, exactly 1 (``smooth / smooth``); the mean over the present samples
      is recovered from the mean over the batch, ``(B * L + (B - n)) / n`` for ``n`` present samples (the loss is
      the negative mean Dice), and the BCE is averaged over the present samples' voxels and regions.
    * ``batch_dice=True``: nnU-Net's Dice with the mask (the global sums over the batch equal those of the
      sub-batch) and the BCE averaged over the unmasked voxels and regions, so that under DDP every rank calls the
      Dice all-gather the same number of times (three per deep supervision level) whatever modalities it drew.
      Under DDP the Dice is the one of the sub-batches of all ranks together (nnU-Net's DDP batch Dice); a rank
      whose sub-batch is empty then contributes BCE 0 and that global Dice (zero gradient to its own outputs).
    """

    def __init__(self, batch_dice: bool, ddp: bool, deep_supervision_weights: Optional[Sequence[float]],
                 has_ignore_label: bool = False):
        super().__init__()
        # nnUNetTrainer._build_loss for regions
        self.loss = DC_and_BCE_loss({}, {'batch_dice': batch_dice, 'do_bg': True, 'smooth': 1e-5, 'ddp': ddp},
                                    use_ignore_label=has_ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        self.weights = None if deep_supervision_weights is None else tuple(float(w) for w in deep_supervision_weights)
        self.batch_dice = bool(batch_dice)
        self.ddp = bool(ddp)
        self.has_ignore_label = has_ignore_label

    def _masked(self, out: torch.Tensor, tgt: torch.Tensor, regions: Sequence[int], present: torch.Tensor):
        """nnU-Net's loss of the sub-batch, computed on the whole batch with a (B, 1, ...) voxel mask, in float32.

        float32 because a masked sample's Dice has intersection and sums 0: its derivative with respect to the sum
        is ``-1/smooth`` (1e5, over the samples and regions it is averaged over), which overflows a float16 gradient
        at the scales nnU-Net's gradient scaler uses (from 2^16), and ``inf`` times the mask's 0 is NaN, so under a
        GPU's autocast the scaler skips the step (docs/results/2026-12-04-compute-gpu-h200.md). In float32 the
        mask's 0 zeroes it like any other value."""
        out = region_channels(out, regions).float()
        target = region_channels(tgt, regions).to(torch.float32)
        mask = present.reshape((-1,) + (1,) * (tgt.ndim - 1)).expand(-1, 1, *tgt.shape[2:])
        if self.has_ignore_label:
            mask = mask & (tgt[:, -1:] == 0)
        dice = self.loss.dc(out, target, loss_mask=mask)
        b, n = present.shape[0], present.sum()
        if not self.batch_dice:                          # mean over the present samples (class docstring)
            dice = (b * dice + (b - n)) / n.clamp_min(1)
        if not (self.batch_dice and self.ddp):           # an empty sub-batch gives 0 (DDP batch Dice: the global one)
            dice = torch.where(n > 0, dice, torch.zeros_like(dice))
        bce = F.binary_cross_entropy_with_logits(out, target, reduction='none')
        # nnU-Net's BCE: mean over voxels and regions; with an ignore label, sum over regions / unmasked voxels
        count = mask.sum() * (1 if self.has_ignore_label else out.shape[1])
        bce = (bce * mask).sum() / torch.clip(count, min=1e-8)
        return self.loss.weight_ce * bce + self.loss.weight_dice * dice

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], regions: Sequence[int],
                sample_mask: torch.Tensor) -> torch.Tensor:
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
        weights = self.weights if self.weights is not None else (1.0,) * len(outputs)
        if len(weights) < len(outputs):
            raise ValueError(f"{len(outputs)} outputs but only {len(weights)} deep supervision weights")
        present = sample_mask.to(device=outputs[0].device, dtype=torch.bool)
        total = 0.0
        for w, out, tgt in zip(weights, outputs, targets):
            if w != 0.0:
                total = total + w * self._masked(out, tgt, regions, present)
        return total
