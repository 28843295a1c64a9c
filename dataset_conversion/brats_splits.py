"""Published or user train/val/test splits of a BraTS source, and nnU-Net's ``splits_final.json`` made from one."""
from __future__ import annotations

import json
from pathlib import Path

from nnunet_missingmod.dataset_conversion.brats_layouts import SourceCase
from nnunet_missingmod.dataset_conversion.errors import ConversionError, join_errors
from nnunet_missingmod.splits import FOLDER as SPLITS_FOLDER
from nnunet_missingmod.splits import source_case_name, split_file

#: nnU-Net's file of custom cross-validation splits
SPLITS_FINAL = 'splits_final.json'


def read_split(split, cases: dict[str, SourceCase], source: Path) -> dict[str, list[str]]:
    """Load and check a split (a shipped split's name or a JSON file, see :mod:`nnunet_missingmod.splits`); returns
    ``{"train", "val", "test"}`` lists of source case names (published names mapped by
    :func:`~nnunet_missingmod.splits.source_case_name`)."""
    try:
        path = split_file(split)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    label = f'split {path.stem}' if path.parent == SPLITS_FOLDER else f'split file {path}'
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f'{label}: cannot read it as JSON ({e})') from e
    if not isinstance(content, dict):
        raise ConversionError(f'{label}: expected an object {{"train": [...], "val": [...], "test": [...]}}')
    if 'validation' in content and 'val' not in content:
        content['val'] = content.pop('validation')
    unknown = sorted(set(content) - {'train', 'val', 'test', 'source'})
    if unknown:
        raise ConversionError(f'{label}: unknown key(s) {unknown}; expected train, val, test (and source)')
    out = {}
    for key in ('train', 'val', 'test'):
        names = content.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConversionError(f'{label}: "{key}" must be a list of case names')
        out[key] = list(names)
    if not out['train']:
        raise ConversionError(f'{label}: the "train" list is empty')
    errors, owner, absent = [], {}, []
    for key in ('train', 'val', 'test'):
        resolved = []
        for listed in out[key]:
            n = source_case_name(listed, cases)
            if n is None:
                absent.append(listed)
                continue
            if n in owner:
                errors.append(f'{label}: case {n} is listed in "{owner[n]}" and in "{key}"')
                continue
            owner[n] = key
            resolved.append(n)
            if key in ('train', 'val') and 'seg' not in cases[n].files:
                errors.append(f'{label}: {key} case {n} has no segmentation file in {cases[n].folder}')
        out[key] = resolved
    if absent:
        shown = ', '.join(absent[:10]) + (f' ... and {len(absent) - 10} more' if len(absent) > 10 else '')
        errors.insert(0, f'{label}: {len(absent)} listed case(s) not in the source folder {source}: {shown}')
    unlisted = sorted(set(cases) - set(owner))
    if unlisted:
        errors.append(f'{label}: {len(unlisted)} source case(s) are in no list, e.g. '
                      f'{", ".join(unlisted[:5])}; list every case (or remove it from the source)')
    if errors:
        raise ConversionError(join_errors(errors))
    return out


def nnunet_folds(assignment: dict) -> list[dict]:
    """nnU-Net's ``splits_final.json`` content: one fold, the split's train and val cases."""
    return [{'train': assignment['train'], 'val': assignment['val']}]
