"""Folder that ``nnUNet_extTrainer`` points at: only modules that re-export our trainers.

The trainers are found, not listed: :func:`discover_trainers` imports every module under
``nnunet_missingmod.training`` and ``nnunet_missingmod.methods`` and walks the subclasses of ``nnUNetTrainerMissingModality`` recursively, so a new
trainer in any training module is re-exported (and found by ``nnUNetv2_train``) without touching this folder.
"""
from __future__ import annotations

import importlib
import pkgutil

#: the packages whose modules define trainers: the base trainers and one folder per method
_PACKAGES = ('nnunet_missingmod.training', 'nnunet_missingmod.methods')


def discover_trainers(module: str | None = None) -> dict:
    """``{name: class}`` of ``nnUNetTrainerMissingModality`` and all its subclasses defined in the modules of
    ``nnunet_missingmod.training`` and ``nnunet_missingmod.methods`` (this re-export folder excluded), sorted by
    name; ``module`` restricts to the classes of one module (e.g. ``'nnunet_missingmod.methods.ciml.trainers'``).

    Subclasses defined elsewhere (tests, user code) are not ours and are left out. Two trainers with one name would
    make nnU-Net's lookup by name ambiguous: that is an error.
    """
    for package in _PACKAGES:
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):
            if info.name == __name__ or info.name.startswith(__name__ + '.'):
                continue
            importlib.import_module(info.name)
    from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality

    found, stack, seen = {}, [nnUNetTrainerMissingModality], set()
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        if not cls.__module__.startswith(tuple(p + '.' for p in _PACKAGES)) or cls.__module__.startswith(__name__):
            continue
        if module is not None and cls.__module__ != module:
            continue
        if cls.__name__ in found and found[cls.__name__] is not cls:
            raise RuntimeError(f'two trainers are named {cls.__name__}: {found[cls.__name__].__module__} and '
                               f'{cls.__module__}; nnU-Net finds trainers by name')
        found[cls.__name__] = cls
    return dict(sorted(found.items()))
