"""The protocol between missing-modality trainers, networks and predictors.

A :class:`MissingModalityNetwork` is called as::

    seg = network(x)                                        # stock nnU-Net predictor / validation
    seg = network(x, availability)                          # benchmark / masked prediction
    seg, aux = network(x, availability, return_aux=True)    # training step of our trainers

* ``x``: (B, M, *patch) with missing modalities zero-filled.
* ``availability``: (B, M) bool, True = present. ``None`` -> derived from all-zero channels
  (:func:`nnunet_missingmod.modalities.detect_availability`), so the stock ``nnUNetv2_predict`` works.
* ``seg``: exactly what nnU-Net expects: a tensor, or a list of tensors (highest resolution first) when deep
  supervision is enabled.
* ``aux``: ``{name: scalar tensor}`` of *unweighted* auxiliary losses. The trainer multiplies each by its
  weight (``aux_loss_weights`` class attribute of the trainer), adds them to nnU-Net's segmentation loss and logs
  every term per epoch. Losses that need the target (e.g. Hölder divergence) are computed by the trainer from
  extra outputs the network returns in ``aux`` under names starting with ``'_'`` (not losses, not logged).
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Dict

import torch
from torch import nn

from nnunet_missingmod.modalities import resolve_availability


class MissingModalityNetwork(nn.Module, metaclass=ABCMeta):
    """Base class: resolves the availability mask and defines the training/inference call protocol."""

    def forward(self, x: torch.Tensor, availability: torch.Tensor | None = None, return_aux: bool = False):
        if self.training and availability is not None:
            # the trainer's mask (drawn and checked on the host): checking it again here would read it back from
            # the device, a host sync per training step that also breaks torch.compile's graph
            availability = torch.as_tensor(availability, dtype=torch.bool, device=x.device)
        else:
            availability = resolve_availability(x, availability)
        seg, aux = self.forward_with_mask(x, availability)
        return (seg, aux) if return_aux else seg

    @abstractmethod
    def forward_with_mask(self, x: torch.Tensor, availability: torch.Tensor):
        """Return ``(seg_outputs, aux)``; ``aux`` may be empty in eval mode."""

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Switch deep supervision outputs on/off (nnU-Net turns it off for validation and inference)."""
        for module in self.modules():
            if module is not self and hasattr(module, 'deep_supervision'):
                module.deep_supervision = enabled


AuxLosses = Dict[str, torch.Tensor]
