"""Prediction with missing modalities: :class:`MissingModalityPredictor` and ``nnUNetv2_mm_predict``.

:class:`MissingModalityPredictor` is nnU-Net's ``nnUNetPredictor`` with one addition: every preprocessed case is
predicted under a case-level availability mask. Missing channels are zeroed, and networks that follow the
:class:`~nnunet_missingmod.networks.base.MissingModalityNetwork` protocol receive the mask as
``network(x, availability)`` for every sliding-window patch (and every mirrored copy), so a patch whose present
modalities happen to be all zero is not mistaken for a missing modality. Stock networks just see the zero-filled
input, exactly as with ``nnUNetv2_predict`` on zero-filled files. Without an explicit mask the case-level mask is
derived from all-zero channels of the whole case.

``nnUNetv2_mm_predict`` takes the arguments of ``nnUNetv2_predict`` and additionally

* accepts cases whose missing modality files are simply absent (``case_0002.nii.gz`` not there): the channel is
  filled with zeros in the geometry of a present modality of that case;
* ``--missing T1,FLAIR`` drops modalities (by their dataset.json names) from every case;
* refuses a case with no modality at all (all files absent, dropped or all-zero), or a malformed case (an
  unreadable file, modalities of different shapes or spacings, NaN/Inf voxels) with a message naming the case,
  predicts the other cases, and exits with status 1 at the end naming the refused cases.

Every voxel of every input file is checked before the case is predicted (a NIfTI file is decoded again with
nibabel, as by the converter, since nnU-Net's SimpleITK reader reads NaN/Inf as 0 and zero-fills a truncated
``.nii.gz``): a NaN, Inf, truncated or unreadable file refuses its case with a line naming the file.

It writes ``missing_modalities.json`` next to the predictions (with ``-num_parts N``:
``missing_modalities.part{K}of{N}.json`` for ``-part_id K``, one per parallel call): per case, the modalities used
and those that were zero-filled (absent file, ``--missing`` or an all-zero image), the refused cases, and
``complete``. The report is written atomically, once before the first prediction (replacing an older one) and once
at the end; an interrupted call leaves ``complete: false`` with the cases predicted so far in ``cases`` and the
others in ``not_predicted``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.file_path_utilities import get_output_folder

from nnunet_missingmod.cli import ArgumentParser, CommandError, check_device, command, dataset_name, require_env_path
from nnunet_missingmod.dataset_conversion.atomic_writing import atomic_write_json
from nnunet_missingmod.env import enable_ext_trainers
from nnunet_missingmod.inference.case_files import prepare_case_files, scan_input_folder
from nnunet_missingmod.modalities import case_availability, modality_index, modality_names
from nnunet_missingmod.networks.base import MissingModalityNetwork


class _MaskedCall:
    """Callable standing in for the network during one patch: ``net(x)`` -> ``net(x, availability)``."""

    def __init__(self, network, availability: torch.Tensor):
        self.network = network
        self.availability = availability

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.availability.to(x.device)[None].expand(x.shape[0], -1)
        return self.network(x, mask)


class MissingModalityPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that predicts a preprocessed case under a case-level availability mask."""

    _availability: torch.Tensor | None = None

    @property
    def num_modalities(self) -> int:
        return len(modality_names(self.dataset_json))

    @property
    def bare_network(self) -> torch.nn.Module:
        net = self.network.module if isinstance(self.network, DistributedDataParallel) else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def resolve_case_availability(self, data: torch.Tensor, availability=None) -> np.ndarray:
        """``(M,)`` mask: the given one (checked) or the non-zero modality channels of ``data``."""
        m = self.num_modalities
        if availability is None:
            availability = case_availability(data[:m])
        availability = np.asarray(availability, dtype=bool).reshape(-1)
        if availability.shape != (m,):
            raise ValueError(f"availability mask has {availability.size} entries, the data set has {m} modalities "
                             f"{modality_names(self.dataset_json)}")
        if not availability.any():
            raise ValueError("no modality available: at least one modality is needed for a prediction")
        return availability

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor, availability=None) -> torch.Tensor:
        """Logits of a preprocessed case (C, *spatial) with the channels missing in ``availability`` zeroed.

        ``availability``: ``(M,)`` bool (True = present) or None (derived from all-zero channels). Folds in
        ``list_of_parameters`` are ensembled as by nnU-Net.
        """
        data = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
        mask = self.resolve_case_availability(data, availability)
        if not mask.all():
            data = data.clone()
            data[np.flatnonzero(~mask)] = 0
        self._availability = torch.from_numpy(mask)
        try:
            return super().predict_logits_from_preprocessed_data(data)
        finally:
            self._availability = None

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if self._availability is None or not isinstance(self.bare_network, MissingModalityNetwork):
            return super()._internal_maybe_mirror_and_predict(x)
        network = self.network
        self.network = _MaskedCall(network, self._availability)
        try:
            return super()._internal_maybe_mirror_and_predict(x)
        finally:
            self.network = network


