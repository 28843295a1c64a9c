"""Trainer discovery: nnU-Net's own lookup finds every trainer through nnUNet_extTrainer, in a new shell."""
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

from nnunet_missingmod.env import EXT_TRAINER_DIR, ext_trainer_path


def our_trainer_names():
    """Every subclass of ``nnUNetTrainerMissingModality`` (itself included) defined in the package's training
    modules: imported and walked here, independently of what the ``nnUNet_extTrainer`` folder re-exports, so a
    trainer that folder misses fails the discovery test below."""
    for package in ('nnunet_missingmod.training', 'nnunet_missingmod.methods'):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):
            if '.nnUNet_extTrainer' not in info.name:
                importlib.import_module(info.name)
    from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality

    def walk(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from walk(sub)
    return sorted({c.__name__ for c in walk(nnUNetTrainerMissingModality)
                   if c.__module__.startswith(('nnunet_missingmod.training.', 'nnunet_missingmod.methods.'))})


def test_trainers_are_discovered_not_listed():
    """The re-export folder and perf's default list come from discovery; every trainer class in the source of the
    training modules is among them."""
    import re
    from pathlib import Path

    import nnunet_missingmod.training as training
    from nnunet_missingmod.profiling.perf import default_trainers
    from nnunet_missingmod.training.nnUNet_extTrainer import discover_trainers, missingmod_trainers
    names = our_trainer_names()
    assert list(discover_trainers()) == names and len(names) > 30
    package = Path(training.__path__[0]).parent
    in_source = {m for f in [*package.glob('training/*.py'), *package.glob('methods/*/*.py')]
                 for m in re.findall(r'^class (nnUNetTrainer\w*)\(', f.read_text(), re.M)}
    assert in_source <= set(names), sorted(in_source - set(names))
    exported = {n for n, c in inspect.getmembers(missingmod_trainers, inspect.isclass) if n.startswith('nnUNetTrainer')}
    assert exported == set(names)
    defaults = default_trainers()
    assert defaults[0] == 'nnUNetTrainer' and set(defaults[1:]) <= set(names)
    assert {'nnUNetTrainerModalityDropout', 'nnUNetTrainerSMSN', 'nnUNetTrainerHolderMI_budget',
            'nnUNetTrainerCIML_budget'} <= set(defaults) and 'nnUNetTrainerHolderMI_KL' not in defaults


def test_env_command_prints_an_export_line_and_keeps_other_paths():
    out = subprocess.run(['nnUNetv2_mm_env'], capture_output=True, text=True, check=True,
                         env={**os.environ, 'nnUNet_extTrainer': '/opt/other'}).stdout.strip()
    assert out == f'export nnUNet_extTrainer={EXT_TRAINER_DIR}{os.pathsep}/opt/other'
    assert ext_trainer_path(ext_trainer_path('')) == EXT_TRAINER_DIR  # idempotent
    # the folder nnU-Net searches holds only our (re-exporting) trainer modules
    assert all(f.endswith('.py') or f == '__pycache__' for f in os.listdir(EXT_TRAINER_DIR))


def test_every_trainer_is_found_by_nnunet_in_a_new_shell():
    names = our_trainer_names()
    assert 'nnUNetTrainerModalityDropout' in names
    # nnU-Net's own lookup, as nnUNetv2_train does it: recursive_find_python_class on each nnUNet_extTrainer path
    script = ('from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n'
              'from nnunetv2.utilities.find_class_by_name import recursive_find_python_class\n'
              'import os, sys\n'
              'paths = os.environ["nnUNet_extTrainer"].split(os.pathsep)\n'
              'for name in sys.argv[1:]:\n'
              '    found = [recursive_find_python_class(p, name, None, base_folder=p,\n'
              '                                         cleanup_imports_from_base_folder=True) for p in paths]\n'
              '    cls = next(c for c in found if c is not None)\n'
              '    assert cls.__name__ == name and cls.__module__.startswith("nnunet_missingmod."), cls\n'
              '    assert find(name) is cls or find(name).__qualname__ == name\n'
              'print("found", len(sys.argv) - 1)\n')
    env = {k: v for k, v in os.environ.items() if k != 'nnUNet_extTrainer'}
    result = subprocess.run(['bash', '-c', f'eval "$(nnUNetv2_mm_env)" && "{sys.executable}" -c \'{script}\' "$@"',
                             'bash', *names], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f'found {len(names)}' in result.stdout
