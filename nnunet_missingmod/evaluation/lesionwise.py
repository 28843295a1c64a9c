"""BraTS 2023+ lesion-wise Dice and HD95, computed by ``panoptica`` (the library the official ``brats-evaluation``
package wraps; optional extra: ``pip install -e '.[brats]'``).

Per region of dataset.json, panoptica splits the binary prediction and reference masks into connected components
(its ``ConnectedComponentsInstanceApproximator``: cc3d, 26-connectivity in 3-D), matches them one to one by
maximum-weight bipartite matching on Dice with any overlap counting (``MaxBipartiteMatching``, threshold 1e-6, as
the BraTS configs of ``brats-evaluation``), and gives the Dice and HD95 of every matched pair (spacing in mm). The
BraTS 2023+ ranking scores then count every missed reference lesion (FN) and every false predicted lesion (FP)
as Dice 0 and HD95 :data:`LESIONWISE_HD95_PENALTY_MM` = 373 mm::

    lesion-wise Dice = sum(Dice of the TP pairs) / (TP + FN + FP)
    lesion-wise HD95 = (sum(HD95 of the TP pairs) + 373 * (FN + FP)) / (TP + FN + FP)

which is what ``brats-parse-metrics mets --vol_threshold 0`` computes from panoptica's output (every lesion
"large"). No lesion in prediction and reference: Dice 1, HD95 0 (the convention of the global metrics; the
official parser leaves such a case out as NaN). Only false lesions: Dice 0, HD95 373 (the formula).

The arrays and spacing are passed in memory: given file paths, panoptica's SimpleITK loader pairs the array's
(z, y, x) axes with the spacing in (x, y, z) order, which changes HD95 for anisotropic voxels.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from nnunet_missingmod.evaluation.metrics import et_postprocess, region_masks
from nnunet_missingmod.regions import Region

#: HD95 of a missed or false lesion: the official ``brats-evaluation`` parser's 373 (the diagonal of the SRI-24
#: atlas volume, rounded down); the global HD95's ``--hd95-empty penalty`` is the unrounded 373.13 mm
LESIONWISE_HD95_PENALTY_MM = 373.0
#: the per-case columns ``--lesionwise`` adds (per region)
LESIONWISE_METRICS = ('LesionDice', 'LesionHD95')
INSTALL_HINT = "lesion-wise metrics need panoptica: pip install -e '.[brats]'"


def _panoptica():
    try:
        import panoptica
        from panoptica.utils.citation_reminder import disable_citation_reminder
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    disable_citation_reminder()
    return panoptica


def check_available() -> None:
    """ImportError with :data:`INSTALL_HINT` when panoptica is not installed."""
    _panoptica()


def lesion_evaluator():
    """panoptica's evaluator for one binary region: connected components, Dice-matched, Dice and HD95 per pair."""
    pt = _panoptica()
    from panoptica.utils.edge_case_handling import EdgeCaseHandler, EdgeCaseResult, MetricZeroTPEdgeCaseHandling
    from panoptica.utils.label_group import LabelMergeGroup
    from panoptica.utils.segmentation_class import SegmentationClassGroups
    zero_tp = {pt.Metric.DSC: MetricZeroTPEdgeCaseHandling(no_instances_result=EdgeCaseResult.NAN,
                                                           default_result=EdgeCaseResult.ZERO),
               pt.Metric.HD95: MetricZeroTPEdgeCaseHandling(no_instances_result=EdgeCaseResult.NAN,
                                                            default_result=EdgeCaseResult.INF)}
    return pt.Panoptica_Evaluator(
        expected_input=pt.InputType.SEMANTIC, instance_approximator=pt.ConnectedComponentsInstanceApproximator(),
        instance_matcher=pt.MaxBipartiteMatching(matching_metric=pt.Metric.DSC, matching_threshold=1e-6),
        edge_case_handler=EdgeCaseHandler(zero_tp), instance_metrics=[pt.Metric.DSC, pt.Metric.HD95],
        global_metrics=[pt.Metric.DSC],
        segmentation_class_groups=SegmentationClassGroups({'region': LabelMergeGroup([1], single_instance=False)}))


def lesionwise_scores(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                      evaluator=None) -> Dict[str, float]:
    """``{'LesionDice', 'LesionHD95', 'TP', 'FN', 'FP'}`` of two binary masks (see the module docstring)."""
    pt = _panoptica()
    evaluator = lesion_evaluator() if evaluator is None else evaluator
    result = evaluator.evaluate(np.asarray(prediction, dtype=np.uint8), np.asarray(reference, dtype=np.uint8),
                                voxelspacing=tuple(float(s) for s in spacing))['region']
    tp, fn, fp = int(result.tp), int(result.fn), int(result.fp)
    lesions = tp + fn + fp
    if lesions == 0:
        return {'LesionDice': 1.0, 'LesionHD95': 0.0, 'TP': 0, 'FN': 0, 'FP': 0}
    dsc = result.get_list_metric(pt.Metric.DSC, pt.MetricMode.ALL) if tp else []
    hd = result.get_list_metric(pt.Metric.HD95, pt.MetricMode.ALL) if tp else []
    return {'LesionDice': float(np.sum(dsc)) / lesions,
            'LesionHD95': (float(np.sum(hd)) + LESIONWISE_HD95_PENALTY_MM * (fn + fp)) / lesions,
            'TP': tp, 'FN': fn, 'FP': fp}


def evaluate_case_lesionwise(prediction: np.ndarray, reference: np.ndarray, regions: Sequence[Tuple[str, Region]],
                             spacing: Sequence[float], et_min_voxels: int = 0, et_mode: str = 'remove',
                             evaluator=None) -> Dict[str, Dict[str, float]]:
    """``{region: {'LesionDice': ..., 'LesionHD95': ...}}`` of two label maps (regions from dataset.json; the
    predicted regions post-processed as :func:`~nnunet_missingmod.evaluation.metrics.evaluate_case` does)."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    evaluator = lesion_evaluator() if evaluator is None else evaluator
    pred, ref = region_masks(prediction, regions), region_masks(reference, regions)
    if et_min_voxels:
        pred = et_postprocess(pred, et_min_voxels, et_mode)
    out = {}
    for name, _ in regions:
        scores = lesionwise_scores(pred[name], ref[name], spacing, evaluator)
        out[name] = {k: scores[k] for k in LESIONWISE_METRICS}
    return out