# ----------------------------------------------------------------------------------------------- command line
#: the flags of :func:`add_nnunet_predict_arguments`: the model, then the runtime
PREDICT_FLAGS = ('-d', '-p', '-tr', '-c', '-f', '-chk', '-step_size', '--disable_tta', '--verbose', '-device',
                 '--disable_progress_bar', '--not_on_device')


def add_nnunet_predict_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None,
                                 several_trainers: bool = False) -> None:
    """The model / runtime arguments of ``nnUNetv2_predict`` (same names, same defaults, same meaning), the one
    definition every command of this package uses.

    ``only``: the subset of :data:`PREDICT_FLAGS` a command needs (default all). ``several_trainers``: ``-tr``
    takes one or more trainer names (``nnUNetv2_mm_perf``); its default is then None (the command's own list).
    """
    only = PREDICT_FLAGS if only is None else tuple(only)
    unknown = sorted(set(only) - set(PREDICT_FLAGS))
    if unknown:
        raise ValueError(f"unknown predict flag(s) {unknown}; choose from {PREDICT_FLAGS}")
    add = {
        '-d': lambda: parser.add_argument('-d', type=str, required=True, help='dataset name or ID'),
        '-p': lambda: parser.add_argument('-p', type=str, default='nnUNetPlans', help='plans identifier'),
        '-tr': lambda: (parser.add_argument('-tr', type=str, nargs='+', default=None,
                                            help='trainer classes used for training')
                        if several_trainers else
                        parser.add_argument('-tr', type=str, default='nnUNetTrainer',
                                            help='trainer class used for training')),
        '-c': lambda: parser.add_argument('-c', type=str, required=True, help='nnU-Net configuration'),
        '-f': lambda: parser.add_argument('-f', nargs='+', type=str, default=(0, 1, 2, 3, 4),
                                          help="folds to use (ensembled); 'all' for the fold trained on all cases"),
        '-chk': lambda: parser.add_argument('-chk', type=str, default='checkpoint_final.pth', help='checkpoint name'),
        '-step_size': lambda: parser.add_argument('-step_size', type=float, default=0.5,
                                                  help='sliding-window step size'),
        '--disable_tta': lambda: parser.add_argument('--disable_tta', action='store_true',
                                                     help='disable mirroring test-time augmentation'),
        '--verbose': lambda: parser.add_argument('--verbose', action='store_true', help='talk a lot'),
        '-device': lambda: parser.add_argument('-device', type=str, default='cuda', choices=('cuda', 'cpu', 'mps'),
                                               help="'cuda', 'cpu' or 'mps' (default cuda, as nnUNetv2_predict)"),
        '--disable_progress_bar': lambda: parser.add_argument('--disable_progress_bar', action='store_true',
                                                              help='no tqdm progress bars'),
        '--not_on_device': lambda: parser.add_argument('--not_on_device', action='store_true',
                                                       help='keep result arrays off the GPU'),
    }
    for flag in PREDICT_FLAGS:
        if flag in only:
            add[flag]()


def add_missing_argument(parser: argparse.ArgumentParser) -> None:
    """``--missing T1,FLAIR``: modalities (dataset.json names, comma-separated) to treat as missing; read it with
    :func:`parse_missing`."""
    parser.add_argument('--missing', type=str, default=None,
                        help='comma-separated modality names (dataset.json channel_names) to treat as missing, '
                             'e.g. T1,FLAIR')


def make_device(name: str) -> torch.device:
    """The torch device of ``-device``; :class:`~nnunet_missingmod.cli.CommandError` ("no CUDA device: pass
    -device cpu") when it is not there."""
    if name not in ('cpu', 'cuda', 'mps'):
        raise ValueError(f"-device must be cpu, cuda or mps, got {name!r}")
    check_device(name)
    if name == 'cpu':
        torch.set_num_threads(multiprocessing.cpu_count())
    elif name == 'cuda':
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    return torch.device(name)


