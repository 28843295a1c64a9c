"""``nnUNetv2_mm_demo``: the whole pipeline on the synthetic BraTS-like data, through nnU-Net's own commands.

generate synthetic cases -> ``nnUNetv2_mm_convert_brats`` (with a train/val/test split) ->
``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_mm_small_config`` (CPU only) -> ``nnUNetv2_train -tr TRAINER`` ->
``nnUNetv2_predict`` on the held-out cases -> ``nnUNetv2_evaluate_folder`` (Dice per region) ->
``nnUNetv2_mm_benchmark`` (Dice and HD95 for every modality subset).

Every step is a subprocess of the real console command, with the nnU-Net folders inside ``-o``. By default the
small CPU configuration (``3d_small``) is trained; ``--full`` trains nnU-Net's 3d_fullres with its own schedule
(meant for a GPU). On the CPU, prediction and benchmark run without test-time mirroring (8x fewer network
passes); ``--full`` keeps nnU-Net's default mirroring.

``-o`` must be new, empty, or the folder of an earlier demo run: the demo writes the marker file
``-o/.nnunet_missingmod_demo`` (:data:`MARKER`) listing what it writes (:data:`DEMO_PATHS`) before its first step,
and a later run removes exactly those paths (the nnU-Net folders only if nothing else is left in them). Anything
else is refused in one line before any work: a non-empty folder without the marker, a marker that lists other
paths, another ``Dataset900_*`` data set. Other data sets in the nnU-Net folders of ``-o`` are never touched.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnunet_missingmod.cli import ArgumentParser, CommandError, check_device, command
from nnunet_missingmod.env import ext_trainer_path
from nnunet_missingmod.regions import region_name_of_labels

DATASET_ID = 900
DATASET_NAME = 'Dataset900_SyntheticBraTS'
PROG = 'nnUNetv2_mm_demo'
#: the marker file in ``-o`` that lists what the demo wrote there (and is therefore free to replace)
MARKER = '.nnunet_missingmod_demo'
#: nnU-Net's folders, inside ``-o``; the demo writes only its data set into them
NNUNET_FOLDERS = ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')
#: everything the demo writes into ``-o`` (relative POSIX paths): its data set in each nnU-Net folder, the source
#: cases, the split, the predictions and the benchmark. The nnU-Net folders themselves are created by the demo
#: too; they are removed only when nothing else is left in them
DEMO_PATHS = tuple(f'{folder}/{DATASET_NAME}' for folder in NNUNET_FOLDERS) + (
    'brats_source', 'split.json', 'predictions', 'benchmark') + NNUNET_FOLDERS


def _step(title: str, cmd: list[str], env: dict) -> None:
    print(f"\n=== {title}\n$ {' '.join(cmd)}", flush=True)
    start = time.time()
    status = subprocess.run(cmd, env=env).returncode
    if status != 0:
        raise CommandError(f"step '{title}' failed with exit status {status} (its messages are above): "
                           f"{' '.join(cmd)}")
    print(f"--- {title}: {time.time() - start:.0f} s", flush=True)


def demo_environment(work: Path) -> dict:
    env = dict(os.environ)
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        (work / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(work / name)
    env['nnUNet_extTrainer'] = ext_trainer_path(os.environ.get('nnUNet_extTrainer'))
    env.setdefault('nnUNet_n_proc_DA', str(max(1, (os.cpu_count() or 2) - 1)))
    env.setdefault('nnUNet_def_n_proc', str(os.cpu_count() or 2))
    return env


def write_marker(work: Path) -> None:
    """Write :data:`MARKER` into ``work`` (atomically): the demo's claim on :data:`DEMO_PATHS` there."""
    marker = work / MARKER
    tmp = work / f'{MARKER}.tmp-{os.getpid()}'
    tmp.write_text(json.dumps({'written_by': PROG, 'dataset': DATASET_NAME, 'paths': list(DEMO_PATHS),
                               'note': 'nnUNetv2_mm_demo removes these paths (and nothing else) when it is run '
                                       'again into this folder'}, indent=2) + '\n')
    os.replace(tmp, marker)


