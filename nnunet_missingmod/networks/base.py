"""The protocol between missing-modality trainers, networks and predictors.

A :class:`MissingModalityNetwork` is called as::

    seg = network(x)                                        # stock nnU-Net predictor / validation
    seg = network(x, availability)                          # benchmark / masked prediction
    out = network(x, availability, full_output=True)        # training step of our trainers: a NetworkOutput

* ``x``: (B, M, *patch) with missing modalities zero-filled.
* ``availability``: (B, M) bool, True = present. ``None`` -> derived from all-zero channels
  (:func:`nnunet_missingmod.modalities.detect_availability`), so the stock ``nnUNetv2_predict`` works.
* ``seg`` / ``out.segmentation``: exactly what nnU-Net expects: a tensor, or a list of tensors (highest resolution
  first) when deep supervision is enabled.
* ``out.losses``: ``{name: scalar tensor}`` of *unweighted* auxiliary losses. The trainer multiplies each by its
  weight (``aux_loss_weights`` class attribute of the trainer), adds them to nnU-Net's segmentation loss and logs
  every term per epoch.
* ``out.extras``: ``{name: tensor or list}`` of further outputs that are not losses (e.g. the per-subset
  predictions from which the trainer computes target-dependent losses such as the Hölder divergence); never
  added to the loss.

(:class:`~nnunet_missingmod.networks.outputs.NetworkOutput`.) Every network is built from nnU-Net plans by the one
builder :meth:`MissingModalityNetwork.from_plans`, with one signature for all methods.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Iterable, Tuple

import torch
from torch import nn

from nnunet_missingmod.modalities import resolve_availability
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.networks.plans import PlansArchitecture


class MissingModalityNetwork(nn.Module, metaclass=ABCMeta):
    """Base class: resolves the availability mask, defines the training/inference call protocol and the builder."""

    def forward(self, x: torch.Tensor, availability: torch.Tensor | None = None, full_output: bool = False):
        if self.training and availability is not None:
            # the trainer's mask (drawn and checked on the host): checking it again here would read it back from
            # the device, a host sync per training step that also breaks torch.compile's graph
            availability = torch.as_tensor(availability, dtype=torch.bool, device=x.device)
        else:
            availability = resolve_availability(x, availability)
        output = self.forward_with_mask(x, availability)
        return output if full_output else output.segmentation

    @abstractmethod
    def forward_with_mask(self, x: torch.Tensor, availability: torch.Tensor) -> NetworkOutput:
        """The full :class:`~nnunet_missingmod.networks.outputs.NetworkOutput`; ``losses`` may be empty in eval
        mode."""

    # ------------------------------------------------------------------ knock-outs
    def knockout_paths(self) -> Tuple[str, ...]:
        """Names of the information paths of this network that :meth:`set_knockout` can remove (none here)."""
        return ()

    def set_knockout(self, names: Iterable[str]) -> None:
        """Remove the named information paths from every following forward pass (``()`` restores them): each
        submodule with a ``knocked_out`` attribute gets the set of names and leaves those paths out. A name the
        network does not have is a ``ValueError`` naming the ones it has."""
        names = frozenset(names)
        unknown = sorted(names - set(self.knockout_paths()))
        if unknown:
            have = ', '.join(self.knockout_paths()) or 'none'
            raise ValueError(f"{type(self).__name__} has no information path {', '.join(unknown)} to knock out "
                             f"(it has: {have})")
        for module in self.modules():
            if hasattr(module, 'knocked_out'):
                module.knocked_out = names

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Switch deep supervision outputs on/off (nnU-Net turns it off for validation and inference)."""
        for module in self.modules():
            if module is not self and hasattr(module, 'deep_supervision'):
                module.deep_supervision = enabled

    # ------------------------------------------------------------------ the one builder
    @classmethod
    def from_plans(cls, configuration_manager, num_input_channels: int, num_output_channels: int, *,
                   width_factor: float, deep_supervision: bool = True, **method_kwargs):
        """Build the network from nnU-Net plans, the same call for every method.

        ``configuration_manager``: nnU-Net's ``ConfigurationManager`` of the configuration (or a
        :class:`~nnunet_missingmod.networks.plans.PlansArchitecture`); ``num_input_channels``: modalities;
        ``num_output_channels``: classes or regions; ``width_factor``: every width of the plans' network times this
        factor (no default here: the trainers' class attribute is the one default) (:func:`~nnunet_missingmod.networks.plans.scale_widths`, with its floor); ``deep_supervision``:
        nnU-Net's deep-supervision outputs; ``method_kwargs``: the method's own options (see the subclass's
        :meth:`build_from_architecture`).
        """
        return cls.build_from_architecture(PlansArchitecture.of(configuration_manager), num_input_channels,
                                           num_output_channels, width_factor=width_factor,
                                           deep_supervision=deep_supervision, **method_kwargs)

    @classmethod
    def build_from_architecture(cls, architecture: PlansArchitecture, num_input_channels: int,
                                num_output_channels: int, *, width_factor: float, deep_supervision: bool,
                                **method_kwargs) -> 'MissingModalityNetwork':
        """The method's part of :meth:`from_plans`: build from the plans' (unscaled) architecture. Every network
        of this package implements it; a network that is never built from plans need not."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from plans: it does not implement "
                                  f"build_from_architecture")