def make_predictor(args, folds=None) -> MissingModalityPredictor:
    """A :class:`MissingModalityPredictor` for the model that ``args`` (see :func:`add_nnunet_predict_arguments`)
    names, with ``folds`` (default ``args.f``)."""
    enable_ext_trainers()
    predictor = MissingModalityPredictor(tile_step_size=args.step_size, use_gaussian=True,
                                         use_mirroring=not args.disable_tta,
                                         perform_everything_on_device=not args.not_on_device,
                                         device=make_device(args.device), verbose=args.verbose,
                                         verbose_preprocessing=args.verbose,
                                         allow_tqdm=not args.disable_progress_bar)
    folds = args.f if folds is None else folds
    model_folder = check_model(args.d, args.tr, args.p, args.c, folds, args.chk)
    folds = [f if f == 'all' else int(f) for f in folds]
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.chk)
    return predictor


def check_model(dataset: str, trainer: str, plans: str, configuration: str, folds, checkpoint: str) -> str:
    """The trained model folder; :class:`FileNotFoundError` (one line) naming what is missing: the data set, the
    model folder, a fold or a checkpoint (listing what is there)."""
    require_env_path('nnUNet_results', 'the trained models are found there')
    model_folder = get_output_folder(dataset_name(dataset), trainer, plans, configuration)
    if not os.path.isdir(model_folder):
        raise FileNotFoundError(f"no trained model in {model_folder} (trainer {trainer}, plans {plans}, "
                                f"configuration {configuration})")
    for fold in folds:
        if str(fold) != 'all' and not str(fold).isdigit():
            raise ValueError(f"-f {fold}: a fold is a number or 'all'")
    present = sorted(n[5:] for n in os.listdir(model_folder) if n.startswith('fold_'))
    absent = [str(f) for f in folds if not os.path.isdir(os.path.join(model_folder, f'fold_{f}'))]
    if absent:
        raise FileNotFoundError(f"fold(s) {', '.join(absent)} not trained in {model_folder} (trained folds: "
                                f"{', '.join(present) or 'none'}); choose them with -f")
    for fold in folds:
        path = os.path.join(model_folder, f'fold_{fold}', checkpoint)
        if not os.path.isfile(path):
            there = sorted(n for n in os.listdir(os.path.dirname(path)) if n.endswith('.pth'))
            raise FileNotFoundError(f"checkpoint {path} does not exist (checkpoints there: "
                                    f"{', '.join(there) or 'none'}); choose one with -chk")
    return model_folder


def parse_missing(text: str | None, dataset_json: dict) -> List[int]:
    """``'T1,FLAIR'`` -> channel indices (unknown names: ValueError listing the data set's modalities)."""
    if not text:
        return []
    return sorted({modality_index(dataset_json, n.strip()) for n in re.split(r'[,+]', text) if n.strip()})


