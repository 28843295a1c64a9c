"""Dice and HD95 per region, with the conventions of the missing-modality literature made explicit.

Regions come from ``dataset.json`` (:mod:`nnunet_missingmod.regions`), never from hard-coded BraTS values.
Conventions (all tested in ``tests/test_metrics.py``):

* **both empty** (no ground truth and no prediction of a region): Dice 1, HD95 0 — a correct "nothing there".
* **one side empty**: Dice 0 (the formula gives it). HD95 is undefined; ``hd95_empty`` chooses what is reported:

  - ``'penalty'`` (default): the fixed :data:`HD95_PENALTY_MM` = 373.13 mm, the diagonal of the BraTS
    240 × 240 × 155 mm³ volume (the value most missing-modality papers use; the official ``brats-evaluation``
    parser uses it rounded to 373, which ``hd95_empty=373`` gives);
  - ``'max'``: the diagonal of *this* image in mm, ``sqrt(sum((shape * spacing)^2))``;
  - ``'nan'``: NaN, the case/region is left out of means (``nanmean``) — as in nnU-Net-style reporting;
  - a number (e.g. ``0`` or ``1``): that fixed value, for "0/1 style" reporting where a missed or hallucinated
    region counts as distance 0 or 1.

* **HD95** is the symmetric 95th percentile of the surface distances in mm, exactly as MedPy's
  ``medpy.metric.binary.hd95``: surfaces are the voxels removed by one binary erosion (face connectivity),
  distances are Euclidean distance transforms with the voxel spacing, and the percentile is taken over the
  concatenation of both directed distance sets.
* **ET post-processing** (:func:`et_postprocess`): a predicted enhancing tumour smaller than ``min_voxels`` is
  either removed for the ET score (``'remove'``: RFNet, mmFormer, M2FTrans) or relabelled to necrosis
  (``'relabel'``: nnU-Net's BraTS entries, DeMoSeg): the voxels leave ET and stay in/join the enclosing tumour
  core region.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from nnunet_missingmod.regions import Region

#: HD95 reported when exactly one of prediction / ground truth is empty (``hd95_empty='penalty'``): the diagonal
#: of the 240 x 240 x 155 mm BraTS volume, sqrt(240^2 + 240^2 + 155^2) = 373.13 mm.
HD95_PENALTY_MM = 373.13
HD95_EMPTY_CHOICES = ('penalty', 'nan', 'max')


# ----------------------------------------------------------------------------------------------- regions
def region_masks(segmentation: np.ndarray, regions: Sequence[Tuple[str, Region]]) -> Dict[str, np.ndarray]:
    """``{name: bool mask}`` of each region in a label map."""
    return {name: np.isin(segmentation, labels) for name, labels in regions}


# ----------------------------------------------------------------------------------------------- metrics
def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice 2|P∩R| / (|P|+|R|); 1.0 when both masks are empty."""
    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    denominator = int(prediction.sum()) + int(reference.sum())
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / denominator


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1)


def _directed_surface_distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``source`` to the nearest surface voxel of ``target``."""
    distance_to_target = ndimage.distance_transform_edt(~_surface(target), sampling=spacing)
    return distance_to_target[_surface(source)]


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the image box in mm (``hd95_empty='max'``)."""
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def empty_hd95_value(hd95_empty: Union[str, float], shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The HD95 reported when exactly one side is empty (see the module docstring)."""
    if isinstance(hd95_empty, str):
        if hd95_empty == 'penalty':
            return HD95_PENALTY_MM
        if hd95_empty == 'nan':
            return float('nan')
        if hd95_empty == 'max':
            return image_diagonal_mm(shape, spacing)
        try:
            return float(hd95_empty)
        except ValueError:
            raise ValueError(f"unknown hd95_empty convention {hd95_empty!r}; use one of {HD95_EMPTY_CHOICES} "
                             f"or a number") from None
    return float(hd95_empty)


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None,
         hd95_empty: Union[str, float] = 'penalty') -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (MedPy's definition).

    Both empty -> 0. Exactly one empty -> :func:`empty_hd95_value` of ``hd95_empty``.
    """
    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    spacing = [1.0] * prediction.ndim if spacing is None else [float(s) for s in spacing]
    if len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {spacing} does not match a {prediction.ndim}-d mask")
    has_pred, has_ref = bool(prediction.any()), bool(reference.any())
    if not has_pred and not has_ref:
        return 0.0
    if not has_pred or not has_ref:
        return empty_hd95_value(hd95_empty, prediction.shape, spacing)
    # every surface voxel lies inside the bounding box of the union: crop (with a one-voxel margin, so erosion
    # sees the same background) to keep the distance transforms small on large, mostly empty volumes
    union = np.argwhere(prediction | reference)
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(union.min(0), union.max(0)))
    prediction, reference = prediction[box], reference[box]
    distances = np.concatenate([_directed_surface_distances(prediction, reference, spacing),
                                _directed_surface_distances(reference, prediction, spacing)])
    return float(np.percentile(distances, 95))


