"""``nnUNetv2_mm_compare``: several ``nnUNetv2_mm_benchmark`` outputs merged into one method comparison.

The layout of SMSN's Table 2 and Hölder-MI's Tables II-III: for every region a block of rows, one row per method,
the modality subsets as columns (in the benchmarks' order) and ``Avg``; the best value of each column within a
region block is marked (bold). Dice in %, HD95 in mm (lower is better). Written into ``-o``:

* ``comparison_dice.md``/``.tex`` and ``comparison_hd95.md``/``.tex``;
* ``dice_vs_missing.png``: mean Dice against the number of missing modalities, one panel per region, one line per
  method;
* ``comparison.json``: the merged means (method -> metric -> subset -> region, and ``Avg``).

Method names are the benchmarks' trainers (``summary.json``'s ``model.trainer``) unless ``--names`` gives them; the
benchmarks must share subsets and regions. Nothing is written when an input is unusable.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import numpy as np

from nnunet_missingmod.cli import ArgumentParser, CommandError, command
from nnunet_missingmod.evaluation.tables import METRICS, _fmt, _latex_escape, _pyplot, missing_curve

PROG = 'nnUNetv2_mm_compare'


def load_benchmark(folder: str) -> dict:
    """``summary.json`` of one benchmark output folder, checked for what the comparison needs."""
    path = os.path.join(folder, 'summary.json')
    if not os.path.isfile(path):
        raise CommandError(f"{folder}: no summary.json (is it an nnUNetv2_mm_benchmark output folder?)")
    try:
        with open(path) as f:
            summary = json.load(f)
    except json.JSONDecodeError as e:
        raise CommandError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in ('mean', 'Avg', 'subsets', 'regions', 'n_missing') if k not in summary]
    if missing:
        raise CommandError(f"{path}: lacks {missing}; re-run nnUNetv2_mm_benchmark")
    return summary


def method_names(summaries: Sequence[dict], folders: Sequence[str], names: Sequence[str] | None) -> List[str]:
    """``names`` if given, else each benchmark's trainer; folder names where trainers repeat or are unknown."""
    if names is not None:
        if len(names) != len(folders):
            raise CommandError(f"--names gives {len(names)} names for {len(folders)} benchmark folders")
        return list(names)
    trainers = [s.get('model', {}).get('trainer') for s in summaries]
    if None in trainers or len(set(trainers)) < len(trainers):
        return [os.path.basename(os.path.normpath(f)) for f in folders]
    return trainers


def comparison_matrix(summaries: Sequence[dict], metric: str, region: str, subsets: Sequence[str]) -> np.ndarray:
    """``(methods, subsets + 1)`` means of ``metric`` for ``region``; NaN (JSON null) where undefined."""
    def value(v):
        return float('nan') if v is None else float(v)
    return np.array([[value(s['mean'][metric][subset][region]) for subset in subsets] +
                     [value(s['Avg'][metric][region])] for s in summaries], dtype=float)


def best_rows(values: np.ndarray, metric: str) -> np.ndarray:
    """Bool mask of the best entries of each column (ties all marked): max Dice, min HD95."""
    best = np.zeros(values.shape, dtype=bool)
    for j in range(values.shape[1]):
        column = values[:, j]
        if np.all(np.isnan(column)):
            continue
        target = np.nanmax(column) if metric == 'Dice' else np.nanmin(column)
        best[:, j] = np.isclose(column, target, rtol=0, atol=1e-12)
    return best


def markdown_comparison(summaries, methods, metric, regions, subsets) -> str:
    unit = 'Dice (%)' if metric == 'Dice' else 'HD95 (mm)'
    header = ['region', f'method — {unit}'] + list(subsets) + ['Avg']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join([':---', ':---'] + ['---:'] * (len(subsets) + 1)) + '|']
    for region in regions:
        values = comparison_matrix(summaries, metric, region, subsets)
        best = best_rows(values, metric)
        for i, method in enumerate(methods):
            cells = [f'**{_fmt(v, metric)}**' if b else _fmt(v, metric) for v, b in zip(values[i], best[i])]
            lines.append('| ' + ' | '.join([region if i == 0 else '', method] + cells) + ' |')
    return '\n'.join(lines) + '\n'


