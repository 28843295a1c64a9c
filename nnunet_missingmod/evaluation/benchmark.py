"""``nnUNetv2_mm_benchmark``: Dice and HD95 of a trained nnU-Net model under every non-empty modality subset.

How a missing modality is made absent (``--absence``):

* ``raw``: each case is preprocessed once per subset from the files of the present modalities only, the missing
  ones zero-filled in the geometry of a present one, exactly as ``nnUNetv2_mm_predict`` sees a case whose missing
  files are absent (its :func:`~nnunet_missingmod.inference.predict.prepare_case_files`, then nnU-Net's
  preprocessor). The crop and the z-score masks come from the present modalities' foreground alone.
* ``preprocessed``: each case is preprocessed once with all modalities and every subset is applied in
  preprocessed space (missing channels zeroed). Fast, but the crop and the normalisation masks of the present
  channels come from the union of *all* modalities' foregrounds: where a dropped modality covers voxels that the
  present ones do not (separately skull-stripped series, a shorter field of view), the present channels carry
  the constant their z-scoring gives a zero there, and their mean and standard deviation include those voxels.

In both, the case-level availability mask goes to missing-modality networks
(:class:`~nnunet_missingmod.inference.predict.MissingModalityPredictor`), the logits are brought back to the
original geometry with nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape`` and scored
against the reference label map with :mod:`nnunet_missingmod.evaluation.metrics` and, with ``--lesionwise``,
:mod:`nnunet_missingmod.evaluation.lesionwise`.

``-i``/``-l`` ensembles the folds given with ``-f`` (as ``nnUNetv2_predict``); ``--val`` predicts each fold's
validation cases (``splits_final.json``) with that fold's model (cross-validation; under ``--absence raw`` from
the raw images in ``$nnUNet_raw/DatasetXXX/imagesTr``). Works with any trainer, the stock ``nnUNetTrainer``
included (its network just sees zero-filled channels).

Outputs in ``-o``: ``per_case.csv``, ``summary.json``, ``table_dice.md/.tex``, ``table_hd95.md/.tex``,
``heatmap_dice.png``, ``dice_vs_missing.png``, with every subset ``table_shapley.md`` (see
:func:`nnunet_missingmod.evaluation.tables.write_reports`),
with ``--lesionwise`` also ``table_lesiondice.md/.tex``, ``table_lesionhd95.md/.tex`` and ``table_lesionwise.md``
and, with ``--save_predictions``, ``predictions/<subset>/<case><file_ending>``. A non-empty ``-o`` is refused
unless ``--overwrite``. The outputs are written into a hidden folder next to ``-o`` and replace those of an earlier
run only when the benchmark has finished (other files in ``-o`` are left alone); until then ``-o`` is unchanged but
for ``per_case.partial.csv``, the rows of the cases done so far, appended case by case: an interrupted or failed run
keeps what it measured there (:mod:`nnunet_missingmod.evaluation.benchmark_output`).

Every input is checked before the first prediction (:func:`checked_jobs`): every reference label map (every voxel
decoded, label values) and every image of every case (readable, every voxel finite, one shape and spacing per case,
the reference's shape; a NIfTI file decoded again with nibabel, since nnU-Net's SimpleITK reader reads NaN/Inf as 0
and zero-fills a truncated file) or, under ``--val --absence preprocessed``, every preprocessed case. All problems
are reported on one line.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

from nnunet_missingmod.cli import ArgumentParser, CommandError, check_device, command, dataset_name, require_env_path
from nnunet_missingmod.env import enable_ext_trainers
from nnunet_missingmod.evaluation import lesionwise
# the cases (sources, references), re-exported: ``from nnunet_missingmod.evaluation.benchmark import ...`` works
from nnunet_missingmod.evaluation.benchmark_cases import (  # noqa: F401
    ABSENCE_MODES, DEFAULT_ABSENCE, Case, SubsetInput, check_case_files, check_preprocessed_cases, check_references,
    complete_cases, load_reference, present_files_input, preprocessed_dataset_folder, raw_test_cases,
    scan_test_folder, validation_cases, validation_keys)
from nnunet_missingmod.evaluation.benchmark_output import (PARTIAL_CSV, PartialRows, check_output_folder,
                                                           staged_outputs)
from nnunet_missingmod.evaluation.metrics import (HD95_EMPTY_CHOICES, HD95_PENALTY_MM, all_labels_of,
                                                  empty_hd95_value, evaluate_case)
from nnunet_missingmod.evaluation.tables import REPORT_NAMES, write_reports
from nnunet_missingmod.inference.predict import MissingModalityPredictor, add_nnunet_predict_arguments, make_predictor
from nnunet_missingmod.modalities import (MODALITY_ORDERS, all_subsets, channel_order, modality_names,
                                          parse_subset, subset_name, subset_to_mask)
from nnunet_missingmod.networks.base import MissingModalityNetwork
from nnunet_missingmod.regions import dataset_regions

#: what the benchmark writes into ``-o`` (``--overwrite`` replaces exactly these, at the end)
OUTPUT_NAMES = REPORT_NAMES + ('predictions', PARTIAL_CSV)


def benchmark_subsets(names: Sequence[str], order: str = 'paper', restrict: Sequence[str] | None = None
                      ) -> List[Tuple[str, Tuple[int, ...]]]:
    """``[(name, channels), ...]`` of the evaluated subsets in table order (optionally restricted)."""
    channels = channel_order(names, order)
    subsets = [(subset_name(s, names, channels), s) for s in all_subsets(len(names), channels)]
    if restrict:
        wanted = {parse_subset(text, names) for text in restrict}
        subsets = [(n, s) for n, s in subsets if s in wanted]
    return subsets


def predict_subset(predictor: MissingModalityPredictor, data: torch.Tensor, properties: dict,
                   mask: np.ndarray) -> np.ndarray:
    """Label map in the original geometry of one preprocessed case predicted under ``mask``."""
    logits = predictor.predict_logits_from_preprocessed_data(data, mask)
    return convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties,
        return_probabilities=False)


@dataclass(frozen=True)
class BenchmarkSettings:
    """What :func:`run_benchmark` evaluates and how (everything but the model and the cases).

    ``subsets``: ``[(name, channels), ...]`` (:func:`benchmark_subsets`); ``regions``: ``[(name, labels), ...]``
    (:func:`~nnunet_missingmod.regions.dataset_regions`); ``num_modalities``: M of the data set; ``hd95_empty``,
    ``et_min_voxels``, ``et_mode``: see :func:`~nnunet_missingmod.evaluation.metrics.evaluate_case`;
    ``save_predictions``: folder for ``<subset>/<case><file_ending>`` (None: not saved); ``progress``: tqdm bar;
    ``lesion_wise``: also ``LesionDice`` and ``LesionHD95`` (:mod:`~nnunet_missingmod.evaluation.lesionwise`).
    """
    subsets: Tuple[Tuple[str, Tuple[int, ...]], ...]
    regions: Tuple[Tuple[str, Tuple[int, ...]], ...]
    num_modalities: int
    hd95_empty: str | float = 'penalty'
    et_min_voxels: int = 0
    et_mode: str = 'remove'
    save_predictions: str | None = None
    progress: bool = True
    lesion_wise: bool = False

    def __post_init__(self):
        # sequences of pairs as given (lists from JSON or the parsers) become tuples: the settings stay frozen
        object.__setattr__(self, 'subsets', tuple((str(n), tuple(s)) for n, s in self.subsets))
        object.__setattr__(self, 'regions', tuple((str(n), tuple(v)) for n, v in self.regions))
        if self.et_mode not in ('remove', 'relabel'):
            raise ValueError(f"et_mode must be 'remove' or 'relabel', got {self.et_mode!r}")


def run_benchmark(predictors_and_cases, settings: BenchmarkSettings,
                  on_case: Callable[[List[dict]], None] | None = None) -> List[dict]:
    """Rows ``{case, subset, n_missing, region, Dice, HD95}`` of every case under every subset of ``settings``,
    with ``settings.lesion_wise`` also ``LesionDice`` and ``LesionHD95``.

    ``predictors_and_cases``: iterable of ``(predictor, iterator of cases, number of cases)``; ``on_case`` is
    called with the rows of each case as soon as the case is done (e.g. :class:`PartialRows.append`).
    """
    rows: List[dict] = []
    evaluator = lesionwise.lesion_evaluator() if settings.lesion_wise else None
    regions, m = settings.regions, settings.num_modalities
    allowed = all_labels_of(regions)
    total = sum(n for _, _, n in predictors_and_cases) * len(settings.subsets)
    with tqdm(total=total, desc='cases x subsets', disable=not settings.progress) as bar:
        for predictor, cases, _ in predictors_and_cases:
            reader_writer = predictor.plans_manager.image_reader_writer_class()
            for case, subset_input, reference_file in cases:
                first = len(rows)
                reference, spacing = load_reference(reader_writer, reference_file, allowed)
                for name, subset in settings.subsets:
                    bar.set_postfix_str(f'{case} {name}')
                    data, properties = subset_input(subset)
                    seg = predict_subset(predictor, data, properties, subset_to_mask(subset, m))
                    if seg.shape != reference.shape:
                        raise ValueError(f"case {case}: prediction shape {seg.shape} differs from reference "
                                         f"{reference_file} shape {reference.shape}")
                    if settings.save_predictions:
                        folder = os.path.join(settings.save_predictions, name)
                        os.makedirs(folder, exist_ok=True)
                        reader_writer.write_seg(seg, os.path.join(folder, case + predictor.dataset_json[
                            'file_ending']), properties)
                    scores = evaluate_case(seg, reference, regions, spacing, settings.hd95_empty,
                                           settings.et_min_voxels, settings.et_mode)
                    if settings.lesion_wise:
                        lesions = lesionwise.evaluate_case_lesionwise(seg, reference, regions, spacing,
                                                                      settings.et_min_voxels, settings.et_mode,
                                                                      evaluator)
                        scores = {region: {**values, **lesions[region]} for region, values in scores.items()}
                    for region, values in scores.items():
                        rows.append({'case': case, 'subset': name, 'n_missing': m - len(subset), 'region': region,
                                     **values})
                    bar.update()
                if on_case is not None:
                    on_case(rows[first:])
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog='nnUNetv2_mm_benchmark',
        description='Missing-modality benchmark: Dice and HD95 under every non-empty modality subset.')
    add_nnunet_predict_arguments(parser)
    parser.add_argument('-o', type=str, required=True, help='output folder of the reports (empty or new, or see '
                                                            '--overwrite)')
    parser.add_argument('--overwrite', action='store_true',
                        help='-o may hold an earlier benchmark: its reports and predictions/ are replaced when this '
                             'one has finished')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('-i', type=str, help='test images in nnU-Net raw layout (needs -l)')
    source.add_argument('--val', action='store_true',
                        help="each fold's validation cases (splits_final.json, preprocessed data)")
    parser.add_argument('-l', type=str, help='reference label maps of -i (CASE<file_ending>)')
    parser.add_argument('--absence', choices=ABSENCE_MODES, default=DEFAULT_ABSENCE,
                        help='how a missing modality is made absent. raw: each case preprocessed once per subset from '
                             'the present files only, as nnUNetv2_mm_predict sees absent files; preprocessed: the '
                             'complete case preprocessed once, missing channels zeroed afterwards (faster; crop and '
                             f'z-score masks then come from every modality\'s foreground). Default {DEFAULT_ABSENCE}')
    parser.add_argument('--order', choices=sorted(MODALITY_ORDERS), default='paper',
                        help='subset (column) order: paper = FLAIR, T1ce, T1, T2 (RFNet/mmFormer); t1_first = T1, '
                             'T1ce, T2, FLAIR; dataset = dataset.json order')
    parser.add_argument('--subsets', nargs='+', default=None,
                        help="evaluate only these subsets, e.g. FLAIR T1+T1ce+T2+FLAIR (names from dataset.json)")
    parser.add_argument('--et-postprocess', type=int, default=0, metavar='N',
                        help='predicted ET smaller than N voxels is post-processed (0: off)')
    parser.add_argument('--et-postprocess-mode', choices=('remove', 'relabel'), default='remove',
                        help='remove: ET emptied for the ET score (RFNet/mmFormer/M2FTrans); relabel: ET voxels '
                             'become necrosis (nnU-Net/DeMoSeg)')
    parser.add_argument('--hd95-empty', default='penalty',
                        help=f"global HD95 when exactly one of prediction/reference is empty: one of "
                             f"{HD95_EMPTY_CHOICES} or a number in mm. Default penalty = {HD95_PENALTY_MM} mm, the "
                             f"diagonal of the 240 x 240 x 155 mm BraTS volume as most missing-modality papers report "
                             f"it; 373 is the official brats-evaluation parser's rounded value; max = this image's "
                             f"diagonal; nan leaves the case out of the means")
    parser.add_argument('--lesionwise', action='store_true',
                        help=f"also the BraTS 2023+ lesion-wise Dice and HD95 (panoptica; missed and false lesions "
                             f"count as Dice 0 and HD95 {lesionwise.LESIONWISE_HD95_PENALTY_MM:g} mm); needs "
                             f"pip install -e '.[brats]'")
    parser.add_argument('--knockout', action='append', default=[], metavar='PATH',
                        help="remove one information path of the network at inference (repeatable): 'bottleneck' "
                             "or 'specific' (SMSN), 'messages' (CIML); a network without it is refused")
    parser.add_argument('--save_predictions', action='store_true',
                        help='also write every predicted segmentation to OUT/predictions/<subset>/')
    return parser


@command('nnUNetv2_mm_benchmark')
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.i and not args.l:
        parser.error('-i needs -l (the reference label maps)')
    try:
        empty_hd95_value(args.hd95_empty, (1,), (1.0,))
    except ValueError as e:
        parser.error(str(e))
    hd95_empty = args.hd95_empty if args.hd95_empty in HD95_EMPTY_CHOICES else float(args.hd95_empty)
    if args.lesionwise:
        try:
            lesionwise.check_available()
        except ImportError as e:
            raise CommandError(str(e)) from None
    check_device(args.device)
    enable_ext_trainers()
    if args.i and not os.path.isdir(args.i):
        raise CommandError(f"input folder {args.i} does not exist")
    if args.l and not os.path.isdir(args.l):
        raise CommandError(f"label folder {args.l} does not exist")
    if args.val and 'all' in args.f:
        parser.error("--val needs cross-validation folds; fold 'all' has no validation cases")
    check_output_folder(args.o, args.overwrite)  # a non-empty -o is refused before the model is loaded

    if args.val:
        predictors = [make_predictor(args, [f]) for f in args.f]
    else:
        predictors = [make_predictor(args)]
    for predictor in predictors:
        knock_out(predictor, args.knockout)
    dataset_json = predictors[0].dataset_json
    names = modality_names(dataset_json)
    try:
        subsets = benchmark_subsets(names, args.order, args.subsets)
    except ValueError as e:
        parser.error(str(e))
    if not subsets:
        parser.error(f"--subsets {args.subsets} selects no subset")
    regions = dataset_regions(dataset_json)
    jobs = checked_jobs(args, predictors, all_labels_of(regions))

    partial = PartialRows(os.path.join(args.o, PARTIAL_CSV), args.lesionwise)
    try:
        with staged_outputs(args.o, OUTPUT_NAMES, 'benchmark') as staging:
            settings = BenchmarkSettings(subsets, regions, len(names), hd95_empty, args.et_postprocess,
                                         args.et_postprocess_mode,
                                         os.path.join(staging, 'predictions') if args.save_predictions else None,
                                         progress=not args.disable_progress_bar, lesion_wise=args.lesionwise)
            rows = run_benchmark(jobs, settings, on_case=partial.append)
            write_reports(rows, [n for n, _ in subsets], {n: len(names) - len(s) for n, s in subsets},
                          [r for r, _ in regions], staging, **report_header(args, names, regions))
    except BaseException:
        if partial.cases:
            print(f"nnUNetv2_mm_benchmark: stopped after {partial.cases} of {sum(n for _, _, n in jobs)} cases; "
                  f"their {partial.rows} rows are in {partial.path} (the other files in {args.o} are unchanged)",
                  file=sys.stderr, flush=True)
        raise
    print(open(os.path.join(args.o, 'table_dice.md')).read())
    print(f"reports written to {args.o} ({len(rows)} rows, "
          f"{len({r['case'] for r in rows})} cases x {len(subsets)} subsets)")
    return 0


def checked_jobs(args, predictors: Sequence[MissingModalityPredictor], allowed_labels: Sequence[int]) -> list:
    """``[(predictor, cases, number of cases), ...]`` of the command line, every input checked before the first
    prediction: the cases complete, every reference label map (:func:`check_references`) and every image of every
    case (:func:`check_case_files`: readable, every voxel finite, one geometry per case, the reference's shape) or,
    under ``--val --absence preprocessed``, every preprocessed case (:func:`check_preprocessed_cases`)."""
    dataset_json = predictors[0].dataset_json
    ending = dataset_json['file_ending']
    reader_writer = predictors[0].plans_manager.image_reader_writer_class()
    progress = not args.disable_progress_bar
    if args.val:
        folder = preprocessed_dataset_folder(dataset_name(args.d))
        keys = [validation_keys(folder, int(f)) for f in args.f]
        every_key = [k for ks in keys for k in ks]
        references = {k: os.path.join(folder, 'gt_segmentations', k + ending) for k in every_key}
        raw_images = None
        if args.absence == 'raw':
            raw = require_env_path('nnUNet_raw', '--val --absence raw reads the raw images of the validation cases '
                                                 '(or use --absence preprocessed)')
            raw_images = os.path.join(raw, dataset_name(args.d), 'imagesTr')
            cases = complete_cases(raw_images, dataset_json, every_key)
        shapes = check_references(reader_writer, list(references.values()), allowed_labels)
        if raw_images is None:
            check_preprocessed_cases(predictors[0], folder, every_key, progress)
        else:
            check_case_files(cases, reader_writer, references, shapes, progress)
        return [(p, validation_cases(p, folder, int(f), k, raw_images, voxels_checked=True), len(k))
                for p, f, k in zip(predictors, args.f, keys)]
    cases = scan_test_folder(args.i, args.l, dataset_json)
    references = {case: os.path.join(args.l, case + ending) for case in sorted(cases)}
    shapes = check_references(reader_writer, list(references.values()), allowed_labels)
    check_case_files(cases, reader_writer, references, shapes, progress)
    return [(predictors[0], raw_test_cases(predictors[0], args.i, args.l, args.absence, voxels_checked=True),
             len(cases))]


def knock_out(predictor: MissingModalityPredictor, paths: Sequence[str]) -> None:
    """Remove the information ``paths`` from the predictor's network (``MissingModalityNetwork.set_knockout``); a
    network without such a path (nnU-Net's own network has none) is a :class:`CommandError` naming the paths it
    has."""
    if not paths:
        return
    network = getattr(predictor.network, '_orig_mod', predictor.network)
    try:
        if not isinstance(network, MissingModalityNetwork):
            raise ValueError(f"{type(network).__name__} has no information path {', '.join(paths)} to knock out "
                             f"(it has: none)")
        network.set_knockout(paths)
    except ValueError as error:
        raise CommandError(f"--knockout: {error}") from None


def report_header(args, names: Sequence[str], regions) -> dict:
    """The ``model`` and ``evaluation`` entries of ``summary.json``."""
    return {'model': {'dataset': dataset_name(args.d), 'configuration': args.c, 'trainer': args.tr, 'plans': args.p,
                      'folds': [str(f) for f in args.f], 'checkpoint': args.chk, 'tta': not args.disable_tta},
            'evaluation': {'source': 'val' if args.val else os.path.abspath(args.i), 'absence': args.absence,
                           'knockout': sorted(set(args.knockout)),
                           'lesionwise': args.lesionwise,
                           'lesionwise_hd95_penalty_mm': (lesionwise.LESIONWISE_HD95_PENALTY_MM
                                                          if args.lesionwise else None),
                           'order': args.order, 'hd95_empty': args.hd95_empty,
                           'et_postprocess_min_voxels': args.et_postprocess,
                           'et_postprocess_mode': args.et_postprocess_mode, 'modalities': list(names),
                           'regions': {r: list(v) for r, v in regions}}}


if __name__ == '__main__':
    sys.exit(main())
