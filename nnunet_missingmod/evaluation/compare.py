"""``nnUNetv2_mm_compare``: several ``nnUNetv2_mm_benchmark`` outputs merged into one method comparison.

The layout of SMSN's Table 2 and Hölder-MI's Tables II-III: for every region a block of rows, one row per method,
the modality subsets as columns (in the benchmarks' order) and ``Avg``; the best value of each column within a
region block is marked (bold). Dice in %, HD95 in mm (lower is better). Written into ``-o``:

* ``comparison_dice.md``/``.tex`` and ``comparison_hd95.md``/``.tex``;
* ``dice_vs_missing.png``: mean Dice against the number of missing modalities, one panel per region, one line per
  method;
* ``comparison_shapley.md``: when every benchmark has Shapley values (all ``2^M - 1`` subsets benchmarked, see
  :mod:`~nnunet_missingmod.evaluation.shapley`), each modality's exact Shapley value of the mean Dice, for every
  region a row per method, and their sum (the full-set Dice); otherwise ``comparison.json``'s ``shapley_note`` says
  which benchmark has none;
* ``comparison.json``: the merged means (method -> metric -> subset -> region, and ``Avg``), the Shapley values and
  each method's benchmark folder(s).

Method names are the benchmarks' trainers (``summary.json``'s ``model.trainer``) unless ``--names`` gives them; the
benchmarks must share subsets and regions. Every ``summary.json`` is checked (each metric, subset and region the tables
need; the file and the missing entry are named) before anything is written; nothing is written when an input is
unusable. A non-empty ``-o`` needs ``--overwrite``, which replaces the files above (:data:`OUTPUT_NAMES`) and leaves
other files there alone. The files are written into a temporary sibling folder and moved into ``-o`` at the end.

``--average-splits K`` reports every method as the average over K data splits, RFNet's way for its three BraTS 2018
splits (its README: "Brats2018 contains three different training and test splits and the average results are
reported here"; each split's result is the mean over that split's test cases): ``-i`` then gives K benchmark folders
per method, split 1 to K of the first method, then those of the second ...; every value (per subset and region, and
``Avg``) is the mean of the K per-split means, not a mean over the pooled cases (the two agree when the splits' test
sets are equally large and every value is defined, as for RFNet's 57-case test sets).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, List, Sequence

import numpy as np

from nnunet_missingmod.cli import ArgumentParser, CommandError, command
from nnunet_missingmod.evaluation.tables import METRICS, _fmt, _latex_escape, _pyplot, missing_curve

PROG = 'nnUNetv2_mm_compare'
#: what the comparison writes into ``-o`` (``--overwrite`` replaces exactly these)
OUTPUT_NAMES = ('comparison_dice.md', 'comparison_dice.tex', 'comparison_hd95.md', 'comparison_hd95.tex',
                'comparison_shapley.md', 'dice_vs_missing.png', 'comparison.json')


def _lookup(summary: dict, keys: Sequence[str], path: str):
    """``summary[k0][k1]...``; :class:`CommandError` naming the file and the first missing key."""
    value = summary
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise CommandError(f"{path}: lacks {'.'.join(keys[:i + 1])}; re-run nnUNetv2_mm_benchmark")
        value = value[key]
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_summary(summary, path: str) -> None:
    """:class:`CommandError` (one line naming ``path`` and the entry) unless ``summary`` has everything the
    comparison reads: the subset and region names, ``n_missing`` per subset, and a number or null for every metric
    of :data:`METRICS`, subset and region in ``mean`` and per metric and region in ``Avg``."""
    if not isinstance(summary, dict):
        raise CommandError(f"{path}: not a benchmark summary (a JSON object expected)")
    for key in ('subsets', 'regions'):
        names = _lookup(summary, [key], path)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise CommandError(f"{path}: {key} is not a list of names; re-run nnUNetv2_mm_benchmark")
    subsets, regions = summary['subsets'], summary['regions']
    for subset in subsets:
        if not isinstance(_lookup(summary, ['n_missing', subset], path), int):
            raise CommandError(f"{path}: n_missing.{subset} is not a whole number")
    entries = [['mean', m, s, r] for m in METRICS for s in subsets for r in regions]
    entries += [['Avg', m, r] for m in METRICS for r in regions]
    for keys in entries:
        value = _lookup(summary, keys, path)
        if value is not None and not _is_number(value):
            raise CommandError(f"{path}: {'.'.join(keys)} is {value!r}, not a number")
    if summary.get('shapley') is not None:
        modalities = None
        for region in regions:
            by_modality = _lookup(summary, ['shapley', region], path)
            if not isinstance(by_modality, dict) or not all(_is_number(v) for v in by_modality.values()):
                raise CommandError(f"{path}: shapley.{region} is not a number per modality")
            modalities = list(by_modality) if modalities is None else modalities
            if sorted(by_modality) != sorted(modalities):
                raise CommandError(f"{path}: shapley.{region} has the modalities {sorted(by_modality)}, "
                                   f"shapley.{regions[0]} {sorted(modalities)}")


def load_benchmark(folder: str) -> dict:
    """``summary.json`` of one benchmark output folder, checked for what the comparison needs
    (:func:`check_summary`)."""
    path = os.path.join(folder, 'summary.json')
    if not os.path.isfile(path):
        raise CommandError(f"{folder}: no summary.json (is it an nnUNetv2_mm_benchmark output folder?)")
    try:
        with open(path) as f:
            summary = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CommandError(f"{path}: not valid JSON ({e})") from e
    check_summary(summary, path)
    return summary


def check_output_folder(output: str, overwrite: bool) -> None:
    """:class:`CommandError` for an ``output`` that is a file, or a non-empty folder without ``overwrite``."""
    if os.path.lexists(output) and not os.path.isdir(output):
        raise CommandError(f"-o {output} is a file, not a folder")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        names = sorted(os.listdir(output))
        raise CommandError(f"output folder {output} is not empty ({', '.join(names[:5])}"
                           f"{' ...' if len(names) > 5 else ''}); use --overwrite to replace an earlier comparison "
                           f"there, or choose an empty folder")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(tmp: str, output: str) -> None:
    """The finished files of ``tmp`` into ``output``: a rename of the folder when ``output`` does not exist, else
    each file replaced by rename, and the comparison files of an earlier run that this one did not write removed
    (other files in ``output`` stay)."""
    if not os.path.isdir(output):
        os.rename(tmp, output)
        return
    written = set(os.listdir(tmp))
    for name in sorted(written):
        os.replace(os.path.join(tmp, name), os.path.join(output, name))
    for name in OUTPUT_NAMES:
        if name not in written and os.path.isfile(os.path.join(output, name)):
            os.remove(os.path.join(output, name))
    os.rmdir(tmp)


def method_names(summaries: Sequence[dict], folders: Sequence[str], names: Sequence[str] | None) -> List[str]:
    """``names`` if given, else each benchmark's trainer; folder names where trainers repeat or are unknown."""
    if names is not None:
        if len(names) != len(folders):
            raise CommandError(f"--names gives {len(names)} names for {len(folders)} methods")
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


