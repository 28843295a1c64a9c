"""``nnUNetv2_mm_small_config``: add a small CPU configuration to a plans file, the nnU-Net way.

The new configuration ``inherits_from`` 3d_fullres (same spacing and preprocessed data, no re-preprocessing) and
overrides only the patch size, batch size and the network's depth/widths. It also carries an ``mm_schedule``
block (epochs, iterations) that the trainers of this package honour, so demos and tests train briefly with the
very trainers users run on GPUs. nnU-Net's code is not touched.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from copy import deepcopy

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunet_missingmod.cli import ArgumentParser, command, dataset_name

#: per-stage lists of the dynamic_network_architectures U-Nets (encoder side / decoder side)
_ENCODER_LISTS = ('features_per_stage', 'kernel_sizes', 'strides', 'n_conv_per_stage', 'n_blocks_per_stage')
_DECODER_LISTS = ('n_conv_per_stage_decoder',)


def make_small_configuration(plans: dict, patch_size, features, batch_size: int = 2, parent: str = '3d_fullres',
                             schedule: dict | None = None) -> dict:
    """A configuration dict inheriting from ``parent`` with a smaller patch and network.

    The depth is ``len(features)``; kernel sizes and strides are the parent's first stages, so the network
    stays anisotropy-aware. Raises ValueError when the patch is not divisible by the total stride.
    """
    if parent not in plans['configurations']:
        raise ValueError(f"plans have no configuration {parent!r} to inherit from "
                         f"(have {list(plans['configurations'])})")
    architecture = deepcopy(_resolved(plans, parent)['architecture'])
    kwargs = architecture['arch_kwargs']
    n_stages = len(features)
    if n_stages > kwargs['n_stages']:
        raise ValueError(f"{n_stages} stages requested but {parent} has only {kwargs['n_stages']}")
    kwargs['n_stages'] = n_stages
    for key in _ENCODER_LISTS:
        if key in kwargs:
            kwargs[key] = kwargs[key][:n_stages]
    for key in _DECODER_LISTS:
        if key in kwargs:
            kwargs[key] = kwargs[key][:n_stages - 1]
    kwargs['features_per_stage'] = [int(f) for f in features]
    total_stride = [1] * len(patch_size)
    for stride in kwargs['strides']:
        total_stride = [t * s for t, s in zip(total_stride, stride)]
    if any(p % t for p, t in zip(patch_size, total_stride)):
        raise ValueError(f"patch size {list(patch_size)} is not divisible by the total stride {total_stride}")
    config = {'inherits_from': parent, 'patch_size': [int(p) for p in patch_size], 'batch_size': int(batch_size),
              'architecture': architecture}
    if schedule:
        config['mm_schedule'] = {k: int(v) for k, v in schedule.items()}
    return config


def _resolved(plans: dict, name: str) -> dict:
    config = deepcopy(plans['configurations'][name])
    if 'inherits_from' in config:
        base = _resolved(plans, config['inherits_from'])
        base.update(config)
        config = base
    return config


def add_small_configuration(dataset: str, name: str = '3d_small', plans_identifier: str = 'nnUNetPlans',
                            **kwargs) -> str:
    """Write configuration ``name`` into ``$nnUNet_preprocessed/DatasetXXX/<plans>.json``; returns the path."""
    path = os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset), plans_identifier + '.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no plans file; run nnUNetv2_plan_and_preprocess first")
    with open(path) as f:
        plans = json.load(f)
    plans['configurations'][name] = make_small_configuration(plans, **kwargs)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(plans, f, indent=4)
    os.replace(tmp, path)
    return path


@command('nnUNetv2_mm_small_config')
def main(argv=None) -> int:
    parser = ArgumentParser(prog='nnUNetv2_mm_small_config', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-d', required=True, help='dataset name or ID')
    parser.add_argument('-c', default='3d_small', help='name of the new configuration')
    parser.add_argument('-p', default='nnUNetPlans', help='plans identifier')
    parser.add_argument('--parent', default='3d_fullres', help='configuration to inherit from')
    parser.add_argument('--patch', type=int, nargs='+', default=[48, 48, 48])
    parser.add_argument('--features', type=int, nargs='+', default=[8, 16, 32, 64])
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--epochs', type=int, default=20)
    parser.add_argument('--iterations', type=int, default=25, help='training iterations per epoch')
    parser.add_argument('--val-iterations', type=int, default=5, help='validation iterations per epoch')
    args = parser.parse_args(argv)
    schedule = {'num_epochs': args.epochs, 'num_iterations_per_epoch': args.iterations,
                'num_val_iterations_per_epoch': args.val_iterations}
    path = add_small_configuration(dataset_name(args.d), args.c, args.p, patch_size=args.patch, features=args.features,
                                   batch_size=args.batch_size, parent=args.parent, schedule=schedule)
    print(f"added configuration {args.c!r} (inherits from {args.parent}) to {path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
