"""Writing a command's outputs whole or not at all, and keeping what an interrupted benchmark measured.

``nnUNetv2_mm_benchmark`` and ``nnUNetv2_mm_benchmark_cost`` run for hours and write several files into ``-o``:

* :func:`check_output_folder`: a non-empty ``-o`` is refused unless ``--overwrite`` (checked before any work);
* :func:`staged_outputs`: the outputs are written into a new hidden folder next to ``-o``
  (``.NAME.TAG-XXXXXXXX``); only when the run has finished do they move into ``-o``, replacing the command's own
  outputs there (other files stay). On an error or Ctrl-C ``-o`` is left as it was and the hidden folder is removed (a
  killed process leaves it behind; it holds nothing but that run's outputs);
* :class:`PartialRows`: the benchmark's ``per_case.csv`` rows appended, case by case, to
  ``-o/per_case.partial.csv`` and flushed to disk, so an interrupted run keeps what it measured (removed when the
  run finishes, replaced by ``per_case.csv``).
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator, Sequence

from nnunet_missingmod.cli import CommandError
from nnunet_missingmod.evaluation.tables import CSV_FIELDS, LESIONWISE_METRICS, METRICS

#: the rows of an unfinished benchmark, in ``-o``
PARTIAL_CSV = 'per_case.partial.csv'


def check_output_folder(folder: str, overwrite: bool, what: str = 'an earlier benchmark') -> None:
    """:class:`CommandError` for a ``folder`` that is a file, or that is not empty without ``overwrite`` (which
    lets :func:`staged_outputs` replace ``what`` there at the end)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CommandError(f"-o {folder} is a file, not a folder")
    if overwrite or not os.path.isdir(folder) or not os.listdir(folder):
        return
    names = sorted(os.listdir(folder))
    raise CommandError(f"output folder {folder} is not empty ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                       f"); use --overwrite to replace {what} there, or choose an empty folder")


@contextmanager
def staged_outputs(folder: str, names: Sequence[str], tag: str) -> Iterator[str]:
    """Yield a new, empty hidden folder next to ``folder`` to write the outputs into; when the block finishes,
    everything written there moves into ``folder`` and an output ``names`` there that this run did not write is
    removed (it is an earlier run's). On any exception, Ctrl-C included, ``folder`` is not touched. The hidden folder
    is removed either way."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(folder))}.{tag}-', dir=parent)
    try:
        yield staging
        os.makedirs(folder, exist_ok=True)
        replace_outputs(staging, folder, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_outputs(source: str, folder: str, names: Sequence[str]) -> None:
    """Move everything in ``source`` into ``folder`` (same file system), replacing what is there under the same
    name; an output ``names`` in ``folder`` that ``source`` lacks is an earlier run's and is removed. Nothing else in
    ``folder`` is touched."""
    written = sorted(os.listdir(source))
    old = tempfile.mkdtemp(prefix='.replaced-', dir=source)  # earlier outputs, removed with ``source``
    for name in sorted(set(names) | set(written)):
        target, new = os.path.join(folder, name), os.path.join(source, name)
        if os.path.isdir(target) and not os.path.islink(target):
            os.rename(target, os.path.join(old, name))
        elif os.path.lexists(target):
            os.remove(target)
        if os.path.lexists(new):
            os.rename(new, target)


class PartialRows:
    """``per_case.csv`` rows appended as cases finish (the columns of
    :func:`~nnunet_missingmod.evaluation.tables.write_case_csv`); the file is created with the first rows."""

    def __init__(self, path: str, lesion_wise: bool = False):
        self.path = path
        self.metrics = METRICS + (LESIONWISE_METRICS if lesion_wise else ())
        self.fields = CSV_FIELDS + self.metrics[len(METRICS):]
        self.rows = 0
        self.cases = 0

    def append(self, rows: Sequence[dict]) -> None:
        """Append the rows of one case and flush them to disk."""
        if self.cases == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, 'w' if self.cases == 0 else 'a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction='ignore')
            if self.cases == 0:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: (repr(float(row[k])) if k in self.metrics else row.get(k, ''))
                                 for k in self.fields})
            f.flush()
            os.fsync(f.fileno())
        self.rows += len(rows)
        self.cases += 1
