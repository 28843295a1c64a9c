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


def split_benchmark(folder, trainer, case_values, offsets):
    """A benchmark output whose case ``i`` has Dice ``case_values[i] + offsets[(subset, region)]``,
    HD95 = 10 * (1 - Dice)."""
    rows = [{'case': f'c{i}', 'subset': subset, 'n_missing': N_MISSING[subset], 'region': region,
             'Dice': value + offset, 'HD95': 10 * (1 - value - offset)}
            for (subset, region), offset in offsets.items() for i, value in enumerate(case_values)]
    write_reports(rows, SUBSETS, N_MISSING, REGIONS, str(folder), model={'trainer': trainer})
    return folder


OFFSET = {('FLAIR', 'WT'): 0.0, ('T1ce', 'WT'): -0.2, ('FLAIR+T1ce', 'WT'): 0.1,
          ('FLAIR', 'ET'): -0.3, ('T1ce', 'ET'): 0.0, ('FLAIR+T1ce', 'ET'): 0.0}


def test_average_splits_reports_the_mean_of_the_per_split_means(tmp_path):
    # method A: split means 0.9 (1 case), 0.4 (3 cases), 0.6 (2 cases) -> mean of the split means 0.6333; the pooled
    # six cases would give 3.3 / 6 = 0.55. Method B: 0.5 everywhere in every split
    a = [split_benchmark(tmp_path / f'a{k}', 'TrA', cases, OFFSET)
         for k, cases in enumerate(([0.9], [0.6, 0.3, 0.3], [0.5, 0.7]), 1)]
    b = [split_benchmark(tmp_path / f'b{k}', 'TrB', [0.45, 0.55], dict.fromkeys(OFFSET, 0.0)) for k in (1, 2, 3)]
    out = tmp_path / 'cmp'
    result = run('-i', *a, *b, '--average-splits', 3, '-o', out)
    assert result.returncode == 0, result.stderr
    table = (out / 'comparison_dice.md').read_text().splitlines()
    # WT: 63.33 + offsets 0 / -20 / +10, Avg (63.33 + 43.33 + 73.33) / 3 = 60.00; ET: offsets -30 / 0 / 0
    assert table[2] == '| WT | TrA | **63.33** | 43.33 | **73.33** | **60.00** |'
    assert table[3] == '|  | TrB | 50.00 | **50.00** | 50.00 | 50.00 |'
    assert table[4] == '| ET | TrA | 33.33 | **63.33** | **63.33** | **53.33** |'
    assert table[5] == '|  | TrB | **50.00** | 50.00 | 50.00 | 50.00 |'
    assert table[-1] == ("Values: mean over 3 splits of the per-split means (RFNet's BraTS 2018 average), not a mean "
                         "over the pooled cases.")
    hd95 = (out / 'comparison_hd95.md').read_text()
    assert '| WT | TrA | **3.67** | 5.67 | **2.67** | **4.00** |' in hd95  # 10 * (1 - Dice), lower is better
    merged = json.loads((out / 'comparison.json').read_text())
    assert merged['average'].startswith('mean over 3 splits of the per-split means')
    assert merged['methods']['TrA']['mean']['Dice']['FLAIR']['WT'] == pytest.approx(0.9 / 3 + 0.4 / 3 + 0.6 / 3)
    assert merged['methods']['TrA']['Avg']['Dice']['ET'] == pytest.approx(0.5333333)
    assert merged['methods']['TrB']['splits'] == [str(f.resolve()) for f in b]
    assert 'mean over 3 splits of the per-split means' in result.stdout
    assert 'comparison of 2 methods (6 benchmarks)' in result.stdout


def test_average_splits_bad_inputs_fail_with_one_line(tmp_path):
    a = [split_benchmark(tmp_path / f'a{k}', 'TrA', [0.5], OFFSET) for k in (1, 2)]
    for args, needle in [(('-i', *a, a[0], '-o', tmp_path / 'o1', '--average-splits', 2),
                          '--average-splits 2: -i gives 3 benchmark folders, not a multiple of 2'),
                         (('-i', a[0], a[0], '-o', tmp_path / 'o2', '--average-splits', 2),
                          'of one method repeat a folder'),
                         (('-i', *a, '-o', tmp_path / 'o3', '--average-splits', 0), 'must be at least 1')]:
        result = run(*args)
        assert result.returncode == 1 and needle in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr
    assert not any((tmp_path / o).exists() for o in ('o1', 'o2', 'o3'))


