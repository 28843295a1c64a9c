"""``nnUNetv2_mm_small_config``: add a small CPU configuration to a plans file, the nnU-Net way.

The new configuration ``inherits_from`` 3d_fullres (same spacing and preprocessed data, no re-preprocessing) and
overrides only the patch size, batch size and the network's depth/widths. It also carries an ``mm_schedule``
block (epochs, iterations) that the trainers of this package honour, so demos and tests train briefly with the
very trainers users run on GPUs. nnU-Net's code is not touched.

Refused, in one line and with the plans file untouched: an existing configuration name without ``--overwrite``;
the parent or one of its ancestors as the new name (even with ``--overwrite``: a configuration cannot inherit from
itself); a patch whose dimensionality differs from the parent's; sizes, counts and the schedule that are not positive
whole numbers. The plans file is rewritten through a temporary sibling file and a rename.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from copy import deepcopy

from nnunet_missingmod.cli import ArgumentParser, CommandError, command, dataset_name, require_env_path

PROG = 'nnUNetv2_mm_small_config'

#: per-stage lists of the dynamic_network_architectures U-Nets (encoder side / decoder side)
_ENCODER_LISTS = ('features_per_stage', 'kernel_sizes', 'strides', 'n_conv_per_stage', 'n_blocks_per_stage')
_DECODER_LISTS = ('n_conv_per_stage_decoder',)


def make_small_configuration(plans: dict, patch_size, features, batch_size: int = 2, parent: str = '3d_fullres',
                             schedule: dict | None = None) -> dict:
    """A configuration dict inheriting from ``parent`` with a smaller patch and network.

    The depth is ``len(features)``; kernel sizes and strides are the parent's first stages, so the network
    stays anisotropy-aware. Raises ValueError when the patch is not divisible by the total stride, its
    dimensionality is not the parent's, or a size, count or schedule entry is not a positive whole number.
    """
    if parent not in plans['configurations']:
        raise ValueError(f"plans have no configuration {parent!r} to inherit from "
                         f"(have {list(plans['configurations'])})")
    _check_positive('patch size', patch_size)
    _check_positive('features', features)
    _check_positive('batch size', [batch_size])
    for key, value in (schedule or {}).items():
        _check_positive(key, [value])
    resolved = _resolved(plans, parent)
    architecture = deepcopy(resolved['architecture'])
    kwargs = architecture['arch_kwargs']
    parent_patch = resolved.get('patch_size') or []
    dims = len(parent_patch) or len(kwargs['strides'][0])
    if len(patch_size) != dims:
        shown = f" (patch {' x '.join(map(str, parent_patch))})" if parent_patch else ''
        raise ValueError(f"--patch gives {len(patch_size)} sizes but {parent} is {dims}D{shown}; give {dims} sizes")
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


def _check_positive(what: str, values) -> None:
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad or not len(values):
        raise ValueError(f"{what} must be positive whole numbers, got {list(values)}")


def ancestors(plans: dict, name: str) -> list[str]:
    """``name`` and the configurations it inherits from, nearest first; ValueError for a missing parent or a
    circular chain."""
    chain = [name]
    while 'inherits_from' in plans['configurations'][chain[-1]]:
        parent = plans['configurations'][chain[-1]]['inherits_from']
        if parent in chain:
            raise ValueError(f"configuration {name!r} inherits from itself ({' -> '.join(chain + [parent])})")
        if parent not in plans['configurations']:
            raise ValueError(f"configuration {chain[-1]!r} inherits from {parent!r}, which the plans do not have")
        chain.append(parent)
    return chain


def _resolved(plans: dict, name: str) -> dict:
    config = {}
    for ancestor in reversed(ancestors(plans, name)):
        config.update(deepcopy(plans['configurations'][ancestor]))
    return config


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def plans_file(dataset: str, plans_identifier: str = 'nnUNetPlans') -> str:
    """``$nnUNet_preprocessed/DatasetXXX_Name/<plans>.json``; :class:`CommandError` (one line) when the variable is
    unset, the data set unknown or the file absent."""
    root = require_env_path('nnUNet_preprocessed', 'the plans file is in $nnUNet_preprocessed/DatasetXXX_Name')
    path = os.path.join(root, dataset_name(dataset), plans_identifier + '.json')
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no plans file; run nnUNetv2_plan_and_preprocess first")
    return path


def read_plans(path: str) -> dict:
    try:
        with open(path) as f:
            plans = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CommandError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(plans, dict) or not isinstance(plans.get('configurations'), dict):
        raise CommandError(f"{path}: no 'configurations'; is it an nnU-Net plans file?")
    return plans


def check_name(plans: dict, path: str, name: str, parent: str, overwrite: bool) -> None:
    """:class:`CommandError` for a new configuration ``name`` that is ``parent`` or one of its ancestors (always) or
    exists already (without ``overwrite``)."""
    if parent not in plans['configurations']:
        raise CommandError(f"{path} has no configuration {parent!r} to inherit from (it has "
                           f"{', '.join(plans['configurations'])}); choose one with --parent")
    try:
        chain = ancestors(plans, parent)
    except ValueError as e:
        raise CommandError(f"{path}: {e}") from None
    if name in chain:
        via = f" (via {' -> '.join(chain[:chain.index(name) + 1])})" if name != parent else ''
        raise CommandError(f"-c {name}: the new configuration would inherit from itself{via}; {path} keeps it - "
                           f"choose another name with -c")
    if name in plans['configurations'] and not overwrite:
        raise CommandError(f"{path} already has a configuration {name!r}; use --overwrite to replace it or choose "
                           f"another name with -c")


def write_plans(plans: dict, path: str) -> None:
    """Write ``plans`` to ``path`` whole: a temporary sibling file, then a rename (the file's mode is kept)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(plans, f, indent=4)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def add_small_configuration(dataset: str, name: str = '3d_small', plans_identifier: str = 'nnUNetPlans',
                            overwrite: bool = False, **kwargs) -> str:
    """Write configuration ``name`` into ``$nnUNet_preprocessed/DatasetXXX/<plans>.json``; returns the path.

    Everything is checked before the file is rewritten (:func:`check_name`, :func:`make_small_configuration`)."""
    path = plans_file(dataset, plans_identifier)
    plans = read_plans(path)
    check_name(plans, path, name, kwargs.get('parent', '3d_fullres'), overwrite)
    try:
        configuration = make_small_configuration(plans, **kwargs)
    except ValueError as e:
        raise CommandError(f"{path}: {e}") from None
    plans['configurations'][name] = configuration
    write_plans(plans, path)
    return path


