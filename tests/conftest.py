"""Shared fixtures: a small synthetic BraTS-like data set taken through nnU-Net's real console commands.

``nnunet_dataset`` generates, converts, plans and preprocesses once per test session (about a minute on two CPU
cores); ``trained_model(trainer)`` trains a trainer for a couple of iterations with ``nnUNetv2_train`` on the
``3d_smoke`` configuration and caches the result folder for the session.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

DATASET_ID = 990
DATASET_NAME = 'Dataset990_SynthTest'
SMOKE_CONFIG = '3d_smoke'
N_CASES = 10
#: voxels of the synthetic cases (3 mm): about the physical size of the default, a third of its voxels, so that
#: nnU-Net's sliding-window validation and the benchmarks need few windows on a CPU
SHAPE = (48, 56, 40)


def run(cmd: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a console command; on failure show its output in the assertion message."""
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({result.returncode})\n"
                                    f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def synthetic_raw_dataset(source: Path, dataset_id: int, name: str, n_cases: int, seed: int, env: dict) -> Path:
    """Generate ``n_cases`` synthetic BraTS cases (:data:`SHAPE`, 3 mm) into ``source`` and convert them to
    ``Dataset<ID>_<name>`` in nnU-Net raw layout with our console modules; returns that raw folder."""
    run([sys.executable, '-m', 'nnunet_missingmod.dataset_conversion.synthetic_brats', '-o', str(source),
         '-n', str(n_cases), '--seed', str(seed), '--shape', *map(str, SHAPE), '--spacing', '3'], env)
    run([sys.executable, '-m', 'nnunet_missingmod.dataset_conversion.brats', '-i', str(source),
         '-d', str(dataset_id), '-n', name], env)
    return Path(env['nnUNet_raw']) / f'Dataset{dataset_id:03d}_{name}'


@dataclass
class NnUNetDataset:
    root: Path
    env: dict
    dataset_id: int = DATASET_ID
    dataset_name: str = DATASET_NAME
    configuration: str = SMOKE_CONFIG

    @property
    def raw(self) -> Path:
        return Path(self.env['nnUNet_raw']) / self.dataset_name

    @property
    def preprocessed(self) -> Path:
        return Path(self.env['nnUNet_preprocessed']) / self.dataset_name

    @property
    def results(self) -> Path:
        return Path(self.env['nnUNet_results']) / self.dataset_name

    def result_folder(self, trainer: str, plans: str = 'nnUNetPlans') -> Path:
        return self.results / f'{trainer}__{plans}__{self.configuration}'


def nnunet_environment(root: Path) -> dict:
    """Environment for nnU-Net subprocesses: private data folders, CPU-friendly worker counts, our trainers."""
    from nnunet_missingmod.env import ext_trainer_path
    env = dict(os.environ)
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    env.update(nnUNet_extTrainer=ext_trainer_path(os.environ.get('nnUNet_extTrainer')),
               nnUNet_n_proc_DA='0', nnUNet_def_n_proc='2', nnUNet_compile='f', OMP_NUM_THREADS='1')
    return env


@pytest.fixture(scope='session')
def nnunet_dataset(tmp_path_factory) -> NnUNetDataset:
    root = tmp_path_factory.mktemp('nnunet')
    env = nnunet_environment(root)
    synthetic_raw_dataset(root / 'brats_source', DATASET_ID, 'SynthTest', N_CASES, 0, env)
    # planning calls torch.set_num_threads(nnUNet_n_proc_DA), which must be positive
    run(['nnUNetv2_plan_and_preprocess', '-d', str(DATASET_ID), '-c', '3d_fullres', '-np', '2'],
        {**env, 'nnUNet_n_proc_DA': '1'})
    run([sys.executable, '-m', 'nnunet_missingmod.small_config', '-d', str(DATASET_ID), '-c', SMOKE_CONFIG,
         '--patch', '32', '32', '32', '--features', '4', '8', '16', '--batch-size', '2',
         '--epochs', '1', '--iterations', '2', '--val-iterations', '1'], env)
    return NnUNetDataset(root=root, env=env)


@pytest.fixture(scope='session')
def trained_model(nnunet_dataset):
    """``trained_model(trainer) -> result folder`` of a 2-iteration ``nnUNetv2_train`` run on fold 0 (cached)."""
    done: dict[str, Path] = {}

    def train(trainer: str) -> Path:
        if trainer not in done:
            run(['nnUNetv2_train', str(DATASET_ID), SMOKE_CONFIG, '0', '-tr', trainer, '-device', 'cpu'],
                nnunet_dataset.env)
            folder = nnunet_dataset.result_folder(trainer)
            assert (folder / 'fold_0' / 'checkpoint_final.pth').is_file()
            done[trainer] = folder
        return done[trainer]

    return train
