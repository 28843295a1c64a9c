"""The error of the BraTS conversion and its one-line report of many problems."""
from __future__ import annotations


class ConversionError(Exception):
    """Bad input or a target that cannot be written; the message names the case and the file."""


def join_errors(errors: list[str], limit: int = 25) -> str:
    """The problems on one line (a command reports an error on one line)."""
    if len(errors) == 1:
        return errors[0]
    shown = '; '.join(errors[:limit])
    more = f'; ... and {len(errors) - limit} more' if len(errors) > limit else ''
    return f'{len(errors)} problems in the source: {shown}{more}'
