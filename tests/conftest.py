"""Shared fixtures: a small synthetic BraTS-like data set taken through nnU-Net's real console commands.

``nnunet_dataset`` generates, converts, plans and preprocesses once per test session (about a minute on two CPU
cores); ``trained_model(trainer)`` trains a trainer for :data:`SMOKE_ITERATIONS` iterations with ``nnUNetv2_train``
on the ``3d_smoke`` configuration and caches the result folder for the session.
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
#: training iterations of the ``3d_smoke`` configuration. After 40, nnU-Net's early-fusion network trained with
#: modality dropout ranks tumour voxels above the rest (:func:`assert_ranks_tumour`), but whether its thresholded
#: prediction contains any tumour is a coin toss: in three runs its whole-tumour probabilities stayed below 0.5
#: everywhere once (Dice 0, ROC AUC 0.91-0.94) and gave Dice 0.54-0.81 twice; its ROC AUC was 0.92-0.999 in six
#: more runs and 0.77 in one CI run, hence the threshold 0.7 (chance: 0.5). On these widths (4-16 channels)
#: nnU-Net's training can fall into an all-background phase after its first 20 iterations: in three runs of 6 x 20
#: iterations the whole-tumour pseudo-Dice went to 0 in two, for 40 iterations in one and to the end in the other.
#: The multi-encoder networks' end-to-end tests check the pipeline only; learning is checked at 1000 iterations in
#: ``test_graceful_degradation.py``
SMOKE_ITERATIONS = 40
#: voxels of the synthetic cases (3 mm): about the physical size of the default, a third of its voxels, so that
#: nnU-Net's sliding-window validation and the benchmarks need few windows on a CPU
SHAPE = (48, 56, 40)


#: fixtures that plan, preprocess or train with nnU-Net's commands: a test that uses one (directly or through another
#: fixture) is marked ``slow``, as are every test under tests/e2e/ and the DDP tests (process spawns); ``pytest -m "not slow"`` runs the rest
SLOW_FIXTURES = {'nnunet_dataset', 'trained_model'}


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: plans/trains with nnU-Net, spawns DDP processes or runs a training study '
                                       '(deselect with -m "not slow")')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'e2e' in item.path.parts or SLOW_FIXTURES & set(getattr(item, 'fixturenames', ())) or 'ddp' in item.name.lower() or \
                item.get_closest_marker('slow'):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test's gloo process group."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


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


#: dataset.json of a converted BraTS data set (our converter's channels, labels and regions)
BRATS_DATASET_JSON = {
    'channel_names': {'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'},
    'labels': {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': [3]},
    'regions_class_order': [1, 2, 3], 'numTraining': 4, 'file_ending': '.nii.gz'}


def small_plans(features=(4, 8, 16), patch=(16, 16, 16), batch_size: int = 2) -> dict:
    """nnU-Net plans (one ``3d_fullres`` configuration, PlainConvUNet) small enough for a CPU unit test."""
    n = len(features)
    return {
        'dataset_name': 'Dataset999_UnitTest', 'plans_name': 'nnUNetPlans',
        'original_median_spacing_after_transp': [1.0, 1.0, 1.0], 'original_median_shape_after_transp': list(patch),
        'image_reader_writer': 'SimpleITKIO', 'transpose_forward': [0, 1, 2], 'transpose_backward': [0, 1, 2],
        'experiment_planner_used': 'ExperimentPlanner', 'label_manager': 'LabelManager',
        'foreground_intensity_properties_per_channel': {},
        'configurations': {'3d_fullres': {
            'data_identifier': 'nnUNetPlans_3d_fullres', 'preprocessor_name': 'DefaultPreprocessor',
            'batch_size': batch_size, 'patch_size': list(patch), 'median_image_size_in_voxels': list(patch),
            'spacing': [1.0, 1.0, 1.0], 'normalization_schemes': ['ZScoreNormalization'] * 4,
            'use_mask_for_norm': [True] * 4, 'resampling_fn_data': 'resample_data_or_seg_to_shape',
            'resampling_fn_seg': 'resample_data_or_seg_to_shape', 'resampling_fn_data_kwargs': {},
            'resampling_fn_seg_kwargs': {}, 'resampling_fn_probabilities': 'resample_data_or_seg_to_shape',
            'resampling_fn_probabilities_kwargs': {}, 'batch_dice': False,
            'architecture': {
                'network_class_name': 'dynamic_network_architectures.architectures.unet.PlainConvUNet',
                'arch_kwargs': {
                    'n_stages': n, 'features_per_stage': list(features), 'conv_op': 'torch.nn.modules.conv.Conv3d',
                    'kernel_sizes': [[3, 3, 3]] * n, 'strides': [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                    'n_conv_per_stage': [2] * n, 'n_conv_per_stage_decoder': [2] * (n - 1), 'conv_bias': True,
                    'norm_op': 'torch.nn.modules.instancenorm.InstanceNorm3d',
                    'norm_op_kwargs': {'eps': 1e-5, 'affine': True}, 'dropout_op': None,
                    'dropout_op_kwargs': None, 'nonlin': 'torch.nn.LeakyReLU', 'nonlin_kwargs': {'inplace': True}},
                '_kw_requires_import': ['conv_op', 'norm_op', 'dropout_op', 'nonlin']}}}}


def make_trainer(cls, root: Path, plans: dict | None = None, dataset_json: dict | None = None, seed: int = 0):
    """An initialized trainer of class ``cls`` on the CPU, built from :func:`small_plans` (no data on disk: the
    nnU-Net folders point into ``root``). ``seed`` seeds NumPy and torch first, so network weights and the
    trainer's generator are repeatable."""
    import numpy as np
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):   # nnU-Net reads them lazily
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(root / name)
    # initialize() infers the dataset class from the file endings of the preprocessed folder; no case is loaded
    data_folder = root / 'nnUNet_preprocessed' / (plans or small_plans())['dataset_name'] / 'nnUNetPlans_3d_fullres'
    data_folder.mkdir(parents=True, exist_ok=True)
    (data_folder / 'unit.b2nd').touch()
    np.random.seed(seed)
    torch.manual_seed(seed)
    plans = dict(plans or small_plans(), continue_training=False)   # nnU-Net 2.8's run_training adds this key
    trainer = cls(plans, '3d_fullres', 0, dataset_json or BRATS_DATASET_JSON, device=torch.device('cpu'))
    trainer.initialize()
    return trainer


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
         '--epochs', '1', '--iterations', str(SMOKE_ITERATIONS), '--val-iterations', '1'], env)
    return NnUNetDataset(root=root, env=env)


