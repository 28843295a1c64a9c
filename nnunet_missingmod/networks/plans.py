"""Reading a network description out of nnU-Net plans: operator classes and scaled stage widths."""
from __future__ import annotations

import pydoc
from typing import Sequence


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


#: no scaled stage is narrower than ``min(plans width, MIN_STAGE_WIDTH)`` channels (issue #18)
MIN_STAGE_WIDTH = 8


def scale_widths(features_per_stage: int | Sequence[int], width_factor: float, n_stages: int | None = None
                 ) -> list[int]:
    """Stage widths times ``width_factor``, rounded, but never narrower than ``min(plans width, 8)`` channels.

    The floor: on small plans (widths 8-64) a factor of 1/4 or 3/16 left 1-2 channels in the first stages, and
    such networks learned no tumour core or enhancing tumour at all; nnU-Net itself never plans a stage narrower
    than its base width (32 for 3d_fullres), so 8 is far below anything it would choose, while a stage narrower
    in the plans than 8 keeps its plans width (the floor never widens a stage beyond the plans). An int width
    (allowed by dynamic_network_architectures) is repeated for ``n_stages`` stages.
    """
    if width_factor <= 0:
        raise ValueError(f"width_factor must be positive, got {width_factor}")
    if isinstance(features_per_stage, int):
        if n_stages is None:
            raise ValueError("an int features_per_stage needs n_stages")
        features_per_stage = [features_per_stage] * n_stages
    return [max(1, int(round(f * width_factor)), min(int(f), MIN_STAGE_WIDTH)) for f in features_per_stage]
