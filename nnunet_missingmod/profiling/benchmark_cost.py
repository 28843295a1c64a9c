"""``nnUNetv2_mm_benchmark_cost``: wall time of the all-subsets benchmark against one ``nnUNetv2_predict`` per subset.

The benchmark preprocesses every case once and applies the modality subsets in preprocessed space
(``nnUNetv2_mm_benchmark``). The alternative a user without it has is one ``nnUNetv2_predict`` run per subset on a
copy of the test set whose missing modalities are zero-filled files. This command times both on the same cases,
model and settings:

* ``benchmark_s``: one ``nnUNetv2_mm_benchmark -i IMAGES -l LABELS`` run (prediction *and* metrics);
* ``predict_s``: the sum over subsets of ``nnUNetv2_predict`` on the zero-filled copies (prediction only; writing
  the copies is not timed and the metrics would come on top).

Both run as console commands in subprocesses, start-up included, as a user would run them. Before anything runs,
every input is checked as ``nnUNetv2_mm_benchmark`` checks it (every voxel of every image and reference label map,
one geometry per case). A non-empty ``-o`` is refused unless ``--overwrite``. Everything is written into a new
hidden folder next to ``-o`` (so no zero-filled copy of an earlier run is ever timed again) and replaces this
command's outputs in ``-o`` when it has finished: ``cost.json``, ``benchmark/`` (the benchmark's reports),
``inputs/<subset>/`` (the zero-filled copies) and ``predictions/<subset>/``; other files in ``-o`` stay.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from tqdm import tqdm

from nnunet_missingmod.cli import ArgumentParser, CommandError, check_device, command, dataset_name, require_env_path


def zero_filled_copy(cases: dict, subset, dataset_json: dict, output: str, decode_voxels: bool = True) -> None:
    """The cases (``scan_input_folder``'s ``{case: {channel: path}}``) with the modalities outside ``subset``
    (channel indices) replaced by zero images (``decode_voxels=False``: the files were checked already)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_missingmod.inference.case_files import prepare_case_files
    from nnunet_missingmod.modalities import modality_names
    names, ending = modality_names(dataset_json), dataset_json['file_ending']
    reader_writer = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)()
    os.makedirs(output, exist_ok=True)
    dropped = [c for c in range(len(names)) if c not in subset]
    for case, files in cases.items():
        paths, _ = prepare_case_files(case, files, names, dropped, reader_writer, ending, output, decode_voxels)
        for channel, path in enumerate(paths):
            target = os.path.join(output, f'{case}_{channel:04d}{ending}')
            if os.path.abspath(path) != os.path.abspath(target):
                shutil.copyfile(path, target)


def _timed(cmd: list) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise CommandError(f"{cmd[0]} failed with exit status {proc.returncode}: "
                           f"{lines[-1] if lines else 'no message'} (command: {' '.join(map(str, cmd))})")
    return time.perf_counter() - start


#: the model / runtime flags both timed commands take (nnUNetv2_predict's own ones)
MODEL_FLAGS = ('-d', '-p', '-tr', '-c', '-f', '-chk', '-step_size', '--disable_tta', '-device')
#: what this command writes into ``-o`` (``--overwrite`` replaces exactly these, at the end)
OUTPUT_NAMES = ('cost.json', 'benchmark', 'inputs', 'predictions')