@command(PROG)
def main(argv=None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-d', required=True, help='dataset name or ID')
    parser.add_argument('-c', default='3d_small', help='name of the new configuration (neither --parent nor one '
                                                       'of its ancestors)')
    parser.add_argument('-p', default='nnUNetPlans', help='plans identifier')
    parser.add_argument('--parent', default='3d_fullres', help='configuration to inherit from')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing configuration -c')
    parser.add_argument('--patch', type=positive_int, nargs='+', default=[48, 48, 48],
                        help="patch size, one number per dimension of --parent")
    parser.add_argument('--features', type=positive_int, nargs='+', default=[8, 16, 32, 64])
    parser.add_argument('--batch-size', type=positive_int, default=2)
    parser.add_argument('--epochs', type=positive_int, default=20)
    parser.add_argument('--iterations', type=positive_int, default=25, help='training iterations per epoch')
    parser.add_argument('--val-iterations', type=positive_int, default=5, help='validation iterations per epoch')
    args = parser.parse_args(argv)
    schedule = {'num_epochs': args.epochs, 'num_iterations_per_epoch': args.iterations,
                'num_val_iterations_per_epoch': args.val_iterations}
    path = add_small_configuration(args.d, args.c, args.p, overwrite=args.overwrite, patch_size=args.patch,
                                   features=args.features, batch_size=args.batch_size, parent=args.parent,
                                   schedule=schedule)
    print(f"added configuration {args.c!r} (inherits from {args.parent}) to {path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
