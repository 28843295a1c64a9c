import json
import math

import numpy as np
import pytest

from nnunet_missingmod.evaluation.benchmark import benchmark_subsets
from nnunet_missingmod.evaluation.tables import (latex_table, markdown_table, missing_curve, read_case_csv,
                                                 summarize, table_matrix, write_reports)

NAMES = ['T1', 'T1ce', 'T2', 'FLAIR']  # dataset.json channel order of the BraTS conversion
REGIONS = ['WT', 'TC', 'ET']
PAPER_ORDER = ['FLAIR', 'T1ce', 'T1', 'T2',
               'FLAIR+T1ce', 'FLAIR+T1', 'FLAIR+T2', 'T1ce+T1', 'T1ce+T2', 'T1+T2',
               'FLAIR+T1ce+T1', 'FLAIR+T1ce+T2', 'FLAIR+T1+T2', 'T1ce+T1+T2', 'FLAIR+T1ce+T1+T2']


def fake_rows(subsets, cases=('c1', 'c2'), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for case in cases:
        for name, channels in subsets:
            for region in REGIONS:
                rows.append({'case': case, 'subset': name, 'n_missing': 4 - len(channels), 'region': region,
                             'Dice': float(rng.uniform(0.2, 0.95)), 'HD95': float(rng.uniform(1, 40))})
    return rows


def test_benchmark_subsets_follow_the_paper_order():
    subsets = benchmark_subsets(NAMES, 'paper')
    assert [n for n, _ in subsets] == PAPER_ORDER
    assert dict(subsets)['FLAIR'] == (3,) and dict(subsets)['FLAIR+T1ce+T1+T2'] == (0, 1, 2, 3)
    t1_first = [n for n, _ in benchmark_subsets(NAMES, 't1_first')]
    assert t1_first[:5] == ['T1', 'T1ce', 'T2', 'FLAIR', 'T1+T1ce'] and len(t1_first) == 15
    restricted = benchmark_subsets(NAMES, 'paper', ['t1+flair', 'T2', 'FLAIR+T1ce+T1+T2'])
    assert [n for n, _ in restricted] == ['T2', 'FLAIR+T1', 'FLAIR+T1ce+T1+T2']
    with pytest.raises(ValueError, match='PD'):
        benchmark_subsets(NAMES, 'paper', ['PD'])


def test_summary_means_and_avg_column():
    subsets = benchmark_subsets(NAMES)
    rows = fake_rows(subsets)
    names = [n for n, _ in subsets]
    summary = summarize(rows, names, REGIONS)
    for s in names:
        for r in REGIONS:
            expected = np.mean([x['Dice'] for x in rows if x['subset'] == s and x['region'] == r])
            assert summary['mean']['Dice'][s][r] == pytest.approx(expected)
    matrix = table_matrix(summary, 'Dice', names, REGIONS)
    assert matrix.shape == (3, 16)
    np.testing.assert_allclose(matrix[:, -1], matrix[:, :-1].mean(1))
    assert summary['n_cases'] == {s: 2 for s in names}
    with pytest.raises(ValueError, match='not in the subset order'):
        summarize(rows, names[:3], REGIONS)


def test_nan_hd95_is_left_out_of_means():
    rows = [{'case': 'a', 'subset': 'T1', 'region': 'ET', 'Dice': 0.0, 'HD95': float('nan')},
            {'case': 'b', 'subset': 'T1', 'region': 'ET', 'Dice': 1.0, 'HD95': 4.0}]
    summary = summarize(rows, ['T1'], ['ET'])
    assert summary['mean']['HD95']['T1']['ET'] == 4.0
    assert summary['mean']['Dice']['T1']['ET'] == 0.5
    assert math.isnan(summarize(rows[:1], ['T1'], ['ET'])['mean']['HD95']['T1']['ET'])


def test_markdown_and_latex_tables_layout():
    subsets = benchmark_subsets(NAMES)
    names = [n for n, _ in subsets]
    summary = summarize(fake_rows(subsets), names, REGIONS)
    md = markdown_table(summary, 'Dice', names, REGIONS).strip().splitlines()
    header = [c.strip() for c in md[0].strip('|').split('|')]
    assert header == ['Dice (%)'] + PAPER_ORDER + ['Avg']
    assert len(md) == 2 + len(REGIONS)
    wt = [c.strip() for c in md[2].strip('|').split('|')]
    assert wt[0] == 'WT'
    assert float(wt[1]) == pytest.approx(100 * summary['mean']['Dice']['FLAIR']['WT'], abs=0.005)
    assert float(wt[-1]) == pytest.approx(100 * summary['Avg']['Dice']['WT'], abs=0.005)
    hd = markdown_table(summary, 'HD95', names, REGIONS).splitlines()
    assert hd[0].startswith('| HD95 (mm) | FLAIR |')
    assert float(hd[4].strip('|').split('|')[2]) == pytest.approx(summary['mean']['HD95']['T1ce']['ET'], abs=0.005)

    tex = latex_table(summary, 'Dice', names, REGIONS)
    assert '\\begin{tabular}{l' + 'c' * 16 + '}' in tex
    lines = tex.splitlines()
    head = lines[lines.index('\\toprule') + 1]
    assert head == ' & '.join(['Dice (\\%)'] + PAPER_ORDER + ['Avg']) + ' \\\\'
    et = [l for l in lines if l.startswith('ET & ')][0]
    cells = et.rstrip(' \\').split(' & ')
    assert len(cells) == 17
    assert float(cells[-1]) == pytest.approx(100 * summary['Avg']['Dice']['ET'], abs=0.005)
    assert '\\end{table}' in tex and 'under\\_score' in latex_table(summary, 'Dice', names, REGIONS,
                                                                     caption='under_score')


def test_missing_curve_groups_subsets_by_number_of_missing_modalities():
    subsets = benchmark_subsets(NAMES)
    names = [n for n, _ in subsets]
    n_missing = {n: 4 - len(s) for n, s in subsets}
    summary = summarize(fake_rows(subsets), names, REGIONS)
    curve = missing_curve(summary, names, n_missing, REGIONS)
    assert sorted(curve['WT']) == [0, 1, 2, 3]
    assert curve['TC'][0] == summary['mean']['Dice']['FLAIR+T1ce+T1+T2']['TC']
    assert curve['ET'][3] == pytest.approx(np.mean([summary['mean']['Dice'][s]['ET']
                                                    for s in ('FLAIR', 'T1ce', 'T1', 'T2')]))


def test_write_reports_writes_every_file(tmp_path):
    subsets = benchmark_subsets(NAMES)
    names = [n for n, _ in subsets]
    rows = fake_rows(subsets)
    rows[0]['HD95'] = float('nan')
    write_reports(rows, names, {n: 4 - len(s) for n, s in subsets}, REGIONS, str(tmp_path),
                  evaluation={'hd95_empty': 'nan'})
    for name in ('per_case.csv', 'summary.json', 'table_dice.md', 'table_hd95.md', 'table_dice.tex',
                 'table_hd95.tex'):
        assert (tmp_path / name).stat().st_size > 0
    for png in ('heatmap_dice.png', 'dice_vs_missing.png'):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 2000
    back = read_case_csv(str(tmp_path / 'per_case.csv'))
    assert len(back) == len(rows) == 2 * 15 * 3
    assert back[5]['Dice'] == rows[5]['Dice'] and math.isnan(back[0]['HD95'])
    assert back[0]['n_missing'] == 3 and back[0]['subset'] == 'FLAIR'
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['subsets'] == PAPER_ORDER and summary['regions'] == REGIONS
    assert summary['evaluation'] == {'hd95_empty': 'nan'}
    assert summary['n_missing']['T1ce+T2'] == 2
    assert summary['Avg']['Dice']['WT'] == pytest.approx(np.mean([summary['mean']['Dice'][s]['WT']
                                                                  for s in PAPER_ORDER]))


def test_lesionwise_columns_means_and_table(tmp_path):
    """Rows with ``LesionDice``/``LesionHD95``: CSV columns, summary means, their tables and the table of global
    next to lesion-wise values; rows without them keep the old files only."""
    subsets = benchmark_subsets(NAMES, 'paper', ['FLAIR', 'FLAIR+T1ce+T1+T2'])
    rows = fake_rows(subsets)
    for i, row in enumerate(rows):
        row['LesionDice'], row['LesionHD95'] = 0.01 * i, 373.0 - i
    names = [n for n, _ in subsets]
    summary = write_reports(rows, names, {'FLAIR': 3, 'FLAIR+T1ce+T1+T2': 0}, REGIONS, str(tmp_path))
    flair_wt = [r for r in rows if r['subset'] == 'FLAIR' and r['region'] == 'WT']
    assert summary['mean']['LesionDice']['FLAIR']['WT'] == pytest.approx(np.mean([r['LesionDice'] for r in flair_wt]))
    saved = json.loads((tmp_path / 'summary.json').read_text())
    assert saved['mean']['LesionHD95']['FLAIR']['WT'] == pytest.approx(np.mean([r['LesionHD95'] for r in flair_wt]))
    back = read_case_csv(str(tmp_path / 'per_case.csv'))
    assert [r['LesionDice'] for r in back] == [r['LesionDice'] for r in rows]
    table = (tmp_path / 'table_lesionwise.md').read_text().splitlines()
    assert table[0] == '| region | metric | FLAIR | FLAIR+T1ce+T1+T2 | Avg |'
    assert [line.split(' | ')[1] for line in table[2:6]] == ['Dice (%)', 'LesionDice (%)', 'HD95 (mm)',
                                                             'LesionHD95 (mm)']
    assert table[3] == '| WT | LesionDice (%) | ' + ' | '.join(
        f"{100 * v:.2f}" for v in (summary['mean']['LesionDice']['FLAIR']['WT'],
                                   summary['mean']['LesionDice']['FLAIR+T1ce+T1+T2']['WT'],
                                   summary['Avg']['LesionDice']['WT'])) + ' |'
    assert (tmp_path / 'table_lesionhd95.md').read_text().startswith('| LesionHD95 (mm) | FLAIR |')
    plain = tmp_path / 'plain'
    write_reports(fake_rows(subsets), names, {'FLAIR': 3, 'FLAIR+T1ce+T1+T2': 0}, REGIONS, str(plain))
    assert not (plain / 'table_lesionwise.md').exists()
    assert (plain / 'per_case.csv').read_text().splitlines()[0] == 'case,subset,n_missing,region,Dice,HD95'