@command('nnUNetv2_mm_benchmark_cost')
def main(argv=None) -> int:
    from nnunet_missingmod.inference.predict import add_nnunet_predict_arguments
    parser = ArgumentParser(prog='nnUNetv2_mm_benchmark_cost', description=__doc__.split('\n\n')[0])
    add_nnunet_predict_arguments(parser, only=MODEL_FLAGS)
    parser.add_argument('-i', required=True, help='test images (nnU-Net raw layout, every modality present)')
    parser.add_argument('-l', required=True, help='reference label maps of -i')
    parser.add_argument('-o', required=True, help='output folder (empty or new, or see --overwrite); cost.json, '
                                                  'benchmark/, inputs/ and predictions/ are written here')
    parser.add_argument('--overwrite', action='store_true',
                        help='-o may hold an earlier run of this command: its outputs are replaced when this one has '
                             'finished')
    parser.add_argument('--subsets', nargs='+', default=None, help='only these subsets (default: all)')
    args = parser.parse_args(argv)
    check_device(args.device)


    from nnunet_missingmod.env import enable_ext_trainers
    from nnunet_missingmod.evaluation.benchmark import benchmark_subsets
    from nnunet_missingmod.evaluation.benchmark_output import check_output_folder, staged_outputs
    from nnunet_missingmod.inference.case_files import scan_input_folder
    from nnunet_missingmod.inference.predict import check_model
    from nnunet_missingmod.modalities import modality_names

    enable_ext_trainers()  # nnUNetv2_predict must find our trainers
    check_output_folder(args.o, args.overwrite, 'an earlier run of nnUNetv2_mm_benchmark_cost')

    raw = require_env_path('nnUNet_raw', "the data set's dataset.json is read there")
    dataset_json_file = os.path.join(raw, dataset_name(args.d), 'dataset.json')
    if not os.path.isfile(dataset_json_file):
        raise CommandError(f"{dataset_json_file}: no dataset.json")
    with open(dataset_json_file) as f:
        dataset_json = json.load(f)
    names = modality_names(dataset_json)
    subsets = benchmark_subsets(names, 'paper', args.subsets)
    cases = scan_input_folder(args.i, dataset_json['file_ending'], len(names))
    incomplete = {case: sorted(set(range(len(names))) - set(files))
                  for case, files in cases.items() if len(files) < len(names)}
    if not subsets:
        parser.error(f"--subsets {args.subsets} selects no subset")
    if not cases:
        raise CommandError(f"no CASE_XXXX{dataset_json['file_ending']} files in {args.i}")
    if incomplete:
        raise CommandError(f"{args.i}: every modality must be present for the comparison; missing channels "
                           f"{incomplete}")
    model_folder = check_model(args.d, args.tr, args.p, args.c, args.f, args.chk)
    check_inputs(model_folder, dataset_json, cases, args.i, args.l)
    model = ['-d', args.d, '-c', args.c, '-tr', args.tr, '-p', args.p, '-f', *map(str, args.f), '-chk', args.chk,
             '-step_size', str(args.step_size), '-device', args.device,
             *(['--disable_tta'] if args.disable_tta else [])]

    with staged_outputs(args.o, OUTPUT_NAMES, 'cost') as work:
        print(f"nnUNetv2_mm_benchmark over {len(subsets)} subsets ...", flush=True)
        benchmark_s = _timed(['nnUNetv2_mm_benchmark', *model, '-i', args.i, '-l', args.l, '-o',
                              os.path.join(work, 'benchmark'), '--subsets', *[n for n, _ in subsets],
                              '--disable_progress_bar'])
        per_subset = {}
        for name, subset in tqdm(subsets, desc='nnUNetv2_predict per subset'):
            folder = os.path.join(work, 'inputs', name)
            zero_filled_copy(cases, subset, dataset_json, folder, decode_voxels=False)
            per_subset[name] = _timed(['nnUNetv2_predict', *model, '-i', folder, '-o',
                                       os.path.join(work, 'predictions', name), '--disable_progress_bar'])
        predict_s = sum(per_subset.values())
        result = {'benchmark_s': benchmark_s, 'predict_s': predict_s,
                  'predict_over_benchmark': predict_s / benchmark_s, 'predict_s_per_subset': per_subset,
                  'settings': vars(args), 'date': time.strftime('%Y-%m-%d')}
        with open(os.path.join(work, 'cost.json'), 'w') as f:
            json.dump(result, f, indent=2)
    print(f"nnUNetv2_mm_benchmark (prediction + metrics): {benchmark_s:.1f} s; {len(subsets)} x nnUNetv2_predict "
          f"(prediction only): {predict_s:.1f} s; ratio {predict_s / benchmark_s:.2f}")
    return 0


def check_inputs(model_folder: str, dataset_json: dict, cases: dict, images: str, labels: str) -> None:
    """Every input checked before anything runs, as ``nnUNetv2_mm_benchmark`` checks it: a reference label map for
    every case (every voxel decoded, label values) and every image (readable, every voxel finite, one geometry per
    case, the reference's shape); one line naming the files."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_missingmod.evaluation.benchmark_cases import check_case_files, check_references, scan_test_folder
    from nnunet_missingmod.evaluation.metrics import all_labels_of
    from nnunet_missingmod.regions import dataset_regions
    if not os.path.isdir(labels):
        raise CommandError(f"label folder {labels} does not exist")
    scan_test_folder(images, labels, dataset_json)  # a reference for every case
    reader_writer = PlansManager(load_json(os.path.join(model_folder, 'plans.json'))).image_reader_writer_class()
    references = {case: os.path.join(labels, case + dataset_json['file_ending']) for case in sorted(cases)}
    shapes = check_references(reader_writer, list(references.values()), all_labels_of(dataset_regions(dataset_json)))
    check_case_files(cases, reader_writer, references, shapes)


if __name__ == '__main__':
    sys.exit(main())
