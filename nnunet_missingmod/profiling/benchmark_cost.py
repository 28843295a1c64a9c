"""``nnUNetv2_mm_benchmark_cost``: wall time of the all-subsets benchmark against one ``nnUNetv2_predict`` per subset.

The benchmark preprocesses every case once and applies the modality subsets in preprocessed space
(``nnUNetv2_mm_benchmark``). The alternative a user without it has is one ``nnUNetv2_predict`` run per subset on a
copy of the test set whose missing modalities are zero-filled files. This command times both on the same cases,
model and settings:

* ``benchmark_s``: one ``nnUNetv2_mm_benchmark -i IMAGES -l LABELS`` run (prediction *and* metrics);
* ``predict_s``: the sum over subsets of ``nnUNetv2_predict`` on the zero-filled copies (prediction only; writing
  the copies is not timed and the metrics would come on top).

Both run as console commands in subprocesses, start-up included, as a user would run them. Writes ``cost.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from tqdm import tqdm

from nnunet_missingmod.cli import ArgumentParser, CommandError, check_device, command, dataset_name


def zero_filled_copy(cases: dict, subset, dataset_json: dict, output: str) -> None:
    """The cases (``scan_input_folder``'s ``{case: {channel: path}}``) with the modalities outside ``subset``
    (channel indices) replaced by zero images."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_missingmod.inference.predict import prepare_case_files
    from nnunet_missingmod.modalities import modality_names
    names, ending = modality_names(dataset_json), dataset_json['file_ending']
    reader_writer = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)()
    os.makedirs(output, exist_ok=True)
    dropped = [c for c in range(len(names)) if c not in subset]
    for case, files in cases.items():
        paths, _ = prepare_case_files(case, files, names, dropped, reader_writer, ending, output)
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


@command('nnUNetv2_mm_benchmark_cost')
def main(argv=None) -> int:
    from nnunet_missingmod.inference.predict import add_nnunet_predict_arguments
    parser = ArgumentParser(prog='nnUNetv2_mm_benchmark_cost', description=__doc__.split('\n\n')[0])
    add_nnunet_predict_arguments(parser, only=MODEL_FLAGS)
    parser.add_argument('-i', required=True, help='test images (nnU-Net raw layout, every modality present)')
    parser.add_argument('-l', required=True, help='reference label maps of -i')
    parser.add_argument('-o', required=True, help='work folder; cost.json is written here')
    parser.add_argument('--subsets', nargs='+', default=None, help='only these subsets (default: all)')
    args = parser.parse_args(argv)
    check_device(args.device)

    from nnunetv2.paths import nnUNet_raw

    from nnunet_missingmod.env import enable_ext_trainers
    from nnunet_missingmod.evaluation.benchmark import benchmark_subsets
    from nnunet_missingmod.inference.predict import check_model, scan_input_folder
    from nnunet_missingmod.modalities import modality_names

    enable_ext_trainers()  # nnUNetv2_predict must find our trainers

    dataset_json_file = os.path.join(nnUNet_raw or '', dataset_name(args.d), 'dataset.json')
    if not os.path.isfile(dataset_json_file):
        raise CommandError(f"{dataset_json_file}: no dataset.json (is nnUNet_raw set?)")
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
    check_model(args.d, args.tr, args.p, args.c, args.f, args.chk)
    model = ['-d', args.d, '-c', args.c, '-tr', args.tr, '-p', args.p, '-f', *map(str, args.f), '-chk', args.chk,
             '-step_size', str(args.step_size), '-device', args.device,
             *(['--disable_tta'] if args.disable_tta else [])]
    work = os.path.abspath(args.o)
    os.makedirs(work, exist_ok=True)

    print(f"nnUNetv2_mm_benchmark over {len(subsets)} subsets ...", flush=True)
    benchmark_s = _timed(['nnUNetv2_mm_benchmark', *model, '-i', args.i, '-l', args.l, '-o',
                          os.path.join(work, 'benchmark'), '--overwrite', '--subsets', *[n for n, _ in subsets],
                          '--disable_progress_bar'])
    per_subset = {}
    for name, subset in tqdm(subsets, desc='nnUNetv2_predict per subset'):
        folder = os.path.join(work, 'inputs', name)
        zero_filled_copy(cases, subset, dataset_json, folder)
        per_subset[name] = _timed(['nnUNetv2_predict', *model, '-i', folder, '-o',
                                   os.path.join(work, 'predictions', name), '--disable_progress_bar'])
    predict_s = sum(per_subset.values())
    result = {'benchmark_s': benchmark_s, 'predict_s': predict_s, 'predict_over_benchmark': predict_s / benchmark_s,
              'predict_s_per_subset': per_subset, 'settings': vars(args), 'date': time.strftime('%Y-%m-%d')}
    with open(os.path.join(work, 'cost.json'), 'w') as f:
        json.dump(result, f, indent=2)
    print(f"nnUNetv2_mm_benchmark (prediction + metrics): {benchmark_s:.1f} s; {len(subsets)} x nnUNetv2_predict "
          f"(prediction only): {predict_s:.1f} s; ratio {predict_s / benchmark_s:.2f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
