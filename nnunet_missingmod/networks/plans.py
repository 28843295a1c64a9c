"""Reading a network description out of nnU-Net plans: operator classes, scaled stage widths and plain U-Nets."""
from __future__ import annotations

import pydoc
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from torch import nn

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans


def resolve_arch_kwargs(arch_kwargs: dict, requires_import: Sequence[str]) -> dict:
    """The plans' ``arch_kwargs`` with the names in ``_kw_requires_import`` turned into classes (as nnU-Net's
    ``get_network_from_plans`` does); a name that cannot be imported is a clear error."""
    resolved = dict(arch_kwargs)
    for key in requires_import:
        if resolved.get(key) is not None:
            located = pydoc.locate(resolved[key])
            if located is None:
                raise ImportError(f"plans name {resolved[key]!r} for {key!r}, which cannot be imported")
            resolved[key] = located
    return resolved


#: no scaled stage is narrower than ``min(plans width, MIN_STAGE_WIDTH)`` channels
MIN_STAGE_WIDTH = 8


def scale_widths(features_per_stage: int | Sequence[int], width_factor: float, n_stages: int | None = None
                 ) -> list[int]:
    """Stage widths times ``width_factor``, rounded, but never narrower than ``min(plans width, 8)`` channels.

    The floor: on small plans (widths 8-64) a factor of 3/16 leaves 2, 3 and 6 channels in the first stages. A
    user's CIML (budget) on such plans learned no tumour core or enhancing tumour at all; on synthetic gliomas
    (widths 8-32, 1250 iterations) the floor raised its 15-subset Dice from 69.0 / 56.4 / 44.1 to 77.3 / 65.1 /
    54.2 (WT / TC / ET). nnU-Net itself never plans a stage narrower than its base width (32 for 3d_fullres), so 8
    is far below anything it would choose, while a stage narrower in the plans than 8 keeps its plans width (the
    floor never widens a stage beyond the plans). An int width (allowed by dynamic_network_architectures) is
    repeated for ``n_stages`` stages.
    """
    if width_factor <= 0:
        raise ValueError(f"width_factor must be positive, got {width_factor}")
    if isinstance(features_per_stage, int):
        if n_stages is None:
            raise ValueError("an int features_per_stage needs n_stages")
        features_per_stage = [features_per_stage] * n_stages
    return [max(1, int(round(f * width_factor)), min(int(f), MIN_STAGE_WIDTH)) for f in features_per_stage]


def scale_arch_widths(arch_kwargs: dict, width_factor: float) -> dict:
    """A copy of the plans' ``arch_kwargs`` with every width scaled by :func:`scale_widths`: ``features_per_stage``
    and, where the architecture has them (residual-encoder U-Nets), ``bottleneck_channels`` and ``stem_channels``."""
    kwargs = dict(arch_kwargs)
    kwargs['features_per_stage'] = scale_widths(kwargs['features_per_stage'], width_factor, kwargs.get('n_stages'))
    if kwargs.get('bottleneck_channels') is not None:
        kwargs['bottleneck_channels'] = scale_widths(kwargs['bottleneck_channels'], width_factor,
                                                     kwargs.get('n_stages'))
    if kwargs.get('stem_channels') is not None:
        kwargs['stem_channels'] = scale_widths([kwargs['stem_channels']], width_factor)[0]
    return kwargs


@dataclass(frozen=True)
class PlansArchitecture:
    """The architecture of one nnU-Net plans configuration, under the names of nnU-Net's ``ConfigurationManager``
    (so either can be handed to :meth:`MissingModalityNetwork.from_plans
    <nnunet_missingmod.networks.base.MissingModalityNetwork.from_plans>`)."""

    network_arch_class_name: Optional[str]
    network_arch_init_kwargs: dict
    network_arch_init_kwargs_req_import: Tuple[str, ...]

    @classmethod
    def of(cls, configuration) -> 'PlansArchitecture':
        """From a ``ConfigurationManager`` (or anything with its architecture attributes; the class name may be
        missing for networks that build their own layers from the kwargs, as the multi-encoder network does)."""
        return cls(getattr(configuration, 'network_arch_class_name', None),
                   dict(configuration.network_arch_init_kwargs),
                   tuple(configuration.network_arch_init_kwargs_req_import))

    def scaled(self, width_factor: float) -> 'PlansArchitecture':
        """The same architecture with its widths times ``width_factor`` (:func:`scale_arch_widths`)."""
        return PlansArchitecture(self.network_arch_class_name,
                                 scale_arch_widths(self.network_arch_init_kwargs, width_factor),
                                 self.network_arch_init_kwargs_req_import)

    def resolved_kwargs(self) -> dict:
        """``arch_kwargs`` with operator names turned into classes (:func:`resolve_arch_kwargs`)."""
        return resolve_arch_kwargs(self.network_arch_init_kwargs, self.network_arch_init_kwargs_req_import)

    def build(self, input_channels: int, output_channels: int, deep_supervision: bool) -> nn.Module:
        """This plans network (class, kwargs), built and initialised by nnU-Net's ``get_network_from_plans``."""
        if self.network_arch_class_name is None:
            raise ValueError("the plans configuration names no network class to build")
        return get_network_from_plans(self.network_arch_class_name, self.network_arch_init_kwargs,
                                      self.network_arch_init_kwargs_req_import, input_channels, output_channels,
                                      allow_init=True, deep_supervision=deep_supervision)