@pytest.fixture(scope='session')
def trained_model(nnunet_dataset):
    """``trained_model(trainer) -> result folder`` of a short ``nnUNetv2_train`` run on fold 0 (cached)."""
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


def assert_ranks_tumour(probabilities: Path, reference: Path, min_auc: float = 0.7) -> None:
    """The whole-tumour probability that ``nnUNetv2_predict --save_probabilities`` wrote (``.npz``, channel 0: the
    first region, WT) separates the reference's tumour voxels from the rest: ROC AUC above ``min_auc`` (0.5 is
    chance), counted by scikit-learn, not by the package's metrics. Unlike a Dice threshold it does not depend on
    whether a briefly trained network has crossed 0.5 yet; the threshold is set by the spread of 40-iteration
    trainings (:data:`SMOKE_ITERATIONS`)."""
    import numpy as np
    import SimpleITK as sitk
    from sklearn.metrics import roc_auc_score
    whole_tumour = np.load(probabilities)['probabilities'][0]           # nnU-Net's (z, y, x) order, like SimpleITK
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(reference))) > 0
    assert whole_tumour.shape == tumour.shape, f'{probabilities.name}: {whole_tumour.shape} vs {tumour.shape}'
    auc = roc_auc_score(tumour.ravel(), whole_tumour.ravel())
    assert auc > min_auc, f'{probabilities.name}: whole-tumour ROC AUC {auc:.3f} <= {min_auc}'


def copy_matching_weights(source: torch.nn.Module, destination: torch.nn.Module) -> set:
    """Load the parameters of ``source`` into ``destination`` where name and shape agree; returns their names.
    Buffers are not copied: they belong to the variant's definition (e.g. SMSN's fixed fusion ``order``)."""
    own = dict(destination.named_parameters())
    matching = {k: v for k, v in source.named_parameters() if k in own and own[k].shape == v.shape}
    destination.load_state_dict(matching, strict=False)
    return set(matching)


def loss_gradients(trainer, data, target, availability, seed: int = 0) -> dict:
    """``{parameter name: gradient}`` of the trainer's total training loss on one batch (train mode; torch and the
    trainer's generator seeded with ``seed`` first, so reparameterisation noise and random orders repeat)."""
    import numpy as np
    torch.manual_seed(seed)
    trainer.rng = np.random.default_rng(seed)
    trainer.share_rng(trainer.network)
    trainer.network.train()
    loss, _ = trainer.forward_loss(data, target, availability)
    named = [(n, p) for n, p in trainer.network.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g for (n, _), g in zip(named, grads) if g is not None}


def relative_gradient_difference(variant: dict, reference: dict, names) -> float:
    """``||g_variant - g_reference|| / ||g_reference||`` over the parameters ``names`` (missing gradients = 0)."""
    num = den = 0.0
    for n in names:
        ref = reference.get(n)
        var = variant.get(n)
        ref = torch.zeros(()) if ref is None else ref
        var = torch.zeros(()) if var is None else var
        num += float((var - ref).double().square().sum())
        den += float(ref.double().square().sum())
    return (num / max(den, 1e-30)) ** 0.5
