"""``nnUNetv2_mm_env``: print the shell line that lets nnU-Net's own commands find this package's trainers.

nnU-Net v2 searches ``$nnUNet_extTrainer`` (a path list) for trainer classes it does not ship. We point it at
:data:`EXT_TRAINER_DIR`, a folder holding only thin modules that re-export our trainers, never at all of
site-packages. Use it as ``eval "$(nnUNetv2_mm_env)"`` (e.g. in ``~/.bashrc``).
"""
from __future__ import annotations

import os
import shlex
import sys

from nnunet_missingmod.cli import ArgumentParser, command

EXT_TRAINER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'training', 'nnUNet_extTrainer')


def ext_trainer_path(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` value with our folder added (kept once, other entries preserved, ours first)."""
    entries = [p for p in (current or '').split(os.pathsep) if p and os.path.abspath(p) != EXT_TRAINER_DIR]
    return os.pathsep.join([EXT_TRAINER_DIR] + entries)


def enable_ext_trainers() -> None:
    """Make this process (and its subprocesses) find our trainers; used by our own console commands."""
    os.environ['nnUNet_extTrainer'] = ext_trainer_path(os.environ.get('nnUNet_extTrainer'))


@command('nnUNetv2_mm_env')
def main(argv=None) -> int:
    ArgumentParser(prog='nnUNetv2_mm_env', description=__doc__.split('\n\n')[0].split(': ', 1)[1]).parse_args(argv)
    print(f"export nnUNet_extTrainer={shlex.quote(ext_trainer_path(os.environ.get('nnUNet_extTrainer')))}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
