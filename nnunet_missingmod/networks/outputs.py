"""What a missing-modality network returns to its trainer: the segmentation, its losses and its extra tensors."""
from __future__ import annotations

from typing import Any, Dict, NamedTuple

import torch


class NetworkOutput(NamedTuple):
    """The full result of one forward pass of a
    :class:`~nnunet_missingmod.networks.base.MissingModalityNetwork` (``network(x, availability, full_output=True)``).

    * ``segmentation``: what nnU-Net expects from ``network(x)``: a tensor, or a list of tensors (highest resolution
      first) with deep supervision;
    * ``losses``: ``{name: scalar tensor}``, the network's *unweighted* auxiliary losses; the trainer weights each
      (``aux_loss_weights``), adds it to the total and logs it. Empty in eval mode;
    * ``extras``: ``{name: tensor or list of tensors}``, further outputs that are not losses (per-subset or
      per-segmentor predictions, features, combination weights, diagnostics); a trainer's target-dependent loss
      terms read them, nothing adds them to the loss.

    A named tuple: immutable, a pytree node for ``torch.compile`` and DDP, built and read by name.
    """

    segmentation: Any
    losses: Dict[str, torch.Tensor]
    extras: Dict[str, Any]