def average_splits(summaries: Sequence[dict]) -> dict:
    """One benchmark summary whose means (per metric, subset and region, and ``Avg``) are the means of the
    per-split means of ``summaries`` (undefined per-split values are left out); the trainer if all splits share it.
    Shapley values, when every split has them, are averaged too (they are linear in the means: the average of the
    per-split values is the Shapley value of the averaged means)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None
    first = summaries[0]
    trainers = {s.get('model', {}).get('trainer') for s in summaries}
    averaged = {m: {s: {r: mean(x['mean'][m][s][r] for x in summaries) for r in first['regions']}
                    for s in first['subsets']} for m in first['mean']}
    avg = {m: {r: mean(x['Avg'][m][r] for x in summaries) for r in first['regions']} for m in first['Avg']}
    shapley, note = None, None
    if all(x.get('shapley') for x in summaries):
        shapley = {r: {k: mean(x['shapley'][r][k] for x in summaries) for k in first['shapley'][r]}
                   for r in first['regions']}
        note = first.get('shapley_note')
    else:
        note = next(x.get('shapley_note') for x in summaries if not x.get('shapley'))
    return {'mean': averaged, 'Avg': avg, 'subsets': first['subsets'], 'regions': first['regions'],
            'n_missing': first['n_missing'], 'model': {'trainer': trainers.pop() if len(trainers) == 1 else None},
            'shapley': shapley, 'shapley_note': note}


def shapley_note(summaries: Sequence[dict], folders: Sequence[str]) -> str | None:
    """Why there is no Shapley table (the first benchmark without Shapley values), or None when there is one."""
    for summary, folder in zip(summaries, folders):
        if not summary.get('shapley'):
            why = summary.get('shapley_note') or 'a benchmark written before Shapley values were added'
            return f"no Shapley table: {folder}'s summary.json has no Shapley values ({why})"
    return None


def markdown_shapley_comparison(summaries, methods, regions, note: str = '') -> str:
    """Per region a row per method: each modality's Shapley value of the mean Dice (% points) and their sum."""
    modalities = list(summaries[0]['shapley'][regions[0]])
    header = ['region', 'method — Shapley (Dice %)'] + modalities + ['Sum']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join([':---', ':---'] + ['---:'] * (len(modalities) + 1)) + '|']
    for region in regions:
        for i, (summary, method) in enumerate(zip(summaries, methods)):
            row = [summary['shapley'][region][m] for m in modalities]
            lines.append('| ' + ' | '.join([region if i == 0 else '', method] +
                                           [f'{100 * v:.2f}' for v in row + [sum(row)]]) + ' |')
    text = '\n'.join(lines) + '\n'
    return text + (f'\n{note[0].upper()}{note[1:]}.\n' if note else '')


