"""Exact Shapley values of the modalities for a benchmark metric over every modality subset.

The benchmark evaluates a model under all ``2^M - 1`` non-empty modality subsets: exactly the coalitions that the
exact Shapley value needs. With ``v(S)`` the mean Dice of a region under subset ``S`` and ``v({}) = 0`` (no input,
no tumour found), the Shapley value of modality ``i`` is

    phi_i = sum over S not containing i of |S|! (M - |S| - 1)! / M! * (v(S + {i}) - v(S)),

its gain in Dice when it is added to the others, averaged over every order of adding the ``M`` modalities. The
values of a region sum to ``v(full set) - v({})``, the full-set Dice (efficiency); modalities that contribute
identically get equal values (symmetry); a modality that never changes the Dice gets 0.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

#: the metric whose Shapley values the benchmark reports
SHAPLEY_METRIC = 'Dice'
Coalition = frozenset
Value = Union[Mapping[Coalition, float], Callable[[Coalition], float]]


def shapley_values(players: Sequence[str], value: Value) -> Dict[str, float]:
    """``{player: phi}`` of the cooperative game ``value`` (a mapping or function of frozensets of ``players``)
    on ``players``; the empty coalition is worth 0 unless ``value`` gives it."""
    players = list(players)
    if len(set(players)) != len(players):
        raise ValueError(f"players repeat: {players}")
    m = len(players)

    def v(coalition: Coalition) -> float:
        if callable(value):
            return float(value(coalition))
        if not coalition and coalition not in value:
            return 0.0
        return float(value[coalition])

    phi = {}
    for player in players:
        others = [p for p in players if p != player]
        total = 0.0
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for subset in combinations(others, size):
                coalition = frozenset(subset)
                total += weight * (v(coalition | {player}) - v(coalition))
        phi[player] = total
    return phi


def subset_members(name: str) -> Coalition:
    """The modalities of a benchmark subset name (``'FLAIR+T1ce'`` -> ``{'FLAIR', 'T1ce'}``)."""
    return frozenset(name.split('+'))


def modality_order(subsets: Sequence[str], n_missing: Mapping[str, int],
                   modalities: Optional[Sequence[str]] = None) -> Optional[list]:
    """The modalities in table order: those of the full subset's name (``n_missing`` 0) in its order, or
    ``modalities`` as given when the full subset was not benchmarked (None when neither is known)."""
    full = [s for s in subsets if n_missing.get(s) == 0]
    if full and (modalities is None or subset_members(full[0]) == set(modalities)):
        return full[0].split('+')
    return list(modalities) if modalities else None


def benchmark_shapley(mean: Mapping[str, Mapping[str, Mapping[str, float]]], subsets: Sequence[str],
                      regions: Sequence[str], modalities: Optional[Sequence[str]]
                      ) -> Tuple[Optional[Dict[str, Dict[str, float]]], str]:
    """``({region: {modality: phi}}, note)`` of the benchmark means ``mean[metric][subset][region]`` (the metric
    :data:`SHAPLEY_METRIC`), or ``(None, why not)`` unless every one of the ``2^M - 1`` subsets of ``modalities``
    was benchmarked with a defined mean."""
    if not modalities:
        return None, 'not computed: the modalities are unknown (the full modality set was not benchmarked)'
    m = len(modalities)
    expected = {frozenset(c) for k in range(1, m + 1) for c in combinations(modalities, k)}
    members = {}
    for name in subsets:
        coalition = subset_members(name)
        if not coalition <= set(modalities):
            return None, f'not computed: subset {name!r} is not made of the modalities {list(modalities)}'
        members[coalition] = name
    missing = expected - set(members)
    if missing:
        return None, (f'not computed: exact Shapley values need all {len(expected)} modality subsets, the benchmark '
                      f'evaluated {len(expected) - len(missing)} (restricted with --subsets)')
    values = mean.get(SHAPLEY_METRIC, {})
    result = {}
    for region in regions:
        game = {}
        for coalition, name in members.items():
            v = values.get(name, {}).get(region)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None, f'not computed: the mean {SHAPLEY_METRIC} of subset {name}, region {region} is undefined'
            game[coalition] = float(v)
        result[region] = shapley_values(modalities, game)
    return result, (f'exact Shapley value of each modality for the mean {SHAPLEY_METRIC} over all {len(expected)} '
                    f'modality subsets (the empty subset counts as {SHAPLEY_METRIC} 0): its average gain when added '
                    f'to the other modalities, over every order of adding them; per region the values sum to the '
                    f'full-set {SHAPLEY_METRIC}')


def markdown_shapley(shapley: Mapping[str, Mapping[str, float]], regions: Sequence[str],
                     modalities: Sequence[str], note: str = '') -> str:
    """Rows regions, columns modalities and ``Sum`` (= the full-set Dice), values in Dice percentage points."""
    header = [f'Shapley ({SHAPLEY_METRIC} %)'] + list(modalities) + ['Sum']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join([':---'] + ['---:'] * (len(header) - 1)) + '|']
    for region in regions:
        row = [shapley[region][m] for m in modalities]
        lines.append('| ' + ' | '.join([region] + [f'{100 * v:.2f}' for v in row + [sum(row)]]) + ' |')
    text = '\n'.join(lines) + '\n'
    return text + (f'\n{note[0].upper()}{note[1:]}.\n' if note else '')
