"""``nnUNetv2_mm_compare``: two small benchmark outputs merged into the paper-layout comparison, as a command."""
import json
import subprocess

import pytest

from nnunet_missingmod.evaluation.tables import write_reports

SUBSETS = ['FLAIR', 'T1ce', 'FLAIR+T1ce']
N_MISSING = {'FLAIR': 1, 'T1ce': 1, 'FLAIR+T1ce': 0}
REGIONS = ['WT', 'ET']


def benchmark(folder, trainer, dice):
    """A benchmark output with two cases; ``dice[(subset, region)]`` is the mean Dice, HD95 = 10 * (1 - Dice)."""
    rows = []
    for (subset, region), value in dice.items():
        for case, delta in (('c1', -0.05), ('c2', 0.05)):
            rows.append({'case': case, 'subset': subset, 'n_missing': N_MISSING[subset], 'region': region,
                         'Dice': value + delta, 'HD95': 10 * (1 - value - delta)})
    write_reports(rows, SUBSETS, N_MISSING, REGIONS, str(folder), model={'trainer': trainer})
    return folder


def run(*args):
    return subprocess.run(['nnUNetv2_mm_compare', *map(str, args)], capture_output=True, text=True, timeout=120)


def test_two_benchmarks_merge_with_best_per_column_marked(tmp_path):
    a = benchmark(tmp_path / 'a', 'nnUNetTrainer', {('FLAIR', 'WT'): 0.80, ('T1ce', 'WT'): 0.20,
                                                    ('FLAIR+T1ce', 'WT'): 0.85, ('FLAIR', 'ET'): 0.10,
                                                    ('T1ce', 'ET'): 0.60, ('FLAIR+T1ce', 'ET'): 0.70})
    b = benchmark(tmp_path / 'b', 'nnUNetTrainerSMSN', {('FLAIR', 'WT'): 0.75, ('T1ce', 'WT'): 0.50,
                                                        ('FLAIR+T1ce', 'WT'): 0.85, ('FLAIR', 'ET'): 0.30,
                                                        ('T1ce', 'ET'): 0.55, ('FLAIR+T1ce', 'ET'): 0.72})
    out = tmp_path / 'cmp'
    result = run('-i', a, b, '-o', out)
    assert result.returncode == 0, result.stderr
    table = (out / 'comparison_dice.md').read_text().splitlines()
    assert table[0] == '| region | method — Dice (%) | FLAIR | T1ce | FLAIR+T1ce | Avg |'
    # WT block: FLAIR best is a (80), T1ce best is b (50), the full set is a tie (both bold), Avg a 61.67 < b 70
    assert table[2] == '| WT | nnUNetTrainer | **80.00** | 20.00 | **85.00** | 61.67 |'
    assert table[3] == '|  | nnUNetTrainerSMSN | 75.00 | **50.00** | **85.00** | **70.00** |'
    assert table[4] == '| ET | nnUNetTrainer | 10.00 | **60.00** | 70.00 | 46.67 |'
    assert table[5] == '|  | nnUNetTrainerSMSN | **30.00** | 55.00 | **72.00** | **52.33** |'
    hd95 = (out / 'comparison_hd95.md').read_text()
    assert '| WT | nnUNetTrainer | **2.00** | 8.00 |' in hd95  # lower HD95 is better
    tex = (out / 'comparison_dice.tex').read_text()
    assert '\\textbf{50.00}' in tex and 'nnUNetTrainerSMSN' in tex
    assert (out / 'dice_vs_missing.png').stat().st_size > 5000
    merged = json.loads((out / 'comparison.json').read_text())
    assert merged['methods']['nnUNetTrainerSMSN']['Avg']['Dice']['WT'] == pytest.approx(0.70)
    assert 'nnUNetTrainerSMSN' in result.stdout


def test_names_and_bad_inputs_fail_with_one_line(tmp_path):
    a = benchmark(tmp_path / 'a', 'X', {(s, r): 0.5 for s in SUBSETS for r in REGIONS})
    result = run('-i', a, a, '-o', tmp_path / 'named', '--names', 'first', 'second')
    assert result.returncode == 0 and '| WT | first |' in (tmp_path / 'named' / 'comparison_dice.md').read_text()
    for args, needle in [(('-i', tmp_path / 'nothing', '-o', tmp_path / 'o1'), 'no summary.json'),
                         (('-i', a, '-o', tmp_path / 'o2', '--names', 'x', 'y'), '--names gives 2 names'),
                         (('-i', a, '-o', a), 'is one of the benchmark folders')]:
        result = run(*args)
        assert result.returncode != 0 and needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr
    assert not (tmp_path / 'o1').exists()