# ---------------------------------------------------------------------- incomplete summaries, a used -o, atomicity
def _one_line(result, fragment):
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('nnUNetv2_mm_compare: error: '), result.stderr
    assert fragment in lines[0], lines[0]
    assert 'Traceback' not in result.stderr and 'KeyError' not in result.stderr


def _edit_summary(folder, edit):
    path = folder / 'summary.json'
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))
    return path


@pytest.mark.parametrize('edit, fragment', [
    (lambda s: s['mean'].pop('HD95'), 'lacks mean.HD95'),
    (lambda s: s['mean']['Dice']['T1ce'].pop('ET'), 'lacks mean.Dice.T1ce.ET'),
    (lambda s: s['Avg']['HD95'].pop('WT'), 'lacks Avg.HD95.WT'),
    (lambda s: s['mean']['Dice']['FLAIR'].update(WT='high'), "mean.Dice.FLAIR.WT is 'high', not a number"),
    (lambda s: s['n_missing'].pop('FLAIR+T1ce'), 'lacks n_missing.FLAIR+T1ce'),
    (lambda s: s.update(regions='WT'), 'regions is not a list of names'),
])
def test_an_incomplete_summary_is_named_before_anything_is_written(tmp_path, edit, fragment):
    """A summary.json without mean.HD95 gave partial tables (comparison_dice.md written) and then a KeyError."""
    a = benchmark(tmp_path / 'a', 'A', {(s, r): 0.5 for s in SUBSETS for r in REGIONS})
    b = benchmark(tmp_path / 'b', 'B', {(s, r): 0.6 for s in SUBSETS for r in REGIONS})
    path = _edit_summary(b, edit)
    out = tmp_path / 'cmp'
    _one_line(run('-i', a, b, '-o', out), f'{path}: {fragment}')
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == [], 'no temporary folder left'


def test_a_non_empty_output_needs_overwrite_and_keeps_other_files(tmp_path):
    a = benchmark(tmp_path / 'a', 'A', {(s, r): 0.5 for s in SUBSETS for r in REGIONS})
    b = benchmark(tmp_path / 'b', 'B', {(s, r): 0.6 for s in SUBSETS for r in REGIONS})
    out = tmp_path / 'cmp'
    out.mkdir()
    (out / 'comparison_dice.md').write_text('my earlier table')
    (out / 'notes.txt').write_text('mine')
    _one_line(run('-i', a, b, '-o', out), f'output folder {out} is not empty')
    assert (out / 'comparison_dice.md').read_text() == 'my earlier table'
    assert sorted(p.name for p in out.iterdir()) == ['comparison_dice.md', 'notes.txt']
    result = run('-i', a, b, '-o', out, '--overwrite')
    assert result.returncode == 0, result.stderr
    assert '| WT | A | 50.00 |' in (out / 'comparison_dice.md').read_text()
    assert (out / 'notes.txt').read_text() == 'mine'
    assert {'comparison.json', 'comparison_hd95.tex', 'dice_vs_missing.png'} <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == [], 'no temporary folder left'
    (tmp_path / 'file').write_text('x')
    _one_line(run('-i', a, b, '-o', tmp_path / 'file', '--overwrite'), 'is a file, not a folder')