# ----------------------------------------------------------------------------------------------- ET post-processing
def et_postprocess(seg_regions: Dict[str, np.ndarray], min_voxels: int, mode: str = 'remove', et: str = 'ET',
                   core: str = 'TC') -> Dict[str, np.ndarray]:
    """Small-ET post-processing of predicted region masks ``{name: bool mask}``; returns a new dict.

    When the ``et`` region has fewer than ``min_voxels`` voxels (and ``min_voxels > 0``):

    * ``'remove'`` (RFNet/mmFormer/M2FTrans): the ET mask is emptied *for the ET score only*; every other region
      keeps its prediction (their code post-processes ``o_enhance`` alone, TC/WT still include those voxels).
    * ``'relabel'`` (nnU-Net/DeMoSeg): the ET voxels are relabelled to necrosis, i.e. they leave ET and become
      part of the tumour core ``core`` (and therefore of every region containing the core). With nested regions
      (BraTS: ET ⊂ TC ⊂ WT) TC and WT are unchanged, so both modes give the same region masks; they differ when
      the data set's ET is not inside its core region, and in the label map (see :func:`et_relabel_labelmap`).

    A data set without an ``et`` region is returned unchanged (copied).
    """
    if mode not in ('remove', 'relabel'):
        raise ValueError(f"unknown ET post-processing mode {mode!r}; use 'remove' or 'relabel'")
    if min_voxels < 0:
        raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
    out = {k: np.array(v, dtype=bool, copy=True) for k, v in seg_regions.items()}
    if et not in out or min_voxels == 0 or int(out[et].sum()) >= min_voxels:
        return out
    small = out[et]
    if mode == 'relabel':
        if core not in out:
            raise ValueError(f"ET relabelling needs the core region {core!r}; regions are {sorted(out)}")
        core_mask = out[core].copy()
        for name, mask in out.items():
            # the core and every region that contains the core take the relabelled voxels
            if name != et and not np.any(core_mask & ~mask):
                mask |= small
    out[et] = np.zeros_like(small)
    return out


def et_relabel_labelmap(segmentation: np.ndarray, regions: Sequence[Tuple[str, Region]], min_voxels: int,
                        et: str = 'ET', core: str = 'TC') -> np.ndarray:
    """Label-map version of ``'relabel'``: ET labels become the core's other (necrosis) label if ET is small.

    The necrosis label is the lowest label in the ``core`` region that is not an ET label. Returns a copy.
    """
    lookup = dict(regions)
    out = np.array(segmentation, copy=True)
    if et not in lookup or min_voxels == 0:
        return out
    et_mask = np.isin(out, lookup[et])
    if int(et_mask.sum()) >= min_voxels:
        return out
    candidates = [v for v in lookup.get(core, ()) if v not in lookup[et]]
    if not candidates:
        raise ValueError(f"cannot relabel ET: region {core!r} has no label besides the ET labels")
    out[et_mask] = min(candidates)
    return out


# ----------------------------------------------------------------------------------------------- per case
def evaluate_case(prediction: np.ndarray, reference: np.ndarray, regions: Sequence[Tuple[str, Region]],
                  spacing: Sequence[float], hd95_empty: Union[str, float] = 'penalty', et_min_voxels: int = 0,
                  et_mode: str = 'remove') -> Dict[str, Dict[str, float]]:
    """``{region: {'Dice': ..., 'HD95': ...}}`` of one predicted label map against its reference label map."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    pred_masks = region_masks(prediction, regions)
    if et_min_voxels:
        pred_masks = et_postprocess(pred_masks, et_min_voxels, et_mode)
    ref_masks = region_masks(reference, regions)
    return {name: {'Dice': dice(pred_masks[name], ref_masks[name]),
                   'HD95': hd95(pred_masks[name], ref_masks[name], spacing, hd95_empty)}
            for name, _ in regions}


def all_labels_of(regions: Iterable[Tuple[str, Region]]) -> List[int]:
    """Every label value that appears in the regions (sorted)."""
    return sorted({v for _, labels in regions for v in labels})