def compare(folders: Sequence[str], output: str, names: Sequence[str] | None = None, splits: int = 1,
            overwrite: bool = False) -> dict:
    """Merge the benchmark outputs in ``folders`` into the comparison files in ``output``; returns the merged
    means ``{method: {'mean': ..., 'Avg': ...}}``. With ``splits`` K > 1, ``folders`` holds K consecutive splits per
    method, each method's values averaged over them (:func:`average_splits`). Every input is checked before
    anything is written; a non-empty ``output`` needs ``overwrite``; the files are written into a temporary sibling
    folder and moved into ``output`` at the end."""
    if not folders:
        raise CommandError("no benchmark folder given")
    if splits < 1:
        raise CommandError(f"--average-splits {splits}: the number of splits must be at least 1")
    if len(folders) % splits:
        raise CommandError(f"--average-splits {splits}: -i gives {len(folders)} benchmark folders, not a multiple "
                           f"of {splits} (the splits of every method, one after the other)")
    summaries = [load_benchmark(f) for f in folders]
    subsets, regions = summaries[0]['subsets'], summaries[0]['regions']
    for folder, summary in zip(folders[1:], summaries[1:]):
        if summary['subsets'] != subsets or summary['regions'] != regions:
            raise CommandError(f"{folder}: its subsets/regions differ from {folders[0]}'s; compare benchmarks of "
                               f"the same data set and --order")
    with_shapley = [(f, sorted(x['shapley'][regions[0]])) for f, x in zip(folders, summaries) if x.get('shapley')]
    for folder, modalities in with_shapley[1:]:
        if modalities != with_shapley[0][1]:
            raise CommandError(f"{folder}: its Shapley values are of the modalities {modalities}, those of "
                               f"{with_shapley[0][0]} of {with_shapley[0][1]}")
    if os.path.abspath(output) in {os.path.abspath(f) for f in folders}:
        raise CommandError(f"-o {output} is one of the benchmark folders; choose a new folder")
    groups = [list(folders[i:i + splits]) for i in range(0, len(folders), splits)]
    if splits > 1:
        for group in groups:
            if len({os.path.abspath(f) for f in group}) < splits:
                raise CommandError(f"--average-splits {splits}: the splits {' '.join(group)} of one method repeat "
                                   f"a folder; give each split's benchmark once")
        summaries = [average_splits(summaries[i:i + splits]) for i in range(0, len(folders), splits)]
        folders = [group[0] for group in groups]
    methods = method_names(summaries, folders, names)
    check_output_folder(output, overwrite)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(output))}.', suffix='.tmp', dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would become -o's mode
        merged = _write_comparison(tmp, summaries, methods, groups, regions, subsets, splits)
        _move_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return merged