def test_a_failure_while_writing_leaves_the_output_as_it_was(tmp_path, monkeypatch):
    """Everything is written into a temporary sibling first: a failure on the last file leaves no partial -o."""
    from nnunet_missingmod.evaluation import compare as compare_module
    a = benchmark(tmp_path / 'a', 'A', {(s, r): 0.5 for s in SUBSETS for r in REGIONS})

    def broken(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(compare_module, 'plot_comparison_curves', broken)
    with pytest.raises(OSError, match='disk full'):
        compare_module.compare([str(a)], str(tmp_path / 'cmp'))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a']


# -------------------------------------------------------------------------------------------- Shapley values
def test_shapley_table_across_methods(tmp_path):
    # A, WT: phi_FLAIR = 1/2 (0.80) + 1/2 (0.85 - 0.20) = 0.725, phi_T1ce = 1/2 (0.20) + 1/2 (0.85 - 0.80) = 0.125
    #    ET: phi_FLAIR = 1/2 (0.10) + 1/2 (0.70 - 0.60) = 0.100, phi_T1ce = 1/2 (0.60) + 1/2 (0.70 - 0.10) = 0.600
    # B, WT: phi_FLAIR = 1/2 (0.75) + 1/2 (0.85 - 0.50) = 0.550, phi_T1ce = 1/2 (0.50) + 1/2 (0.85 - 0.75) = 0.300
    #    ET: phi_FLAIR = 1/2 (0.30) + 1/2 (0.72 - 0.55) = 0.235, phi_T1ce = 1/2 (0.55) + 1/2 (0.72 - 0.30) = 0.485
    a = benchmark(tmp_path / 'a', 'TrA', {('FLAIR', 'WT'): 0.80, ('T1ce', 'WT'): 0.20, ('FLAIR+T1ce', 'WT'): 0.85,
                                          ('FLAIR', 'ET'): 0.10, ('T1ce', 'ET'): 0.60, ('FLAIR+T1ce', 'ET'): 0.70})
    b = benchmark(tmp_path / 'b', 'TrB', {('FLAIR', 'WT'): 0.75, ('T1ce', 'WT'): 0.50, ('FLAIR+T1ce', 'WT'): 0.85,
                                          ('FLAIR', 'ET'): 0.30, ('T1ce', 'ET'): 0.55, ('FLAIR+T1ce', 'ET'): 0.72})
    out = tmp_path / 'cmp'
    result = run('-i', a, b, '-o', out)
    assert result.returncode == 0, result.stderr
    table = (out / 'comparison_shapley.md').read_text().splitlines()
    assert table[0] == '| region | method — Shapley (Dice %) | FLAIR | T1ce | Sum |'
    assert table[2:6] == ['| WT | TrA | 72.50 | 12.50 | 85.00 |', '|  | TrB | 55.00 | 30.00 | 85.00 |',
                          '| ET | TrA | 10.00 | 60.00 | 70.00 |', '|  | TrB | 23.50 | 48.50 | 72.00 |']
    merged = json.loads((out / 'comparison.json').read_text())
    assert merged['methods']['TrB']['shapley']['ET'] == pytest.approx({'FLAIR': 0.235, 'T1ce': 0.485})
    # averaged over splits: the mean of the per-split Shapley values (they are linear in the Dice values)
    out2 = tmp_path / 'cmp_splits'
    result = run('-i', a, b, '--average-splits', 2, '--names', 'AB', '-o', out2)
    assert result.returncode == 0, result.stderr
    assert '| WT | AB | 63.75 | 21.25 | 85.00 |' in (out2 / 'comparison_shapley.md').read_text()


def test_no_shapley_table_unless_every_method_has_shapley(tmp_path):
    a = benchmark(tmp_path / 'a', 'TrA', {(s, r): 0.5 for s in SUBSETS for r in REGIONS})
    b = benchmark(tmp_path / 'b', 'TrB', {(s, r): 0.6 for s in SUBSETS for r in REGIONS})
    _edit_summary(b, lambda s: s.update(shapley=None, shapley_note='not computed: restricted with --subsets'))
    out = tmp_path / 'cmp'
    result = run('-i', a, b, '-o', out)
    assert result.returncode == 0, result.stderr
    assert not (out / 'comparison_shapley.md').exists()
    note = json.loads((out / 'comparison.json').read_text())['shapley_note']
    assert note.startswith(f'no Shapley table: {b}') and 'restricted with --subsets' in note
    assert 'no Shapley table' in result.stdout
    # an earlier comparison's Shapley table does not survive --overwrite when this one has none
    (out / 'comparison_shapley.md').write_text('stale')
    assert run('-i', a, b, '-o', out, '--overwrite').returncode == 0
    assert not (out / 'comparison_shapley.md').exists()


def test_a_malformed_shapley_entry_is_named(tmp_path):
    a = benchmark(tmp_path / 'a', 'TrA', {(s, r): 0.5 for s in SUBSETS for r in REGIONS})
    path = _edit_summary(a, lambda s: s['shapley']['ET'].pop('T1ce'))
    _one_line(run('-i', a, '-o', tmp_path / 'cmp'), f"{path}: shapley.ET has the modalities ['FLAIR']")
    path = _edit_summary(a, lambda s: s['shapley'].pop('ET'))
    _one_line(run('-i', a, '-o', tmp_path / 'cmp'), f'{path}: lacks shapley.ET')
    assert not (tmp_path / 'cmp').exists()
