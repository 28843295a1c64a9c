"""What every console command of this package shares: exit status, one-line errors, Ctrl-C.

Every ``main`` is wrapped by :func:`command`, which makes it fit for shell scripts:

* success -> exit status 0 (whatever the function returns for Python callers, a path or a list, is never handed
  to ``sys.exit``; an ``int`` is taken as the exit status);
* a problem the user can fix (:class:`CommandError`, ``FileNotFoundError``, ``ValueError``, the converter's
  ``ConversionError`` ...) -> ``PROG: error: MESSAGE`` on one line of stderr, exit status 1, no traceback;
* ``PermissionError``, ``FileExistsError``, and any operating-system error on a named path that the user can fix
  (no space, read-only file system, ...) -> ``PROG: error: PATH: what went wrong`` (one line, exit status 1);
* no usable CUDA device with the default ``-device cuda`` -> ``PROG: error: no CUDA device: pass -device cpu``;
* Ctrl-C -> ``PROG: interrupted`` and exit status 130 (as shells report SIGINT).

Any other exception is a bug: it is reported on one line too, naming its type; set ``NNUNET_MM_TRACEBACK=1`` to
see the traceback instead.
"""
from __future__ import annotations

import argparse
import errno
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


#: nnU-Net's folder variables
NNUNET_PATHS = ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')


def require_env_path(name: str, why: str = '', must_exist: bool = True) -> str:
    """The folder that environment variable ``name`` (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``)
    names; :class:`CommandError` (one line) when it is unset or empty, or (``must_exist``) not an existing folder.

    Call it before any work. nnU-Net 2.8's ``nnunetv2.paths.nnUNet_raw`` & co. are ``_EnvPath`` objects that are
    never ``None`` (``is None`` checks cannot fire) and raise nnU-Net's multi-line RuntimeError only when the path is
    used; an empty variable counts as set there and would be the current folder. ``why`` says what needs it."""
    value = os.environ.get(name, '')
    if not value.strip():
        raise CommandError(f"{name} is not set{': ' + why if why else ''}; export {name}=/path/to/{name}")
    if must_exist and not os.path.isdir(value):
        raise CommandError(f"{name}={value} is not a folder{': ' + why if why else ''}; export {name} as an "
                           f"existing folder")
    return value


def dataset_name(dataset) -> str:
    """nnU-Net's ``DatasetXXX_Name`` of a dataset name or id (a name is returned as it is); :class:`CommandError`
    (one line) for an id that no folder of ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` has, or
    that two differently named data sets share (nnU-Net needs one name per id)."""
    text = str(dataset).strip()
    if text.startswith('Dataset'):
        return text
    try:
        number = int(text)
    except ValueError:
        raise CommandError(f"unknown dataset {dataset!r}: neither a dataset id (a number) nor a name "
                           f"DatasetXXX_Name") from None
    prefix = f'Dataset{number:03d}_'
    found: dict = {}
    for variable in NNUNET_PATHS:
        root = os.environ.get(variable, '')
        if root.strip() and os.path.isdir(root):
            for entry in sorted(os.listdir(root)):
                if entry.startswith(prefix) and os.path.isdir(os.path.join(root, entry)):
                    found.setdefault(entry, []).append(variable)
    if len(found) > 1:
        where = '; '.join(f"{name} (in {', '.join(variables)})" for name, variables in sorted(found.items()))
        raise CommandError(f"dataset id {number} is ambiguous: {where}; nnU-Net needs one name per id - rename or "
                           f"remove all but one, or give the name instead of the id")
    if not found:
        where = ', '.join(f'{k}={os.environ.get(k) or "(not set)"}' for k in NNUNET_PATHS)
        raise CommandError(f'unknown dataset {dataset!r}: no such data set in {where}')
    return next(iter(found))


#: operating-system errors on a named path that the user can fix (the others stay bugs)
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.EROFS,
                errno.ENOSPC, errno.ENAMETOOLONG, getattr(errno, 'EDQUOT', errno.ENOSPC)}


def is_path_error(error: BaseException) -> bool:
    """Whether ``error`` is an operating-system error the user can fix: ``PermissionError``/``FileExistsError``,
    or an ``OSError`` on a named path with one of :data:`_USER_ERRNOS`."""
    if isinstance(error, (PermissionError, FileExistsError)):
        return True
    return isinstance(error, OSError) and error.filename is not None and error.errno in _USER_ERRNOS


def path_error_message(error: OSError) -> str:
    """``PATH: what went wrong`` (``PATH -> PATH2`` for a rename) for an ``OSError`` that names a path, else its
    own message."""
    if error.filename is None or not error.strerror:
        return str(error)
    where = os.fsdecode(error.filename) if isinstance(error.filename, (str, bytes, os.PathLike)) else error.filename
    if error.filename2 is not None:
        where = f'{where} -> {os.fsdecode(error.filename2)}'
    return f'{where}: {error.strerror[0].lower()}{error.strerror[1:]}'


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
                elif is_path_error(e):
                    report(name, path_error_message(e))
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
