"""Benchmark reports: per-case CSV, summary JSON, paper-layout tables (Markdown, LaTeX) and figures.

Rows of the benchmark are ``{'case', 'subset', 'region', 'Dice', 'HD95'}`` (plus ``n_missing``, and with
``--lesionwise`` the BraTS lesion-wise ``LesionDice`` and ``LesionHD95``). Subset names are
those of :func:`nnunet_missingmod.modalities.subset_name` (e.g. ``'FLAIR+T1ce'``) and the column order of every
table is the subset order passed in (the papers' order: singles, pairs, triples, full), followed by ``Avg``, the
mean over the subset columns. Means over cases ignore NaN (``hd95_empty='nan'``); a mean over nothing is NaN.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, Iterable, List, Sequence

import numpy as np

from nnunet_missingmod.evaluation import shapley

METRICS = ('Dice', 'HD95')
#: optional metrics (``nnUNetv2_mm_benchmark --lesionwise``), reported when the rows have them
LESIONWISE_METRICS = ('LesionDice', 'LesionHD95')
CSV_FIELDS = ('case', 'subset', 'n_missing', 'region', 'Dice', 'HD95')
#: every file :func:`write_reports` may write into its folder
REPORT_NAMES = ('per_case.csv', 'summary.json', 'table_dice.md', 'table_dice.tex', 'table_hd95.md', 'table_hd95.tex',
                'table_lesiondice.md', 'table_lesiondice.tex', 'table_lesionhd95.md', 'table_lesionhd95.tex',
                'table_lesionwise.md', 'table_shapley.md', 'heatmap_dice.png', 'dice_vs_missing.png')
#: Dice-like metrics are shown in %, the others (distances) in mm
_PERCENT = ('Dice', 'LesionDice')


def metrics_of(rows: Sequence[dict]) -> tuple:
    """The metrics the rows carry: :data:`METRICS`, plus :data:`LESIONWISE_METRICS` when every row has them."""
    if rows and all(m in row for row in rows for m in LESIONWISE_METRICS):
        return METRICS + LESIONWISE_METRICS
    return METRICS


def _nanmean(values: Iterable[float]) -> float:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(values)) if values else float('nan')


def write_case_csv(rows: Sequence[dict], path: str) -> None:
    """One line per case, subset and region (``CSV_FIELDS``, then the lesion-wise metrics if the rows have them)."""
    metrics = metrics_of(rows)
    fields = CSV_FIELDS + metrics[len(METRICS):]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(float(row[k])) if k in metrics else row.get(k, '')) for k in fields})


def read_case_csv(path: str) -> List[dict]:
    """Inverse of :func:`write_case_csv` (metrics as floats, ``n_missing`` as int)."""
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k in METRICS + LESIONWISE_METRICS:
            if k not in row:
                continue
            row[k] = float(row[k])
        row['n_missing'] = int(row['n_missing'])
    return rows


def summarize(rows: Sequence[dict], subsets: Sequence[str], regions: Sequence[str]) -> Dict[str, dict]:
    """Means per metric (:func:`metrics_of`), subset and region, plus ``Avg`` over subsets.

    Returns ``{'mean': {metric: {subset: {region: v}}}, 'Avg': {metric: {region: v}}, 'n_cases': {subset: n}}``.
    """
    unknown = sorted({r['subset'] for r in rows} - set(subsets))
    if unknown:
        raise ValueError(f"rows contain subsets {unknown} that are not in the subset order {list(subsets)}")
    grouped: Dict[tuple, List[dict]] = {}
    for row in rows:
        grouped.setdefault((row['subset'], row['region']), []).append(row)
    metrics = metrics_of(rows)
    mean = {m: {s: {r: _nanmean(x[m] for x in grouped.get((s, r), [])) for r in regions} for s in subsets}
            for m in metrics}
    avg = {m: {r: _nanmean(mean[m][s][r] for s in subsets) for r in regions} for m in metrics}
    n_cases = {s: len({x['case'] for r in regions for x in grouped.get((s, r), [])}) for s in subsets}
    return {'mean': mean, 'Avg': avg, 'n_cases': n_cases}


def write_summary_json(summary: dict, path: str, **extra) -> None:
    """The summary of :func:`summarize` plus ``extra`` entries (conventions, model, ...); NaN written as null."""
    def clean(obj):
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, (float, np.floating)):
            return None if math.isnan(float(obj)) else float(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        return obj

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(clean({**extra, **summary}), f, indent=2)


def table_matrix(summary: dict, metric: str, subsets: Sequence[str], regions: Sequence[str]) -> np.ndarray:
    """``(len(regions), len(subsets) + 1)`` values of the paper layout: subset columns then ``Avg``."""
    if metric not in summary['mean']:
        raise ValueError(f"unknown metric {metric!r}; the summary has {sorted(summary['mean'])}")
    return np.array([[summary['mean'][metric][s][r] for s in subsets] + [summary['Avg'][metric][r]]
                     for r in regions], dtype=float)


def _fmt(value: float, metric: str) -> str:
    if math.isnan(value):
        return '–'
    return f'{100 * value:.2f}' if metric in _PERCENT else f'{value:.2f}'


def _unit(metric: str, latex: bool = False) -> str:
    """Column header of a metric: ``Dice (%)``, ``HD95 (mm)``, ..."""
    percent = '\\%' if latex else '%'
    return f'{metric} ({percent})' if metric in _PERCENT else f'{metric} (mm)'


def markdown_table(summary: dict, metric: str, subsets: Sequence[str], regions: Sequence[str]) -> str:
    """Paper-layout Markdown table: rows regions, columns subsets (given order) + Avg. Dice in %, HD95 in mm."""
    values = table_matrix(summary, metric, subsets, regions)
    header = [_unit(metric)] + list(subsets) + ['Avg']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join([':---'] + ['---:'] * (len(header) - 1)) + '|']
    for region, row in zip(regions, values):
        lines.append('| ' + ' | '.join([region] + [_fmt(v, metric) for v in row]) + ' |')
    return '\n'.join(lines) + '\n'


def lesionwise_markdown_table(summary: dict, subsets: Sequence[str], regions: Sequence[str]) -> str:
    """Global next to lesion-wise scores: per region the rows Dice, LesionDice (%), HD95, LesionHD95 (mm); columns
    subsets (given order) + Avg."""
    metrics = ('Dice', 'LesionDice', 'HD95', 'LesionHD95')
    header = ['region', 'metric'] + list(subsets) + ['Avg']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join([':---', ':---'] + ['---:'] * (len(header) - 2)) + '|']
    for metric in metrics:
        values = table_matrix(summary, metric, subsets, regions)
        for region, row in zip(regions, values):
            lines.append('| ' + ' | '.join([region, _unit(metric)] + [_fmt(v, metric) for v in row]) + ' |')
    lines = lines[:2] + sorted(lines[2:], key=lambda line: list(regions).index(line.split(' | ')[0][2:]))
    return '\n'.join(lines) + '\n'


def _latex_escape(text: str) -> str:
    for a, b in (('\\', r'\textbackslash{}'), ('_', r'\_'), ('%', r'\%'), ('&', r'\&'), ('#', r'\#')):
        text = text.replace(a, b)
    return text


def latex_table(summary: dict, metric: str, subsets: Sequence[str], regions: Sequence[str],
                caption: str | None = None) -> str:
    """Paper-layout LaTeX ``table`` (booktabs): rows regions, columns subsets (given order) + Avg."""
    values = table_matrix(summary, metric, subsets, regions)
    unit = _unit(metric, latex=True)
    lines = ['\\begin{table}[t]', '\\centering', '\\resizebox{\\textwidth}{!}{%',
             '\\begin{tabular}{l' + 'c' * (len(subsets) + 1) + '}', '\\toprule',
             ' & '.join([unit] + [_latex_escape(s) for s in subsets] + ['Avg']) + ' \\\\', '\\midrule']
    for region, row in zip(regions, values):
        lines.append(' & '.join([_latex_escape(region)] + [_fmt(v, metric) for v in row]) + ' \\\\')
    lines += ['\\bottomrule', '\\end{tabular}}',
              f'\\caption{{{_latex_escape(caption or f"{metric} per modality subset")}}}', '\\end{table}']
    return '\n'.join(lines) + '\n'


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_heatmap(summary: dict, subsets: Sequence[str], regions: Sequence[str], path: str,
                 metric: str = 'Dice', title: str | None = None) -> None:
    """Heat map PNG of mean ``metric`` over subsets (rows, given order) × regions (columns)."""
    plt = _pyplot()
    values = np.array([[summary['mean'][metric][s][r] for r in regions] for s in subsets], dtype=float)
    fig, ax = plt.subplots(figsize=(1.4 * len(regions) + 3, 0.38 * len(subsets) + 1.5))
    try:
        image = ax.imshow(values, cmap='viridis', aspect='auto',
                          vmin=0.0 if metric == 'Dice' else None, vmax=1.0 if metric == 'Dice' else None)
        ax.set_xticks(range(len(regions)), labels=list(regions))
        ax.set_yticks(range(len(subsets)), labels=list(subsets))
        for i in range(len(subsets)):
            for j in range(len(regions)):
                if not math.isnan(values[i, j]):
                    ax.text(j, i, f'{values[i, j]:.2f}', ha='center', va='center', fontsize=7,
                            color='white' if metric == 'Dice' and values[i, j] < 0.5 else 'black')
        fig.colorbar(image, ax=ax, label=metric)
        ax.set_title(title or f'{metric} per modality subset')
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def missing_curve(summary: dict, subsets: Sequence[str], n_missing: Dict[str, int], regions: Sequence[str],
                  metric: str = 'Dice') -> Dict[str, Dict[int, float]]:
    """``{region: {k: mean metric over the subsets with k missing modalities}}``."""
    ks = sorted(set(n_missing[s] for s in subsets))
    return {r: {k: _nanmean(summary['mean'][metric][s][r] for s in subsets if n_missing[s] == k) for k in ks}
            for r in regions}


def plot_missing_curve(summary: dict, subsets: Sequence[str], n_missing: Dict[str, int], regions: Sequence[str],
                       path: str, metric: str = 'Dice', title: str | None = None) -> None:
    """PNG of mean ``metric`` against the number of missing modalities, one line per region."""
    plt = _pyplot()
    curve = missing_curve(summary, subsets, n_missing, regions, metric)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        for region, points in curve.items():
            ks = sorted(points)
            ax.plot(ks, [points[k] for k in ks], marker='o', label=region)
        ax.set_xlabel('number of missing modalities')
        ax.set_ylabel(f'mean {metric} over subsets')
        ax.set_xticks(sorted({n_missing[s] for s in subsets}))
        if metric == 'Dice':
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(title or f'{metric} vs missing modalities')
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def write_reports(rows: Sequence[dict], subsets: Sequence[str], n_missing: Dict[str, int], regions: Sequence[str],
                  output_folder: str, modalities: Sequence[str] | None = None, **summary_extra) -> dict:
    """Write every report of a benchmark into ``output_folder``; returns the summary.

    Files (:data:`REPORT_NAMES`): ``per_case.csv``, ``summary.json``, ``table_dice.md``, ``table_hd95.md``,
    ``table_dice.tex``, ``table_hd95.tex``, ``heatmap_dice.png``, ``dice_vs_missing.png``; when the rows have the
    lesion-wise metrics also ``table_lesiondice.md/.tex``, ``table_lesionhd95.md/.tex`` and ``table_lesionwise.md``
    (global next to lesion-wise); when every one of the ``2^M - 1`` modality subsets was benchmarked also
    ``table_shapley.md``: each modality's exact Shapley value of the mean Dice per region
    (:mod:`~nnunet_missingmod.evaluation.shapley`), which ``summary.json`` holds as ``shapley`` (region -> modality
    -> value; null when not computed, ``shapley_note`` says why). The modalities are ``modalities``, else
    ``evaluation['modalities']`` of ``summary_extra``, else those of the full subset (``n_missing`` 0).
    """
    os.makedirs(output_folder, exist_ok=True)
    summary = summarize(rows, subsets, regions)
    if modalities is None:
        modalities = (summary_extra.get('evaluation') or {}).get('modalities')
    players = shapley.modality_order(subsets, n_missing, modalities)
    summary['shapley'], summary['shapley_note'] = shapley.benchmark_shapley(summary['mean'], subsets, regions,
                                                                            players)
    write_case_csv(rows, os.path.join(output_folder, 'per_case.csv'))
    write_summary_json(summary, os.path.join(output_folder, 'summary.json'), subsets=list(subsets),
                       n_missing={s: n_missing[s] for s in subsets}, regions=list(regions), **summary_extra)
    for metric in summary['mean']:
        stem = os.path.join(output_folder, f'table_{metric.lower()}')
        with open(stem + '.md', 'w') as f:
            f.write(markdown_table(summary, metric, subsets, regions))
        with open(stem + '.tex', 'w') as f:
            f.write(latex_table(summary, metric, subsets, regions))
    if 'LesionDice' in summary['mean']:
        with open(os.path.join(output_folder, 'table_lesionwise.md'), 'w') as f:
            f.write(lesionwise_markdown_table(summary, subsets, regions))
    if summary['shapley'] is not None:
        with open(os.path.join(output_folder, 'table_shapley.md'), 'w') as f:
            f.write(shapley.markdown_shapley(summary['shapley'], regions, players, summary['shapley_note']))
    plot_heatmap(summary, subsets, regions, os.path.join(output_folder, 'heatmap_dice.png'))
    plot_missing_curve(summary, subsets, n_missing, regions, os.path.join(output_folder, 'dice_vs_missing.png'))
    return summary
