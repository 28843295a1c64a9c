"""What every console command of this package shares: exit status, one-line errors, Ctrl-C.

Every ``main`` is wrapped by :func:`command`, which makes it fit for shell scripts:

* success -> exit status 0 (whatever the function returns for Python callers, a path or a list, is never handed
  to ``sys.exit``; an ``int`` is taken as the exit status);
* a problem the user can fix (:class:`CommandError`, ``FileNotFoundError``, ``ValueError``, the converter's
  ``ConversionError`` ...) -> ``PROG: error: MESSAGE`` on one line of stderr, exit status 1, no traceback;
* no usable CUDA device with the default ``-device cuda`` -> ``PROG: error: no CUDA device: pass -device cpu``;
* Ctrl-C -> ``PROG: interrupted`` and exit status 130 (as shells report SIGINT).

Any other exception is a bug: it is reported on one line too, naming its type; set ``NNUNET_MM_TRACEBACK=1`` to
see the traceback instead.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable

#: the message for ``-device cuda`` on a machine without a usable NVIDIA GPU
NO_CUDA_MESSAGE = 'no CUDA device: pass -device cpu'
#: exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED_STATUS = 130


class CommandError(Exception):
    """A problem the user can fix (bad argument, missing file ...); printed as one line, exit status 1."""


def one_line(text) -> str:
    """``text`` on one line: its lines joined with ``'; '`` (empty lines dropped)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return '; '.join(lines)


def is_no_cuda_error(error: BaseException) -> bool:
    """Whether ``error`` is torch's way of saying that there is no usable CUDA device."""
    text = str(error)
    return isinstance(error, (RuntimeError, AssertionError)) and any(s in text for s in (
        'Found no NVIDIA driver', 'Torch not compiled with CUDA enabled', 'no CUDA GPUs are available',
        'CUDA driver initialization failed', 'No CUDA GPUs are available'))


def check_device(name: str) -> None:
    """:class:`CommandError` for ``-device cuda``/``mps`` on a machine that does not have it (before any work)."""
    import torch
    if name == 'cuda' and not torch.cuda.is_available():
        raise CommandError(NO_CUDA_MESSAGE)
    if name == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise CommandError('no MPS device: pass -device cpu')


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``PROG: error: MESSAGE (see PROG --help)``,
    exit status 2) instead of the usage block followed by the message."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n')


def dataset_name(dataset: str) -> str:
    """nnU-Net's ``DatasetXXX_Name`` of a dataset name or id; :class:`CommandError` (one line) if there is none."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        where = ', '.join(f'{k}={os.environ.get(k) or "(not set)"}'
                          for k in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'))
        raise CommandError(f'unknown dataset {dataset!r}: no such data set in {where}') from e


def _user_errors() -> tuple:
    errors = [CommandError, FileNotFoundError, NotADirectoryError, ValueError]
    try:  # the converter's error type; imported lazily so that this module stays light
        from nnunet_missingmod.dataset_conversion.brats import ConversionError
        errors.append(ConversionError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def report(prog: str, message) -> None:
    print(f'{prog}: error: {one_line(message)}', file=sys.stderr, flush=True)


def command(prog: str) -> Callable:
    """Decorator for the ``main(argv=None, ...)`` of a console command named ``prog`` (see the module doc)."""
    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            name = kwargs.get('prog') or prog  # a caller may rename the command (the per-release converters)
            try:
                result = main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f'\n{name}: interrupted', file=sys.stderr, flush=True)
                return INTERRUPTED_STATUS
            except SystemExit:  # argparse (status 2 with its usage line) and explicit exits
                raise
            except Exception as e:  # noqa: BLE001 - every failure ends in one line, see the module doc
                if os.environ.get('NNUNET_MM_TRACEBACK', '').lower() in ('1', 't', 'true', 'yes'):
                    raise
                if is_no_cuda_error(e):
                    report(name, NO_CUDA_MESSAGE)
                elif isinstance(e, _user_errors()):
                    report(name, e)
                else:
                    report(name, f'{type(e).__name__}: {e} (set NNUNET_MM_TRACEBACK=1 for the traceback)')
                return 1
            if isinstance(result, bool) or not isinstance(result, int):
                return 0
            return result
        wrapper.prog = prog
        return wrapper
    return decorate
