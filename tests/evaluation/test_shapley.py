"""Exact Shapley values of the modalities over the benchmark's modality subsets: hand-computed games, the axioms
(efficiency, symmetry, null player), and what ``write_reports`` adds (``summary.json``'s ``shapley``,
``table_shapley.md``)."""
import json
from itertools import combinations

import numpy as np
import pytest

from nnunet_missingmod.evaluation.benchmark import benchmark_subsets
from nnunet_missingmod.evaluation.shapley import benchmark_shapley, shapley_values
from nnunet_missingmod.evaluation.tables import write_reports

F = frozenset


def test_two_modalities_by_hand():
    # v(A) = 0.6, v(B) = 0.2, v(AB) = 0.7, v({}) = 0; weights 1/2 and 1/2
    # phi_A = 1/2 (0.6 - 0) + 1/2 (0.7 - 0.2) = 0.30 + 0.25 = 0.55
    # phi_B = 1/2 (0.2 - 0) + 1/2 (0.7 - 0.6) = 0.10 + 0.05 = 0.15
    phi = shapley_values(['A', 'B'], {F('A'): 0.6, F('B'): 0.2, F('AB'): 0.7})
    assert phi == pytest.approx({'A': 0.55, 'B': 0.15})


def test_three_modalities_by_hand():
    # weights for M = 3: |S| = 0: 0! 2! / 3! = 1/3, |S| = 1: 1! 1! / 3! = 1/6, |S| = 2: 2! 0! / 3! = 1/3
    game = {F('A'): 0.5, F('B'): 0.3, F('C'): 0.1, F('AB'): 0.7, F('AC'): 0.6, F('BC'): 0.4, F('ABC'): 0.8}
    # phi_A = 1/3 (0.5) + 1/6 (0.7 - 0.3) + 1/6 (0.6 - 0.1) + 1/3 (0.8 - 0.4) = 0.5/3 + 0.4/6 + 0.5/6 + 0.4/3 = 0.45
    # phi_B = 1/3 (0.3) + 1/6 (0.7 - 0.5) + 1/6 (0.4 - 0.1) + 1/3 (0.8 - 0.6) = 0.1 + 0.2/6 + 0.3/6 + 0.2/3 = 0.25
    # phi_C = 1/3 (0.1) + 1/6 (0.6 - 0.5) + 1/6 (0.4 - 0.3) + 1/3 (0.8 - 0.7) = 0.1/3 + 0.1/6 + 0.1/6 + 0.1/3 = 0.10
    phi = shapley_values(['A', 'B', 'C'], game)
    assert phi == pytest.approx({'A': 0.45, 'B': 0.25, 'C': 0.10})
    assert list(phi) == ['A', 'B', 'C']


def test_efficiency_symmetry_and_null_modality():
    rng = np.random.default_rng(3)
    players = ['FLAIR', 'T1ce', 'T1', 'T2']
    game = {F(c): float(rng.uniform(0, 1)) for k in range(1, 5) for c in combinations(players, k)}
    phi = shapley_values(players, game)
    assert sum(phi.values()) == pytest.approx(game[F(players)])  # efficiency: v(full) - v({}) = v(full)
    # symmetry: B and C contribute identically to every coalition (v is unchanged by swapping them)
    sym = {F('A'): 0.5, F('B'): 0.2, F('C'): 0.2, F('AB'): 0.6, F('AC'): 0.6, F('BC'): 0.3, F('ABC'): 0.7}
    phi = shapley_values(['A', 'B', 'C'], sym)
    assert phi['B'] == pytest.approx(phi['C'])
    # phi_B = 1/3 (0.2) + 1/6 (0.6 - 0.5) + 1/6 (0.3 - 0.2) + 1/3 (0.7 - 0.6) = 0.2/3 + 0.1/6 + 0.1/6 + 0.1/3 = 0.1333
    assert phi['B'] == pytest.approx(0.4 / 3)
    # a modality that never changes the Dice gets 0
    null = {F('A'): 0.4, F('N'): 0.0, F('AN'): 0.4}
    assert shapley_values(['A', 'N'], null) == pytest.approx({'A': 0.4, 'N': 0.0})


def test_benchmark_shapley_needs_every_subset():
    mean = {'Dice': {'A': {'WT': 0.6}, 'B': {'WT': 0.2}, 'A+B': {'WT': 0.7}}}
    values, note = benchmark_shapley(mean, ['A', 'B', 'A+B'], ['WT'], ['A', 'B'])
    assert values == {'WT': pytest.approx({'A': 0.55, 'B': 0.15})} and 'all 3 modality subsets' in note
    values, note = benchmark_shapley(mean, ['A', 'A+B'], ['WT'], ['A', 'B'])
    assert values is None and 'need all 3 modality subsets, the benchmark evaluated 2' in note
    assert '--subsets' in note
    undefined = {'Dice': {**mean['Dice'], 'B': {'WT': float('nan')}}}
    values, note = benchmark_shapley(undefined, ['A', 'B', 'A+B'], ['WT'], ['A', 'B'])
    assert values is None and 'subset B, region WT is undefined' in note


