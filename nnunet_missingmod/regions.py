"""Regions of a data set, read from ``dataset.json``: their labels, output channels and names.

The one place that knows BraTS region names: ``'whole tumor'`` and its spellings are ``WT``, ``'tumor core'``
``TC``, ``'enhancing tumor'`` ``ET``. Any other label name is kept as the data set spells it. A ``labels`` value
that is a list is a region, as in nnU-Net's label manager; a data set without multi-label regions is evaluated
per foreground label. The order is dataset.json's, which is also the order of a region-based network's output
channels.
"""
from __future__ import annotations

import ast
from typing import List, Sequence, Tuple, Union

Region = Tuple[int, ...]

#: canonical short names of BraTS-like regions, matched against dataset.json label names
_CANONICAL_NAMES = {
    'WT': ('whole tumor', 'whole tumour', 'wt', 'whole'),
    'TC': ('tumor core', 'tumour core', 'tc', 'core'),
    'ET': ('enhancing tumor', 'enhancing tumour', 'et', 'enhancing', 'enhancing core'),
}


def region_short_name(label_name: str) -> str:
    """``'whole tumor'`` -> ``'WT'``, ``'tumor core'`` -> ``'TC'``, ``'enhancing tumor'`` -> ``'ET'``; any other
    name is returned unchanged (the data set's own label name)."""
    key = ' '.join(label_name.lower().replace('_', ' ').replace('-', ' ').split())
    for short, aliases in _CANONICAL_NAMES.items():
        if key in aliases:
            return short
    return label_name


def dataset_regions(dataset_json: dict) -> List[Tuple[str, Region]]:
    """``[(name, labels), ...]`` of the evaluated regions of a data set, in dataset.json order.

    Region-based data sets (some ``labels`` value is a list with more than one entry, nnU-Net's rule) are
    evaluated per region; label-based ones per foreground label. Background and ``ignore`` are skipped.
    """
    labels = dataset_json.get('labels')
    if not labels:
        raise ValueError("dataset.json has no 'labels': cannot tell the regions to evaluate")
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    out: List[Tuple[str, Region]] = []
    for name, value in labels.items():
        if name == 'ignore':
            continue
        values = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
        if all(v == 0 for v in values):
            continue
        if not has_regions:
            values = values[:1]
        out.append((region_short_name(name), tuple(sorted(set(values)))))
    names = [n for n, _ in out]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"dataset.json labels map to duplicate region names {duplicated}")
    return out


def region_names(dataset_json: dict) -> List[str]:
    """Region names in output-channel order (``['WT', 'TC', 'ET']`` for BraTS)."""
    return [name for name, _ in dataset_regions(dataset_json)]


def region_index(dataset_json: dict, name: str) -> int:
    """Output channel of a region given by a dataset.json label name or a short name, case-insensitive."""
    names = region_names(dataset_json)
    lowered = [n.lower() for n in names]
    key = region_short_name(name).lower()
    if key not in lowered:
        raise ValueError(f"unknown region {name!r}; dataset.json regions are {names}")
    return lowered.index(key)


def region_name_of_labels(dataset_json: dict, labels: Union[str, int, Sequence[int]]) -> str:
    """Name of the region with these labels; ``labels`` may be a key of nnU-Net's evaluation ``summary.json``
    (``'(1, 2, 3)'``, ``'3'``). Labels that are no region of the data set are returned as given."""
    parsed = ast.literal_eval(labels) if isinstance(labels, str) else labels
    key = tuple(sorted({int(v) for v in (parsed if isinstance(parsed, (list, tuple)) else (parsed,))}))
    for name, region in dataset_regions(dataset_json):
        if region == key:
            return name
    return str(labels)