def _read_marker(work: Path) -> list[str]:
    """The paths the marker of ``work`` lists; :class:`CommandError` for a marker the demo did not write."""
    marker = work / MARKER
    try:
        content = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CommandError(f"{marker}: not a marker of {PROG} ({type(e).__name__}); remove the earlier run "
                           f"yourself or choose another -o") from None
    paths = content.get('paths') if isinstance(content, dict) else None
    if not isinstance(paths, list) or content.get('written_by') != PROG:
        raise CommandError(f"{marker}: not a marker of {PROG} (no 'written_by' and 'paths'); remove the earlier "
                           f"run yourself or choose another -o")
    foreign = [p for p in paths if p not in DEMO_PATHS]
    if foreign:
        raise CommandError(f"{marker} lists {foreign}, not one of the demo's own paths; nothing was removed - "
                           f"remove the earlier run yourself or choose another -o")
    return paths


def _entry(path: Path) -> bool:
    return os.path.lexists(path)


def check_work_folder(work: Path) -> list[str]:
    """What an earlier demo run left in ``work`` and may be removed (the marker's paths that exist); raises
    :class:`CommandError` (one line, nothing changed) for anything the demo did not write itself in the way."""
    if _entry(work) and not work.is_dir():
        raise CommandError(f"-o {work} is a file, not a folder")
    if not work.is_dir() or not any(work.iterdir()):
        return []
    if not (work / MARKER).is_file():
        entries = sorted(p.name for p in work.iterdir())
        raise CommandError(f"-o {work} is not empty ({', '.join(entries[:5])}{' ...' if len(entries) > 5 else ''}) "
                           f"and holds no {MARKER} of an earlier demo run; the demo writes only into a new or empty "
                           f"folder or replaces its own earlier run - choose another -o")
    listed = _read_marker(work)
    for folder in NNUNET_FOLDERS:
        if _entry(work / folder) and not (work / folder).is_dir():
            raise CommandError(f"{work / folder} is a file, not an nnU-Net folder; choose another -o")
        if (work / folder).is_dir():
            other = sorted(p.name for p in (work / folder).iterdir()
                           if p.name.startswith(f'Dataset{DATASET_ID:03d}') and p.name != DATASET_NAME)
            if other:
                raise CommandError(f"{work / folder / other[0]} uses the demo's data set id {DATASET_ID} and was not "
                                   f"written by the demo; it is left alone - choose another -o")
    return [p for p in listed if _entry(work / p)]


def remove_earlier_run(work: Path, paths: list[str]) -> None:
    """Remove the ``paths`` (of :func:`check_work_folder`) in ``work``: the data sets, files and folders of the
    earlier demo run; an nnU-Net folder only if it is empty then."""
    for rel in paths:
        if rel in NNUNET_FOLDERS:
            continue
        path = work / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for rel in paths:
        if rel in NNUNET_FOLDERS and (work / rel).is_dir() and not any((work / rel).iterdir()):
            (work / rel).rmdir()


def write_split(source: Path, n_test: int, n_val: int, path: Path) -> None:
    """Published-split style JSON of the source case folders (see ``nnUNetv2_mm_convert_brats --split``)."""
    names = sorted(p.name for p in source.iterdir() if p.is_dir())
    split = {'test': names[:n_test], 'val': names[n_test:n_test + n_val], 'train': names[n_test + n_val:]}
    path.write_text(json.dumps(split, indent=2))


def dice_summary(summary_json: Path) -> dict:
    """Mean Dice per region from nnU-Net's evaluation ``summary.json`` (keys are region label tuples)."""
    summary = json.loads(summary_json.read_text())
    return {k: v['Dice'] for k, v in summary['mean'].items()}