def _write_comparison(output, summaries, methods, groups, regions, subsets, splits) -> dict:
    """The comparison files of :func:`compare` into the (temporary) folder ``output``; returns the merged means."""
    for metric in METRICS:
        stem = os.path.join(output, f'comparison_{metric.lower()}')
        with open(stem + '.md', 'w') as f:
            f.write(markdown_comparison(summaries, methods, metric, regions, subsets))
            if splits > 1:
                f.write(f'\nValues: {averaging_note(splits)}.\n')
        with open(stem + '.tex', 'w') as f:
            f.write(latex_comparison(summaries, methods, metric, regions, subsets))
    plot_comparison_curves(summaries, methods, regions, subsets, summaries[0]['n_missing'],
                           os.path.join(output, 'dice_vs_missing.png'))
    no_shapley = shapley_note(summaries, [' '.join(group) for group in groups])
    if no_shapley is None:
        note = summaries[0].get('shapley_note') or ''
        if splits > 1:
            note = f'{note}; values: mean over {splits} splits of the per-split Shapley values'.lstrip('; ')
        with open(os.path.join(output, 'comparison_shapley.md'), 'w') as f:
            f.write(markdown_shapley_comparison(summaries, methods, regions, note))
    merged = {m: {'mean': s['mean'], 'Avg': s['Avg'],
                  **({'shapley': s['shapley']} if no_shapley is None else {}),
                  **({'splits': [os.path.abspath(f) for f in group]} if splits > 1 else
                     {'source': os.path.abspath(group[0])})}
              for m, s, group in zip(methods, summaries, groups)}
    report = {'subsets': subsets, 'regions': regions, 'methods': merged}
    if splits > 1:
        report['average'] = averaging_note(splits)
    if no_shapley is not None:
        report['shapley_note'] = no_shapley
    with open(os.path.join(output, 'comparison.json'), 'w') as f:
        json.dump(report, f, indent=2)
    return merged


def averaging_note(splits: int) -> str:
    """What ``--average-splits`` reports, in words."""
    return (f'mean over {splits} splits of the per-split means (RFNet\'s BraTS 2018 average), not a mean over the '
            f'pooled cases')


@command(PROG)
def main(argv=None) -> int:
    parser = ArgumentParser(prog=PROG, description='Merge nnUNetv2_mm_benchmark outputs into one comparison table '
                                                   '(methods x regions, subsets as columns, best per column marked).')
    parser.add_argument('-i', nargs='+', required=True, metavar='BENCH_DIR', help='nnUNetv2_mm_benchmark -o folders')
    parser.add_argument('-o', required=True, help='output folder (new or empty, or see --overwrite)')
    parser.add_argument('--overwrite', action='store_true',
                        help='-o may hold an earlier comparison: its files are replaced (other files stay)')
    parser.add_argument('--names', nargs='+', help='method names in the order of -i (default: the trainers)')
    parser.add_argument('--average-splits', type=int, default=1, metavar='K',
                        help='average every method over K data splits as RFNet does for BraTS 2018 (mean of the '
                             'per-split means): -i gives split 1..K of the first method, then split 1..K of the '
                             'second ...; --names one name per method')
    args = parser.parse_args(argv)
    compare(args.i, args.o, args.names, args.average_splits, args.overwrite)
    print(open(os.path.join(args.o, 'comparison_dice.md')).read())
    if os.path.isfile(os.path.join(args.o, 'comparison_shapley.md')):
        print(open(os.path.join(args.o, 'comparison_shapley.md')).read())
    else:
        print(json.load(open(os.path.join(args.o, 'comparison.json')))['shapley_note'])
    if args.average_splits > 1:
        print(f"values: {averaging_note(args.average_splits)}")
    print(f"comparison of {len(args.i) // args.average_splits} methods ({len(args.i)} benchmarks) written to "
          f"{args.o}")
    return 0