def latex_comparison(summaries, methods, metric, regions, subsets) -> str:
    unit = 'Dice (\\%)' if metric == 'Dice' else 'HD95 (mm)'
    lines = ['\\begin{table}[t]', '\\centering', '\\resizebox{\\textwidth}{!}{%',
             '\\begin{tabular}{ll' + 'c' * (len(subsets) + 1) + '}', '\\toprule',
             ' & '.join(['Region', f'Method ({unit})'] + [_latex_escape(s) for s in subsets] + ['Avg']) + ' \\\\']
    for region in regions:
        values = comparison_matrix(summaries, metric, region, subsets)
        best = best_rows(values, metric)
        lines.append('\\midrule')
        for i, method in enumerate(methods):
            cells = [f'\\textbf{{{_fmt(v, metric)}}}' if b else _fmt(v, metric) for v, b in zip(values[i], best[i])]
            lines.append(' & '.join([_latex_escape(region) if i == 0 else '', _latex_escape(method)] + cells) + ' \\\\')
    lines += ['\\bottomrule', '\\end{tabular}}',
              f'\\caption{{{metric} per modality subset and method (best per column in bold)}}', '\\end{table}']
    return '\n'.join(lines) + '\n'


def plot_comparison_curves(summaries, methods, regions, subsets, n_missing: Dict[str, int], path: str) -> None:
    """Mean Dice against the number of missing modalities: one panel per region, one line per method."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.6), squeeze=False)
    try:
        for ax, region in zip(axes[0], regions):
            for summary, method in zip(summaries, methods):
                points = missing_curve(_with_nan(summary), subsets, n_missing, [region])[region]
                ks = sorted(points)
                ax.plot(ks, [points[k] for k in ks], marker='o', label=method)
            ax.set_title(region)
            ax.set_xlabel('number of missing modalities')
            ax.set_xticks(sorted(set(n_missing.values())))
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel('mean Dice over subsets')
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _with_nan(summary: dict) -> dict:
    """JSON nulls back to NaN in the ``mean`` block (what :func:`missing_curve` averages)."""
    mean = {m: {s: {r: (float('nan') if v is None else v) for r, v in by_region.items()}
                for s, by_region in by_subset.items()} for m, by_subset in summary['mean'].items()}
    return {**summary, 'mean': mean}


def compare(folders: Sequence[str], output: str, names: Sequence[str] | None = None) -> dict:
    """Merge the benchmark outputs in ``folders`` into the comparison files in ``output``; returns the merged
    means ``{method: {'mean': ..., 'Avg': ...}}``."""
    if not folders:
        raise CommandError("no benchmark folder given")
    summaries = [load_benchmark(f) for f in folders]
    subsets, regions = summaries[0]['subsets'], summaries[0]['regions']
    for folder, summary in zip(folders[1:], summaries[1:]):
        if summary['subsets'] != subsets or summary['regions'] != regions:
            raise CommandError(f"{folder}: its subsets/regions differ from {folders[0]}'s; compare benchmarks of "
                               f"the same data set and --order")
    methods = method_names(summaries, folders, names)
    if os.path.abspath(output) in {os.path.abspath(f) for f in folders}:
        raise CommandError(f"-o {output} is one of the benchmark folders; choose a new folder")
    os.makedirs(output, exist_ok=True)
    for metric in METRICS:
        stem = os.path.join(output, f'comparison_{metric.lower()}')
        with open(stem + '.md', 'w') as f:
            f.write(markdown_comparison(summaries, methods, metric, regions, subsets))
        with open(stem + '.tex', 'w') as f:
            f.write(latex_comparison(summaries, methods, metric, regions, subsets))
    plot_comparison_curves(summaries, methods, regions, subsets, summaries[0]['n_missing'],
                           os.path.join(output, 'dice_vs_missing.png'))
    merged = {m: {'mean': s['mean'], 'Avg': s['Avg'], 'source': os.path.abspath(f)}
              for m, s, f in zip(methods, summaries, folders)}
    with open(os.path.join(output, 'comparison.json'), 'w') as f:
        json.dump({'subsets': subsets, 'regions': regions, 'methods': merged}, f, indent=2)
    return merged


@command(PROG)
def main(argv=None) -> int:
    parser = ArgumentParser(prog=PROG, description='Merge nnUNetv2_mm_benchmark outputs into one comparison table '
                                                   '(methods x regions, subsets as columns, best per column marked).')
    parser.add_argument('-i', nargs='+', required=True, metavar='BENCH_DIR', help='nnUNetv2_mm_benchmark -o folders')
    parser.add_argument('-o', required=True, help='output folder')
    parser.add_argument('--names', nargs='+', help='method names in the order of -i (default: the trainers)')
    args = parser.parse_args(argv)
    compare(args.i, args.o, args.names)
    print(open(os.path.join(args.o, 'comparison_dice.md')).read())
    print(f"comparison of {len(args.i)} benchmarks written to {args.o}")
    return 0