@command(PROG)
def main(argv=None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-o', '--output', default='demo_output', help='work folder (nnU-Net folders go inside)')
    parser.add_argument('-tr', '--trainer', default='nnUNetTrainerModalityDropout')
    parser.add_argument('-n', '--cases', type=int, default=24, help='synthetic cases in total')
    parser.add_argument('--test-cases', type=int, default=4, help='held-out cases for prediction')
    parser.add_argument('--val-cases', type=int, default=3)
    parser.add_argument('--layout', default='brats2020', choices=['brats2020', 'brats2023'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--epochs', type=int, default=8, help='small configuration only')
    parser.add_argument('--iterations', type=int, default=40, help='iterations per epoch, small configuration')
    parser.add_argument('--full', action='store_true', help="train nnU-Net's 3d_fullres with its full schedule")
    parser.add_argument('-device', default='cpu', choices=['cpu', 'cuda', 'mps'])
    parser.add_argument('--no-benchmark', action='store_true', help='skip the all-subsets benchmark')
    args = parser.parse_args(argv)
    if args.cases < 1 or args.test_cases < 0 or args.val_cases < 0:
        parser.error('-n, --test-cases and --val-cases must not be negative (and -n at least 1)')
    if args.test_cases + args.val_cases >= args.cases:
        parser.error(f'--test-cases {args.test_cases} + --val-cases {args.val_cases} leave no training case of '
                     f'-n {args.cases}')
    check_device(args.device)

    work = Path(args.output).resolve()
    earlier = check_work_folder(work)  # refusals: before anything is removed or written
    if earlier:
        print(f"{work} holds an earlier demo run; its {', '.join(p for p in earlier if p not in NNUNET_FOLDERS)} "
              f"are replaced")
        remove_earlier_run(work, earlier)
    work.mkdir(parents=True, exist_ok=True)
    write_marker(work)
    env = demo_environment(work)
    configuration = '3d_fullres' if args.full else '3d_small'
    py = sys.executable
    start = time.time()

    source = work / 'brats_source'
    _step('synthetic BraTS-like data', [py, '-m', 'nnunet_missingmod.dataset_conversion.synthetic_brats',
                                        '-o', str(source), '-n', str(args.cases), '--seed', str(args.seed),
                                        '--layout', args.layout], env)
    split = work / 'split.json'
    write_split(source, args.test_cases, args.val_cases, split)
    _step('conversion to nnU-Net raw', [py, '-m', 'nnunet_missingmod.dataset_conversion.brats', '-i', str(source),
                                        '-d', str(DATASET_ID), '-n', 'SyntheticBraTS', '--split', str(split)], env)
    _step('planning and preprocessing', ['nnUNetv2_plan_and_preprocess', '-d', str(DATASET_ID), '-c', '3d_fullres',
                                         '-np', env['nnUNet_def_n_proc']], env)
    if not args.full:
        _step('small CPU configuration', [py, '-m', 'nnunet_missingmod.small_config', '-d', str(DATASET_ID),
                                          '-c', configuration, '--epochs', str(args.epochs),
                                          '--iterations', str(args.iterations)], env)
    _step(f'training {args.trainer}', ['nnUNetv2_train', str(DATASET_ID), configuration, '0', '-tr', args.trainer,
                                       '-device', args.device], env)
    raw = work / 'nnUNet_raw' / DATASET_NAME
    tta = [] if args.full else ['--disable_tta']
    predictions = work / 'predictions'
    _step('prediction of the held-out cases', ['nnUNetv2_predict', '-i', str(raw / 'imagesTs'), '-o', str(predictions),
                                               '-d', str(DATASET_ID), '-c', configuration, '-tr', args.trainer,
                                               '-f', '0', '-device', args.device, *tta], env)
    _step('evaluation', ['nnUNetv2_evaluate_folder', str(raw / 'labelsTs'), str(predictions),
                         '-djfile', str(predictions / 'dataset.json'), '-pfile', str(predictions / 'plans.json')], env)
    dice = dice_summary(predictions / 'summary.json')
    if not args.no_benchmark:
        _step('missing-modality benchmark (all modality subsets)',
              ['nnUNetv2_mm_benchmark', '-d', str(DATASET_ID), '-c', configuration, '-tr', args.trainer, '-f', '0',
               '-i', str(raw / 'imagesTs'), '-l', str(raw / 'labelsTs'), '-o', str(work / 'benchmark'),
               '-device', args.device, *tta], env)
    print(f"\nDemo finished in {(time.time() - start) / 60:.1f} min. Held-out Dice with all modalities "
          f"({args.trainer}, {configuration}):")
    dataset_json = json.loads((raw / 'dataset.json').read_text())
    for region, value in dice.items():
        print(f"  {region_name_of_labels(dataset_json, region):>3}: {value:.3f}")
    if not args.no_benchmark:
        print(f"All-subsets table: {work / 'benchmark'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
