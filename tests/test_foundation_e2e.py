"""End to end through nnU-Net's own console commands: discovery, training, continuation, prediction."""
import importlib
import inspect
import os
import pkgutil
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import torch

from conftest import DATASET_ID, assert_ranks_tumour, run
from nnunet_missingmod.env import EXT_TRAINER_DIR, ext_trainer_path


def our_trainer_names():
    """Every subclass of ``nnUNetTrainerMissingModality`` (itself included) defined in the package's training
    modules: imported and walked here, independently of what the ``nnUNet_extTrainer`` folder re-exports, so a
    trainer that folder misses fails the discovery test below."""
    import nnunet_missingmod.training as training
    for info in pkgutil.walk_packages(training.__path__, 'nnunet_missingmod.training.'):
        if '.nnUNet_extTrainer' not in info.name:
            importlib.import_module(info.name)
    from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality

    def walk(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from walk(sub)
    return sorted({c.__name__ for c in walk(nnUNetTrainerMissingModality)
                   if c.__module__.startswith('nnunet_missingmod.training.')})


def test_trainers_are_discovered_not_listed():
    """The re-export folder and perf's default list come from discovery; every trainer class in the source of the
    training modules is among them."""
    import re
    from pathlib import Path

    import nnunet_missingmod.training as training
    from nnunet_missingmod.evaluation.perf import default_trainers
    from nnunet_missingmod.training.nnUNet_extTrainer import discover_trainers, missingmod_trainers
    names = our_trainer_names()
    assert list(discover_trainers()) == names and len(names) > 30
    in_source = {m for f in Path(training.__path__[0]).glob('*.py')
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


def test_modality_dropout_trains_logs_subsets_and_predicts_zero_filled_cases(nnunet_dataset, trained_model, tmp_path):
    folder = trained_model('nnUNetTrainerModalityDropout')
    log = next((folder / 'fold_0').glob('training_log_*.txt')).read_text()
    assert 'modality subsets drawn:' in log
    checkpoint = torch.load(folder / 'fold_0' / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert checkpoint['trainer_name'] == 'nnUNetTrainerModalityDropout'

    # stock nnUNetv2_predict: one case with every modality, one with FLAIR (channel 3) zero-filled
    images = tmp_path / 'images'
    images.mkdir()
    full, case = sorted(p.name[:-12] for p in (nnunet_dataset.raw / 'imagesTr').glob('*_0000.nii.gz'))[:2]
    for name in (full, case):
        for c in range(4):
            shutil.copy(nnunet_dataset.raw / 'imagesTr' / f'{name}_{c:04d}.nii.gz', images)
    flair = nib.load(images / f'{case}_0003.nii.gz')
    nib.save(nib.Nifti1Image(np.zeros(flair.shape, np.float32), flair.affine, flair.header),
             images / f'{case}_0003.nii.gz')
    out = tmp_path / 'pred'
    run(['nnUNetv2_predict', '-i', str(images), '-o', str(out), '-d', str(DATASET_ID), '-c',
         nnunet_dataset.configuration, '-tr', 'nnUNetTrainerModalityDropout', '-f', '0', '-device', 'cpu',
         '--disable_tta', '--save_probabilities'], nnunet_dataset.env)
    seg = nib.load(out / f'{case}.nii.gz')
    assert seg.shape == flair.shape
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    assert_ranks_tumour(out / f'{full}.npz', nnunet_dataset.raw / 'labelsTr' / f'{full}.nii.gz')


def test_continue_training_with_dash_dash_c(nnunet_dataset):
    config = '3d_smoke_continue'

    def small_config(epochs):
        run([sys.executable, '-m', 'nnunet_missingmod.small_config', '-d', str(DATASET_ID), '-c', config,
             '--patch', '32', '32', '32', '--features', '4', '8', '16', '--epochs', str(epochs),
             '--iterations', '2', '--val-iterations', '1'], nnunet_dataset.env)

    train = ['nnUNetv2_train', str(DATASET_ID), config, '0', '-tr', 'nnUNetTrainerModalityDropout',
             '-device', 'cpu', '--npz']
    small_config(1)
    run(train, nnunet_dataset.env)
    small_config(2)
    result = run(train + ['--c'], nnunet_dataset.env)  # nnU-Net 2.8 spells it --c
    fold = nnunet_dataset.results / f'nnUNetTrainerModalityDropout__nnUNetPlans__{config}' / 'fold_0'
    checkpoint = torch.load(fold / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert checkpoint['current_epoch'] == 2
    assert 'Epoch 1' in result.stdout and 'Epoch 0\n' not in result.stdout
    assert f"resumed from {fold / 'checkpoint_final.pth'}, epoch 1" in result.stdout
