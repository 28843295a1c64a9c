"""``nnUNetv2_mm_demo``: the whole pipeline on the synthetic BraTS-like data, through nnU-Net's own commands.

generate synthetic cases -> ``nnUNetv2_mm_convert_brats`` (with a train/val/test split) ->
``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_mm_small_config`` (CPU only) -> ``nnUNetv2_train -tr TRAINER`` ->
``nnUNetv2_predict`` on the held-out cases -> ``nnUNetv2_evaluate_folder`` (Dice per region) ->
``nnUNetv2_mm_benchmark`` (Dice and HD95 for every modality subset).

Every step is a subprocess of the real console command, with the nnU-Net folders inside ``-o``. By default the
small CPU configuration (``3d_small``) is trained; ``--full`` trains nnU-Net's 3d_fullres with its own schedule
(meant for a GPU). On the CPU, prediction and benchmark run without test-time mirroring (8x fewer network
passes); ``--full`` keeps nnU-Net's default mirroring.
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


def write_split(source: Path, n_test: int, n_val: int, path: Path) -> None:
    """Published-split style JSON of the source case folders (see ``nnUNetv2_mm_convert_brats --split``)."""
    names = sorted(p.name for p in source.iterdir() if p.is_dir())
    split = {'test': names[:n_test], 'val': names[n_test:n_test + n_val], 'train': names[n_test + n_val:]}
    path.write_text(json.dumps(split, indent=2))


def dice_summary(summary_json: Path) -> dict:
    """Mean Dice per region from nnU-Net's evaluation ``summary.json`` (keys are region label tuples)."""
    summary = json.loads(summary_json.read_text())
    return {k: v['Dice'] for k, v in summary['mean'].items()}


@command('nnUNetv2_mm_demo')
def main(argv=None) -> int:
    parser = ArgumentParser(prog='nnUNetv2_mm_demo', description=__doc__.split('\n\n')[0],
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
    if work.exists() and not work.is_dir():
        parser.error(f'-o {work} is a file, not a folder')
    if (work / 'nnUNet_raw' / DATASET_NAME).exists():
        print(f"{work} holds an earlier demo run; it is replaced")
        for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results', 'brats_source', 'predictions',
                     'benchmark'):
            shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
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