@command('nnUNetv2_mm_predict')
def main(argv=None) -> int:
    parser = ArgumentParser(
        prog='nnUNetv2_mm_predict',
        description='nnUNetv2_predict for cases with missing MRI modalities: absent modality files are '
                    'zero-filled, --missing drops modalities, cases without any modality are refused.')
    parser.add_argument('-i', type=str, required=True, help='input folder (CASE_XXXX<ending> files; missing '
                                                            'modality files may be absent)')
    parser.add_argument('-o', type=str, required=True, help='output folder')
    add_nnunet_predict_arguments(parser)
    add_missing_argument(parser)
    parser.add_argument('--save_probabilities', action='store_true', help='also export probabilities (.npz)')
    parser.add_argument('--continue_prediction', action='store_true', help='do not overwrite existing predictions')
    parser.add_argument('-npp', type=int, default=3, help='preprocessing processes (0 and -nps 0: sequential)')
    parser.add_argument('-nps', type=int, default=3, help='segmentation export processes')
    parser.add_argument('-prev_stage_predictions', type=str, default=None, help='cascade: previous stage folder')
    parser.add_argument('-num_parts', type=int, default=1, help='number of parallel calls')
    parser.add_argument('-part_id', type=int, default=0, help='which of the parallel calls this is')
    args = parser.parse_args(argv)
    check_device(args.device)
    if args.part_id >= args.num_parts:
        parser.error('-part_id must be smaller than -num_parts')
    if os.path.abspath(args.o) == os.path.abspath(args.i):
        parser.error('the output folder must not be the input folder (it would mix predictions with images)')
    if not os.path.isdir(args.i):
        raise CommandError(f"input folder {args.i} does not exist")

    predictor = make_predictor(args)
    dataset_json = predictor.dataset_json
    names = modality_names(dataset_json)
    ending = dataset_json['file_ending']
    dropped = parse_missing(args.missing, dataset_json)
    cases = scan_input_folder(args.i, ending, len(names))
    if len(dropped) == len(names):
        raise CommandError(f"--missing {args.missing} drops every modality; nothing can be predicted")
    case_ids = sorted(cases)[args.part_id::args.num_parts]
    if not case_ids:
        raise CommandError(f"no CASE_XXXX{ending} files in {args.i}")

    reader_writer = predictor.plans_manager.image_reader_writer_class()
    zero_folder = tempfile.mkdtemp(prefix='mm_predict_zero_')
    report: Dict[str, dict] = {}
    refused: Dict[str, str] = {}
    list_of_lists, outputs = [], []
    report_file = os.path.join(args.o, report_file_name(args.part_id, args.num_parts))
    try:
        for case in case_ids:
            try:
                files, report[case] = prepare_case_files(case, cases[case], names, dropped, reader_writer, ending,
                                                         zero_folder)
            except ValueError as e:
                refused[case] = str(e)
                print(f"ERROR: {e}", file=sys.stderr, flush=True)
                report.pop(case, None)
                continue
            list_of_lists.append(files)
            outputs.append(os.path.join(args.o, case))
        os.makedirs(args.o, exist_ok=True)
        planned = [os.path.basename(o) for o in outputs]
        before = {case: _mtime(os.path.join(args.o, case + ending)) for case in planned}

        def write_report(done: Sequence[str], complete: bool) -> None:
            atomic_write_json({'modalities': names, 'missing_option': [names[c] for c in dropped],
                               'part': {'part_id': args.part_id, 'num_parts': args.num_parts}, 'complete': complete,
                               'cases': {c: report[c] for c in done},
                               'not_predicted': [c for c in planned if c not in done], 'refused': refused},
                              Path(report_file))

        write_report([], False)  # an older report of this part is replaced before anything is predicted
        finished = False
        try:
            if list_of_lists:
                prev = args.prev_stage_predictions
                if args.npp == 0 and args.nps == 0:
                    predictor.predict_from_files_sequential(list_of_lists, outputs, args.save_probabilities,
                                                            not args.continue_prediction, prev)
                else:
                    predictor.predict_from_files(list_of_lists, outputs, save_probabilities=args.save_probabilities,
                                                 overwrite=not args.continue_prediction,
                                                 num_processes_preprocessing=max(1, args.npp),
                                                 num_processes_segmentation_export=max(1, args.nps),
                                                 folder_with_segs_from_prev_stage=prev)
            finished = True
        finally:
            # interrupted: the cases whose prediction this call wrote (or kept, with --continue_prediction)
            done = planned if finished else [c for c in planned if _predicted(
                os.path.join(args.o, c + ending), before[c], args.continue_prediction)]
            write_report(done, finished)
            if not finished:
                print(f"nnUNetv2_mm_predict: stopped after {len(done)} of {len(planned)} case(s); {report_file} "
                      f"lists the cases predicted so far (complete: false)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(zero_folder, ignore_errors=True)
    if refused:
        print(f"nnUNetv2_mm_predict: error: {len(refused)} case(s) refused: {', '.join(sorted(refused))} (reasons "
              f"above and in {report_file}); {len(list_of_lists)} case(s) predicted", file=sys.stderr)
        return 1
    return 0


def report_file_name(part_id: int = 0, num_parts: int = 1) -> str:
    """The report of one ``-part_id``/``-num_parts`` call: ``missing_modalities.json`` for a single call,
    ``missing_modalities.part{K}of{N}.json`` for parallel ones (which would otherwise overwrite each other's)."""
    return 'missing_modalities.json' if num_parts == 1 else f'missing_modalities.part{part_id}of{num_parts}.json'


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def _predicted(path: str, mtime_before: int | None, kept: bool) -> bool:
    """Whether the prediction ``path`` is there and was written since ``mtime_before`` (or ``kept``: any)."""
    now = _mtime(path)
    return now is not None and (kept or now != mtime_before)


if __name__ == '__main__':
    sys.exit(main())