def _rows(dice, subsets_n_missing, regions=('WT',)):
    """Two cases per subset and region whose mean Dice is ``dice[(subset, region)]``."""
    return [{'case': case, 'subset': s, 'n_missing': n, 'region': r, 'Dice': dice[(s, r)] + d, 'HD95': 1.0}
            for s, n in subsets_n_missing.items() for r in regions for case, d in (('c1', -0.05), ('c2', 0.05))]


def test_write_reports_adds_shapley_to_the_summary_and_a_table(tmp_path):
    n_missing = {'FLAIR': 1, 'T1ce': 1, 'FLAIR+T1ce': 0}
    dice = {('FLAIR', 'WT'): 0.6, ('T1ce', 'WT'): 0.2, ('FLAIR+T1ce', 'WT'): 0.7,
            ('FLAIR', 'ET'): 0.1, ('T1ce', 'ET'): 0.5, ('FLAIR+T1ce', 'ET'): 0.5}
    write_reports(_rows(dice, n_missing, ('WT', 'ET')), list(n_missing), n_missing, ['WT', 'ET'], str(tmp_path))
    summary = json.loads((tmp_path / 'summary.json').read_text())
    # WT as in test_two_modalities_by_hand; ET: phi_FLAIR = 1/2 (0.1) + 1/2 (0.5 - 0.5) = 0.05,
    # phi_T1ce = 1/2 (0.5) + 1/2 (0.5 - 0.1) = 0.45
    assert summary['shapley'] == {'WT': pytest.approx({'FLAIR': 0.55, 'T1ce': 0.15}),
                                  'ET': pytest.approx({'FLAIR': 0.05, 'T1ce': 0.45})}
    assert list(summary['shapley']['WT']) == ['FLAIR', 'T1ce']
    assert 'exact Shapley value' in summary['shapley_note']
    table = (tmp_path / 'table_shapley.md').read_text().splitlines()
    assert table[0] == '| Shapley (Dice %) | FLAIR | T1ce | Sum |'
    assert table[2] == '| WT | 55.00 | 15.00 | 70.00 |'
    assert table[3] == '| ET | 5.00 | 45.00 | 50.00 |'
    assert 'sum to the full-set Dice' in table[-1]


def test_write_reports_fifteen_subsets_in_paper_order_sum_to_the_full_set(tmp_path):
    names = ['T1', 'T1ce', 'T2', 'FLAIR']
    subsets = benchmark_subsets(names, 'paper')
    rng = np.random.default_rng(0)
    dice = {(s, r): float(rng.uniform(0.2, 0.9)) for s, _ in subsets for r in ('WT', 'TC')}
    n_missing = {s: 4 - len(c) for s, c in subsets}
    summary = write_reports(_rows(dice, n_missing, ('WT', 'TC')), [s for s, _ in subsets], n_missing, ['WT', 'TC'],
                            str(tmp_path), evaluation={'modalities': names})
    assert list(summary['shapley']['WT']) == ['FLAIR', 'T1ce', 'T1', 'T2']  # the table order, not channel order
    for region in ('WT', 'TC'):
        assert sum(summary['shapley'][region].values()) == pytest.approx(dice[('FLAIR+T1ce+T1+T2', region)])
    row = (tmp_path / 'table_shapley.md').read_text().splitlines()[2].strip('|').split('|')
    assert float(row[-1]) == pytest.approx(100 * dice[('FLAIR+T1ce+T1+T2', 'WT')], abs=0.005)


def test_write_reports_restricted_subsets_say_why_there_is_no_shapley(tmp_path):
    names = ['T1', 'T1ce', 'T2', 'FLAIR']
    subsets = benchmark_subsets(names, 'paper', ['FLAIR', 'FLAIR+T1ce+T1+T2'])
    n_missing = {s: 4 - len(c) for s, c in subsets}
    dice = {(s, 'WT'): 0.5 for s, _ in subsets}
    write_reports(_rows(dice, n_missing), [s for s, _ in subsets], n_missing, ['WT'], str(tmp_path),
                  evaluation={'modalities': names})
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['shapley'] is None
    assert summary['shapley_note'] == ('not computed: exact Shapley values need all 15 modality subsets, the '
                                       'benchmark evaluated 2 (restricted with --subsets)')
    assert not (tmp_path / 'table_shapley.md').exists()
