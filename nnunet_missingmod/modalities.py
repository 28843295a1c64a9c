"""Modality names, subsets and availability masks: the one place that knows about "missing".

Conventions used throughout the package:

* ``M`` modalities (input channels) in the order of ``dataset.json['channel_names']``.
* An *availability mask* is a bool tensor/array of shape ``(B, M)`` (or ``(M,)`` for one case); True means the
  modality is present.
* A *subset* is a tuple of channel indices in increasing order, e.g. ``(0, 2)``.
* A missing modality is zero-filled in the network input. When no mask is given, availability is derived from
  all-zero channels (:func:`detect_availability`).
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterable, Sequence

import numpy as np
import torch

#: The two subset orders of the missing-modality literature, written with BraTS names. ``paper`` follows
#: RFNet/mmFormer/M2FTrans and SMSN's Table 2 (FLAIR, T1ce, T1, T2); ``t1_first`` follows the T1, T1ce, T2, FLAIR
#: family (e.g. the Hölder-MI paper). Names that are not in a data set are ignored, the remaining modalities
#: keep the dataset.json order.
MODALITY_ORDERS = {
    'paper': ('FLAIR', 'T1ce', 'T1', 'T2'),
    't1_first': ('T1', 'T1ce', 'T2', 'FLAIR'),
    'dataset': (),
}


def modality_names(dataset_json: dict) -> list[str]:
    """Modality names in channel order, from ``channel_names`` (nnU-Net v2) or ``modality`` (v1)."""
    names = dataset_json.get('channel_names', dataset_json.get('modality'))
    if not names:
        raise ValueError("dataset.json has neither 'channel_names' nor 'modality': cannot tell the modalities")
    return [names[k] for k in sorted(names, key=int)]


def modality_index(dataset_json: dict, name: str) -> int:
    """Channel index of a modality name (case-insensitive); a clear error for unknown names."""
    names = modality_names(dataset_json)
    lowered = [n.lower() for n in names]
    if name.lower() not in lowered:
        raise ValueError(f"unknown modality {name!r}; dataset.json names the modalities {names}")
    return lowered.index(name.lower())


def channel_order(names: Sequence[str], order: str = 'paper') -> list[int]:
    """Channel indices ordered by a named convention (see :data:`MODALITY_ORDERS`)."""
    if order not in MODALITY_ORDERS:
        raise ValueError(f"unknown modality order {order!r}; choose one of {sorted(MODALITY_ORDERS)}")
    preferred = [p.lower() for p in MODALITY_ORDERS[order]]
    rank = {c: (preferred.index(n.lower()) if n.lower() in preferred else len(preferred), c)
            for c, n in enumerate(names)}
    return sorted(range(len(names)), key=rank.__getitem__)


def all_subsets(num_modalities: int, order: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """All ``2^M - 1`` non-empty subsets in the papers' table order: singles, pairs, triples, ..., full.

    Within one size, subsets are ordered lexicographically by the position of their channels in ``order``
    (default: channel order). Every subset is returned as sorted channel indices.
    """
    order = list(range(num_modalities)) if order is None else list(order)
    if sorted(order) != list(range(num_modalities)):
        raise ValueError(f"order {order} is not a permutation of range({num_modalities})")
    return [tuple(sorted(c)) for k in range(1, num_modalities + 1) for c in combinations(order, k)]


def subset_name(subset: Iterable[int], names: Sequence[str], order: Sequence[int] | None = None) -> str:
    """Readable name such as ``'FLAIR+T1ce'``; modalities listed in ``order`` (default: channel order)."""
    subset = set(subset)
    order = range(len(names)) if order is None else order
    return '+'.join(names[c] for c in order if c in subset)


def parse_subset(text: str, names: Sequence[str]) -> tuple[int, ...]:
    """Inverse of :func:`subset_name`: ``'FLAIR+T1ce'`` -> channel indices (case-insensitive)."""
    lowered = [n.lower() for n in names]
    parts = [p.strip().lower() for p in text.replace(',', '+').split('+') if p.strip()]
    unknown = [p for p in parts if p not in lowered]
    if unknown or not parts:
        raise ValueError(f"cannot read modality subset {text!r}: unknown {unknown}; modalities are {list(names)}")
    return tuple(sorted({lowered.index(p) for p in parts}))


def subset_to_mask(subset: Iterable[int], num_modalities: int) -> np.ndarray:
    """``(M,)`` bool mask of a subset."""
    mask = np.zeros(num_modalities, dtype=bool)
    mask[list(subset)] = True
    return mask


def mask_to_subset(mask) -> tuple[int, ...]:
    """Channel indices where a ``(M,)`` mask is True."""
    return tuple(int(i) for i in np.flatnonzero(np.asarray(mask, dtype=bool)))


def detect_availability(x: torch.Tensor) -> torch.Tensor:
    """``(B, M)`` mask of channels that are not identically zero in each sample of ``x`` (B, M, *spatial).

    A sample in which *every* channel is zero (a background sliding-window patch: nnU-Net's masked z-score
    normalisation writes 0 outside the brain in all channels) carries no availability information; it is
    reported as fully available, so such patches are predicted the same way whatever modality is missing.
    Inside the brain a present, z-score normalised modality is never identically zero, so per-patch detection
    agrees with per-case detection on every patch that touches the brain.
    """
    present = x.flatten(2).ne(0).any(-1)
    empty = ~present.any(1, keepdim=True)
    return present | empty


def resolve_availability(x: torch.Tensor, availability: torch.Tensor | None) -> torch.Tensor:
    """The mask a network should use: the given one (checked and moved to ``x.device``) or a detected one."""
    if availability is None:
        return detect_availability(x)
    availability = torch.as_tensor(availability, dtype=torch.bool, device=x.device)
    if availability.shape != x.shape[:2]:
        raise ValueError(f"availability mask has shape {tuple(availability.shape)}, expected {tuple(x.shape[:2])}")
    if not bool(availability.any(1).all()):
        raise ValueError("availability mask has a sample with no modality at all")
    return availability


def zero_missing(x: torch.Tensor, availability: torch.Tensor) -> torch.Tensor:
    """Zero the channels of ``x`` that the ``(B, M)`` mask marks missing (returns a new tensor)."""
    shape = availability.shape + (1,) * (x.ndim - 2)
    return x * availability.reshape(shape).to(x.dtype)


def case_availability(data: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(M,)`` mask of the channels of one whole case (M, *spatial) that are not identically zero."""
    if isinstance(data, torch.Tensor):
        return data.flatten(1).ne(0).any(1).cpu().numpy()
    return np.array([np.any(c != 0) for c in data], dtype=bool)


def draw_availability(present: np.ndarray, rng: np.random.Generator, full_set_probability: float = 0.0
                      ) -> np.ndarray:
    """Modality dropout for one sample: a non-empty subset of the ``present`` channels.

    With probability ``full_set_probability`` all present channels are kept; otherwise the subset is drawn
    uniformly over the ``2^|present| - 1`` non-empty subsets of the present channels (which, for a complete case,
    is uniform over the 15 BraTS subsets). A case with no present channel at all is an error.
    """
    present = np.asarray(present, dtype=bool)
    idx = np.flatnonzero(present)
    if idx.size == 0:
        raise ValueError("cannot draw a modality subset for a case with no modality present")
    if rng.random() < full_set_probability:
        return present.copy()
    # uniform over non-empty subsets = a uniform non-zero bit pattern over the present channels
    code = int(rng.integers(1, 2 ** idx.size))
    mask = np.zeros_like(present)
    mask[idx[[bool(code >> b & 1) for b in range(idx.size)]]] = True
    return mask
